"""The front door (OpenAI and Anthropic endpoints as Channels consumers) and the in-worker engines.

The web process imports only the front-door modules; torch stays in the inference worker.
"""
