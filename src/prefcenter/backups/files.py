"""Owns the file handling backups and restores share: private temp files beside their target,
fsync of files and directories, and whether a SQLite database is open in another process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

# The byte of the `-shm` file every SQLite connection in WAL mode holds a shared lock on while
# it is open (unix VFS: UNIX_SHM_DMS, the "dead man switch"; stable since WAL exists).
_SHM_DMS_BYTE = 128


def private_temp_path(target: Path, purpose: str) -> Path:
    """A new, empty file of mode 0600 beside `target` (same directory: the final rename is
    atomic), named so that a crash leaves something recognisable, not a look-alike."""
    path = target.with_name(f".{target.name}.{purpose}-{os.getpid()}-{secrets.token_hex(4)}")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """Make a rename or link in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sidecars(database: Path) -> tuple[Path, Path, Path]:
    """SQLite's `-wal`, `-shm` and `-journal` files of a database file."""
    name = database.name
    return (
        database.with_name(name + "-wal"),
        database.with_name(name + "-shm"),
        database.with_name(name + "-journal"),
    )


def in_use_by_another_process(database: Path) -> bool:
    """Whether some process has the SQLite database open in WAL mode (the service always
    does): it holds a shared lock on the `-shm` file's DMS byte as long as it is connected.

    POSIX locks belong to the process, and closing any descriptor of a file drops all of the
    process's locks on it: call this only from a process that has no connection to `database`
    (the CLI opens none before it). A lock held by this process itself is not seen.
    """
    shm = database.with_name(database.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS_BYTE)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_failure(path: Path) -> Iterator[Path]:
    """`path`, unlinked again (with SQLite's side files) if the block raises."""
    try:
        yield path
    except BaseException:
        for leftover in (path, *sidecars(path)):
            leftover.unlink(missing_ok=True)
        raise
