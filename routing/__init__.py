"""The routing decision: classify, consult the quality profile, order candidates, verify, fall back."""
