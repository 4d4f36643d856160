"""Backups of a SQLite database taken while the service serves, and their restore, with the
audit trail's proof intact (`prefcenter db backup|restore`)."""
