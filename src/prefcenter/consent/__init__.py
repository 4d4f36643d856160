"""Consent: the current subscription state per contact and topic, and the rules that change it."""
