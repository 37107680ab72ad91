"""Runners, one module per eval kind, looked up by kind in evals.runs.RUNNERS and imported lazily."""
