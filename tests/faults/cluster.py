"""A PostgreSQL cluster of the test's own, in a temporary directory on a free port, that a
test may stop, crash and start again: never the shared server the rest of the suite uses."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.live_server import HOST, free_port

DATABASE = "prefcenter"
# initdb refuses to run as root: the cluster then belongs to this user.
OWNER = "postgres"


class NoPostgresBinaries(Exception):
    """initdb / pg_ctl are not installed here."""


def postgres_bin_dir() -> Path:
    """The newest installed server's binaries (Debian's layout), or those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise NoPostgresBinaries("no initdb in /usr/lib/postgresql/*/bin or on PATH")
    return Path(on_path).parent


def _major_version(path: str) -> int:
    version = Path(path).parents[1].name
    return int(version) if version.isdigit() else 0


@dataclass(slots=True)
class PrivatePostgres:
    bin_dir: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OWNER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), *args)

    def start(self) -> None:
        # fsync off: a crash of the server process (what the tests do) loses nothing with it;
        # only a crash of the machine would.
        options = f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, *, crash: bool = False) -> None:
        """A clean stop, or with `crash` an immediate one: every server process gone at once,
        what was committed recovered from the WAL at the next start."""
        self._pg_ctl("-m", "immediate" if crash else "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def create_database(self) -> None:
        admin = create_engine(
            f"postgresql+psycopg://postgres@{HOST}:{self.port}/postgres",
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
        )
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        finally:
            admin.dispose()

    def remove(self) -> None:
        if self.running:
            self.stop(crash=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _private_root(prefix: str) -> Path:
    # Not under pytest's temporary directory: its parent is private to root, and the server
    # runs as OWNER.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    return root


def init_cluster() -> PrivatePostgres:
    bin_dir = postgres_bin_dir()
    root = _private_root("prefcenter-faults-pg-")
    cluster = PrivatePostgres(bin_dir=bin_dir, root=root, port=free_port())
    try:
        cluster._run(
            "initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        cluster.start()
        cluster.create_database()
    except BaseException:
        cluster.remove()
        raise
    return cluster


def init_replica(primary: PrivatePostgres) -> PrivatePostgres:
    """A streaming replica (hot standby) of `primary`, on a port of its own: a base backup
    taken with `pg_basebackup -R`, which writes the standby's connection to the primary
    (initdb's `trust` covers replication connections from this host too)."""
    root = _private_root("prefcenter-faults-replica-")
    replica = PrivatePostgres(bin_dir=primary.bin_dir, root=root, port=free_port())
    try:
        replica._run(
            "pg_basebackup",
            *("-D", str(root / "data"), "-h", HOST, "-p", str(primary.port), "-U", "postgres"),
            *("-R", "-X", "stream", "-c", "fast", "--no-sync"),
        )
        replica.start()
    except BaseException:
        replica.remove()
        raise
    return replica
