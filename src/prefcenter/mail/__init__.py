"""Outgoing mail: its configuration, the messages the service writes, and the transports."""
