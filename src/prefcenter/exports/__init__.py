"""Exports: the suppression list and a topic's audience, streamed as CSV for mailers."""
