"""A real `prefcenter serve` process on loopback, for the tests that need several worker
processes, a `kill -9` or a restart: what the in-process TestClient cannot show."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.support.harness import (
    TEST_AUDIT_KEY,
    TEST_SIGNING_KEYS,
    issue_key,
    make_settings,
    reset_postgres,
)

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 60.0
# uvicorn logs this once per worker process when its application is up.
_WORKER_READY = "Application startup complete."


class ServerDidNotStart(Exception):
    """The server exited or never answered `/readyz` in time; the message carries its log."""


@dataclass(frozen=True, slots=True)
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """`kill -9` the whole process group: the uvicorn supervisor and every worker at once,
        so that no worker lives on to finish (or commit) anything."""
        _kill_group(self.process)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        # start_new_session=True made the server the leader of its own group: pgid == pid.
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)


def _server_env(database_url: str, base_url: str, extra_env: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env["PREFCENTER_DATABASE_URL"] = database_url
    env["PREFCENTER_SIGNING_KEYS"] = TEST_SIGNING_KEYS
    env["PREFCENTER_AUDIT_KEY"] = TEST_AUDIT_KEY
    # Links it issues point back at this very server, so a browser can follow them.
    env["PREFCENTER_BASE_URL"] = base_url
    env["PREFCENTER_LOG_LEVEL"] = "info"
    # No mail of the service's own unless a test asks (SQLite would default to a Maildir).
    env["PREFCENTER_MAIL_URL"] = "off"
    env.update(extra_env)
    return env


def _wait_until_ready(server: LiveServer, *, workers: int, timeout_s: float) -> None:
    """Until `/readyz` answers 200 and every worker has reported that it is up."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                raise ServerDidNotStart(
                    f"prefcenter serve exited with {code} before it was ready; its log:\n"
                    + server.log()
                )
            try:
                answer = client.get("/readyz")
            except httpx.TransportError as exc:
                last_error = repr(exc)
            else:
                last_error = f"/readyz answered {answer.status_code}: {answer.text}"
                if answer.status_code == 200 and server.log().count(_WORKER_READY) >= workers:
                    return
            time.sleep(0.05)
    raise ServerDidNotStart(
        f"prefcenter serve was not ready within {timeout_s:.0f} s ({last_error}); its log:\n"
        + server.log()
    )


@contextmanager
def live_server(
    database_url: str,
    *,
    log_dir: Path,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
    extra_env: Mapping[str, str] | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    wait_until_ready: bool = True,
    command_prefix: tuple[str, ...] = ("-m", "prefcenter"),
) -> Iterator[LiveServer]:
    """Run `prefcenter serve --workers N` on a free loopback port until the block ends.

    The server gets its own session (process group) so that `LiveServer.kill` reaches the
    worker processes too. On exit it is stopped with SIGTERM, then the group is SIGKILLed if
    it has not gone within STOP_TIMEOUT_S. Its stdout and stderr go to a file in `log_dir`
    (a pipe nobody reads would block the server once full). `extra_env` adds `PREFCENTER_*`
    settings (for example `PREFCENTER_ORGANIZATION_NAME`). Without `wait_until_ready` the
    block starts at once (a server that cannot be ready yet); `command_prefix` runs another
    entry point than `python -m prefcenter` (one that injects a fault first).
    """
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"prefcenter-serve-{port}.log"
    command = [
        sys.executable,
        *command_prefix,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_server_env(database_url, base_url, extra_env or {}),
            cwd=log_dir,  # no stray `.env` from the working tree
            start_new_session=True,
        )
    server = LiveServer(base_url=base_url, process=process, log_path=log_path)
    try:
        if wait_until_ready:
            _wait_until_ready(server, workers=workers, timeout_s=startup_timeout_s)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(process)


def fresh_database_url(request: pytest.FixtureRequest, engine: str, tmp_path: Path) -> str:
    """An empty, migrated database of `engine` for one test, from conftest's fixtures."""
    if engine == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "live.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: URL = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    return url.render_as_string(hide_password=False)


def issue_live_key(database_url: str, *scopes: Scope, name: str = "live") -> dict[str, str]:
    """Authorization headers for a new key, written straight into the server's database."""
    database = Database(make_settings(database_url))
    try:
        return issue_key(database, *scopes, name=name)
    finally:
        database.dispose()


async def _post_all(
    base_url: str, headers: dict[str, str], path: str, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))


def post_all_at_once(
    server: LiveServer, headers: dict[str, str], path: str, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """POST every body at the same moment, each on its own connection; answers in order."""
    return asyncio.run(_post_all(server.base_url, headers, path, bodies))
