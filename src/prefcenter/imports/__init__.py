"""Imports: consent files from other tools, applied in batches, never undoing an opt-out."""
