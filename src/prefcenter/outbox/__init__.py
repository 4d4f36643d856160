"""The outbox: every message to the world, queued in the transaction of its cause."""
