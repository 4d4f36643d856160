"""Why a backup or a restore was refused; the message says what to do instead."""

from __future__ import annotations


class BackupRefused(Exception):
    """Nothing was written, or what was half-written was removed; the target is as it was."""


class NotForThisDatabase(BackupRefused):
    """The configured database is not a SQLite file: PostgreSQL has its own tools."""
