"""Delivering the outbox: the worker that renders, sends and records each message."""
