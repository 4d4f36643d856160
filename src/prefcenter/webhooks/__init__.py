"""Outgoing webhooks (Standard Webhooks v1): endpoints, the events they subscribe to, and the
deliveries queued for them in the outbox."""
