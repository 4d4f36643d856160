"""Contacts: the people behind email addresses, known by an opaque random id."""
