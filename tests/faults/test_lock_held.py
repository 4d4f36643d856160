"""Another session holds the audit head's row lock for a long time: writes give up at the lock
timeout with a 503 and Retry-After, the pool does not fill up, reads keep answering, and writes
work again once the lock goes."""

from __future__ import annotations

import asyncio
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
    assert_unavailable_answers_are_problems,
    consent_write,
    opt_out_bodies,
    run_jobs,
    stored_opt_outs,
)
from tests.faults.pg_sessions import holding_audit_head, service_sessions
from tests.support.live_server import issue_live_key, live_server

pytestmark = [pytest.mark.slow, pytest.mark.faults]

POOL_SIZE = 2
WRITES = 8
READS = 20


async def _reads(base_url: str, headers: dict[str, str]) -> list[tuple[int, float]]:
    answers: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        for _ in range(READS):
            started = time.monotonic()
            response = await client.get(f"/v1/topics/{TOPIC}")
            answers.append((response.status_code, time.monotonic() - started))
            await asyncio.sleep(0.05)
    return answers


async def _writes_and_reads(
    base_url: str, headers: dict[str, str], jobs: list[Job], record: Record
) -> list[tuple[int, float]]:
    writes = run_jobs(base_url, headers, jobs, concurrency=WRITES, record=record, retry=False)
    _, reads = await asyncio.gather(writes, _reads(base_url, headers))
    return reads


def test_writes_time_out_at_the_lock_timeout_while_reads_go_on(
    private_postgres: PrivatePostgres, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    url = private_postgres.url
    headers = issue_live_key(url, Scope.ADMIN)
    env = {"PREFCENTER_DB_LOCK_TIMEOUT_S": "1", "PREFCENTER_DB_POOL_SIZE": str(POOL_SIZE)}
    bodies = opt_out_bodies(uuid.uuid4().hex[:8], WRITES + 1)
    with (
        live_server(url, log_dir=tmp_path, extra_env=env) as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
    ):
        topic = {"name": "News", "kind": "marketing", "consent": "opt_out"}
        assert client.put(f"/v1/topics/{TOPIC}", json=topic).status_code == 201
        jobs = [Job("api", body["email"], consent_write(body)) for body in bodies[:WRITES]]
        record = Record()
        with holding_audit_head(url):
            reads = asyncio.run(_writes_and_reads(server.base_url, headers, jobs, record))
            sessions, _ = service_sessions(url)
        after = client.post("/v1/consents", json=bodies[WRITES])

    assert {a.status for a in record.answers} == {503}, record.answers
    assert_unavailable_answers_are_problems(record)
    assert [status for status, _ in reads] == [200] * READS
    # The pool's own limit (pool size, and as much again in overflow), not one per request.
    assert sessions <= 2 * POOL_SIZE + 1
    assert after.status_code == 200, after.text
    assert stored_opt_outs(url, {b["email"] for b in bodies}) == {bodies[WRITES]["email"]}
    slowest = max(seconds for _, seconds in reads)
    measured(f"lock held: writes 503 after the 1 s lock timeout; slowest read {slowest:.2f} s")
