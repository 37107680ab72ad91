"""The hierarchical reasoning model (HRM) as a causal language model, and what serves it.

Imported only by the inference worker: torch never enters the web process.
"""
