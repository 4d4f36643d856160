"""API keys: who may call the JSON API, with which scopes."""
