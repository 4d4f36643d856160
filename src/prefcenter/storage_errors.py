"""Owns the storage failures a request can meet whatever it does: a dead pooled connection and a
full disk, each a 503 problem that says nothing was changed."""

from __future__ import annotations

from prefcenter.problems import ServiceUnavailable


class ConnectionLost(ServiceUnavailable):
    """The pooled connection was dead (e.g. the server restarted): nothing was changed."""


class StorageFull(ServiceUnavailable):
    """The database's disk is full: nothing was changed, reads still work, writes will again
    once there is space."""

    slug = "storage-full"
    title = "Storage full"


# PostgreSQL's disk_full; SQLite's SQLITE_FULL.
_PG_DISK_FULL = "53100"
_SQLITE_FULL = 13


def is_disk_full(error: BaseException | None) -> bool:
    return (
        getattr(error, "sqlstate", None) == _PG_DISK_FULL
        or getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL
    )
