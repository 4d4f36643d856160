"""Signals under load. SIGTERM: `/readyz` turns 503 while the server drains, the requests in
flight finish, nothing acknowledged is lost, and the server exits 0 (with `--workers 2`: the
supervisor). `kill -9` of one of two workers: the other keeps serving, the supervisor starts a
replacement, nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from prefcenter.apikeys.schemas import Scope
from tests.faults.cluster import PrivatePostgres
from tests.faults.load import (
    TOPIC,
    Job,
    Record,
    audit_seqs_are_gap_free,
    consent_write,
    opt_out_bodies,
    run_jobs,
    stored_opt_outs,
)
from tests.faults.pg_sessions import holding_audit_head, service_sessions
from tests.support.live_server import LiveServer, issue_live_key, live_server

pytestmark = [pytest.mark.slow, pytest.mark.faults]

WORKERS = 2
IN_FLIGHT = 8
DRAIN_S = 3.0
BOUND_S = 30.0
_WORKER_PID = re.compile(r"Started server process \[(\d+)\]")
_WORKER_UP = "Application startup complete."
_EXITED = re.compile(r"server process \[(\d+)\] exited with status (-?\d+)")


def make_topic(server: LiveServer, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        topic = {"name": "News", "kind": "marketing", "consent": "opt_out"}
        assert client.put(f"/v1/topics/{TOPIC}", json=topic).status_code == 201


def wait_for(condition: Callable[[], bool], what: str, *, timeout_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.02)


def _readyz_turns_503(base_url: str, until: float) -> bool:
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < until:
            try:
                if client.get("/readyz").status_code == 503:
                    return True
            except httpx.TransportError:
                return False  # no longer accepting: the drain is over
            time.sleep(0.05)
    return False


async def _sigterm_while_in_flight(
    server: LiveServer, headers: dict[str, str], url: str, jobs: list[Job], record: Record
) -> tuple[float, bool]:
    """With the audit head locked, send the writes; once IN_FLIGHT of them wait for the lock
    inside the server, SIGTERM it, see /readyz turn 503, then let the lock go."""
    with holding_audit_head(url):
        storm = asyncio.create_task(
            run_jobs(
                server.base_url,
                headers,
                jobs,
                concurrency=IN_FLIGHT * 2,
                record=record,
                retry=False,
            )
        )
        await asyncio.to_thread(
            wait_for, lambda: service_sessions(url)[1] >= IN_FLIGHT, "writes waiting"
        )
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        drained = await asyncio.to_thread(_readyz_turns_503, server.base_url, sigterm_at + DRAIN_S)
    await storm
    return sigterm_at, drained


def test_sigterm_under_load_drains_finishes_in_flight_and_exits_0(
    private_postgres: PrivatePostgres, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    url = private_postgres.url
    headers = issue_live_key(url, Scope.ADMIN)
    bodies = opt_out_bodies(uuid.uuid4().hex[:8], 80)
    jobs = [Job("api", body["email"], consent_write(body)) for body in bodies]
    env = {
        "PREFCENTER_DB_LOCK_TIMEOUT_S": "60",
        "PREFCENTER_SHUTDOWN_DRAIN_S": str(DRAIN_S),
        "PREFCENTER_SHUTDOWN_TIMEOUT_S": "30",
    }
    record = Record()
    with live_server(url, log_dir=tmp_path, workers=WORKERS, extra_env=env) as server:
        make_topic(server, headers)
        sigterm_at, drained = asyncio.run(
            _sigterm_while_in_flight(server, headers, url, jobs, record)
        )
        code = server.process.wait(timeout=BOUND_S)
        stopped_s = time.monotonic() - sigterm_at
        log = server.log()

    assert code == 0, log
    # The server processes too, not only their supervisor.
    assert dict(_EXITED.findall(log)) == dict.fromkeys(set(_WORKER_PID.findall(log)), "0"), log
    assert drained, "/readyz never answered 503 while draining"
    in_flight = [a for a in record.answers if a.started < sigterm_at]
    assert len(in_flight) >= IN_FLIGHT
    assert all(a.status == 200 for a in in_flight), [a for a in in_flight if a.status != 200]
    # Later ones were either served (during the drain) or never accepted: no error answers.
    assert {a.status for a in record.answers} <= {200, None}
    acknowledged = record.acknowledged("api")
    assert stored_opt_outs(url, acknowledged) == acknowledged
    audit_seqs_are_gap_free(url)
    assert 'HTTP/1.1" 500' not in log
    measured(
        f"SIGTERM under load ({WORKERS} workers, drain {DRAIN_S:.0f} s): exit 0 after "
        f"{stopped_s:.2f} s, {len(in_flight)} in-flight writes all answered 200"
    )


async def _kill_a_worker_under_load(
    server: LiveServer, headers: dict[str, str], jobs: list[Job], record: Record
) -> tuple[int, float]:
    storm = asyncio.create_task(
        run_jobs(server.base_url, headers, jobs, concurrency=12, record=record)
    )
    while sum(1 for a in record.answers if a.status == 200) < 30:
        assert not storm.done(), "the storm ended before the kill"
        await asyncio.sleep(0.01)
    victim = int(_WORKER_PID.findall(server.log())[0])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    await storm
    return victim, killed_at


def test_kill_9_of_one_worker_under_load_loses_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    url = private_postgres.url
    headers = issue_live_key(url, Scope.ADMIN)
    bodies = opt_out_bodies(uuid.uuid4().hex[:8], 400)
    jobs = [Job("api", body["email"], consent_write(body)) for body in bodies]
    record = Record()
    with live_server(url, log_dir=tmp_path, workers=WORKERS) as server:
        make_topic(server, headers)
        up_before = server.log().count(_WORKER_UP)
        victim, killed_at = asyncio.run(_kill_a_worker_under_load(server, headers, jobs, record))
        wait_for(lambda: server.log().count(_WORKER_UP) > up_before, "replacement worker")
        replaced_s = time.monotonic() - killed_at
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.get("/readyz").status_code == 200
        log = server.log()

    assert f"Child process [{victim}] died" in log, log
    served_meanwhile = [a for a in record.answers if a.started > killed_at and a.status == 200]
    assert served_meanwhile, "nothing was served after the kill"
    # Cut off by the kill (no answer, retried) or served: never an error answer.
    assert {a.status for a in record.answers} <= {200, None}
    acknowledged = record.acknowledged("api")
    assert acknowledged == {b["email"] for b in bodies}
    assert stored_opt_outs(url, acknowledged) == acknowledged
    audit_seqs_are_gap_free(url)
    cut_off = sum(1 for a in record.answers if a.status is None)
    measured(
        f"kill -9 of 1 of {WORKERS} workers: {len(served_meanwhile)} writes served meanwhile, "
        f"{cut_off} cut off (retried), replacement up after {replaced_s:.2f} s"
    )
