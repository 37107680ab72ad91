"""Channels consumers of the front door (the hot path, ahead of Django's middleware)."""
