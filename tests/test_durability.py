"""An opt-out answered is an opt-out kept: `kill -9` a real server while opt-outs are in
flight, restart it on the same database, and find every acknowledged one with its event.

The kill lands right after the KILL_AFTER-th 200 arrives, with other requests still being
handled, so it also catches a server that answers before it commits (a commit in a background
task, or after the response is sent) and a half-written change left behind by the crash.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from prefcenter.apikeys.schemas import Scope
from tests.support.live_server import (
    REQUEST_TIMEOUT_S,
    LiveServer,
    fresh_database_url,
    issue_live_key,
    live_server,
)

pytestmark = pytest.mark.slow

ENGINES = ("sqlite", "postgresql")
OPT_OUTS = 100
IN_FLIGHT = 16
KILL_AFTER = 60
WORKERS = 2


@dataclass(frozen=True, slots=True)
class Ack:
    email: str
    topic: str | None
    contact_id: str
    event_id: str


def opt_out_body(index: int, run: str, topic: str) -> dict[str, Any]:
    """Even: an opt-out of one topic; odd: of all marketing (the two write paths)."""
    body: dict[str, Any] = {
        "email": f"gone-{run}-{index}@example.com",
        "status": "unsubscribed",
        "source": "api",
        "evidence": {"n": index},
    }
    if index % 2 == 0:
        body["topic"] = topic
    return body


async def _send_until_killed(
    server: LiveServer, headers: dict[str, str], bodies: list[dict[str, Any]]
) -> list[Ack]:
    """Send the opt-outs IN_FLIGHT at a time; kill the server as soon as KILL_AFTER of them
    have been answered 200. Requests cut off by the kill are simply not acknowledged."""
    acks: list[Ack] = []
    gate = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)

    async def send(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with gate:
            if server.process.poll() is not None:
                return
            try:
                answer = await client.post("/v1/consents", json=body)
            except httpx.TransportError:
                return  # cut off by the kill: never acknowledged
        assert answer.status_code == 200, answer.text
        result = answer.json()
        acks.append(Ack(body["email"], body.get("topic"), result["contact_id"], result["event_id"]))
        if len(acks) == KILL_AFTER:
            server.kill()

    async with httpx.AsyncClient(
        base_url=server.base_url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        await asyncio.gather(*(send(client, body) for body in bodies))
    return acks


def _worker_pids(server: LiveServer) -> list[int]:
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", server.log())]


def _is_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return True
    # A killed process not yet reaped by whoever inherited it is a zombie: it runs nothing.
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_is_gone(pid) for pid in pids):
        time.sleep(0.05)
    assert all(_is_gone(pid) for pid in pids), f"worker processes survived kill -9: {pids}"


def stored_events(database_url: str) -> tuple[dict[str, list[str]], list[int], int]:
    """Consent events by contact id, every `seq` in order, and the head's `seq`."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT contact_id, id FROM audit_event "
                    "WHERE kind IN ('consent_change', 'global_consent_change')"
                )
            ).all()
            seqs = list(connection.scalars(text("SELECT seq FROM audit_event ORDER BY seq")))
            head = connection.scalar(text("SELECT seq FROM audit_head WHERE id = 1"))
    finally:
        engine.dispose()
    events: dict[str, list[str]] = {}
    for contact_id, event_id in rows:
        events.setdefault(str(contact_id), []).append(str(event_id))
    assert isinstance(head, int)
    return events, seqs, head


def _opted_out(entry: dict[str, Any], topic: str | None) -> bool:
    if topic is None:
        return bool(entry["suppressed"])
    return any(
        s["topic"] == topic and s["status"] == "unsubscribed" for s in entry["subscriptions"]
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_every_acknowledged_opt_out_survives_kill_9(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    headers = issue_live_key(url, Scope.ADMIN, name="durability")
    run = uuid.uuid4().hex[:8]
    topic = f"news-{run}"
    bodies = [opt_out_body(i, run, topic) for i in range(OPT_OUTS)]

    with live_server(url, log_dir=tmp_path / "first", workers=WORKERS) as server:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            answer = client.put(
                f"/v1/topics/{topic}",
                json={"name": "News", "kind": "marketing", "consent": "opt_out"},
            )
            assert answer.status_code == 201, answer.text
        workers = _worker_pids(server)
        assert len(workers) == WORKERS
        acks = asyncio.run(_send_until_killed(server, headers, bodies))
        assert server.process.returncode == -signal.SIGKILL, server.log()
        assert_all_gone(workers)
    assert len(acks) >= KILL_AFTER
    assert len(acks) < OPT_OUTS, "the kill came after every answer: it interrupted nothing"

    with (
        live_server(url, log_dir=tmp_path / "restarted") as again,
        httpx.Client(base_url=again.base_url, headers=headers, timeout=30) as client,
    ):
        lookup = client.post("/v1/contacts/lookup", json={"emails": [b["email"] for b in bodies]})
        assert lookup.status_code == 200, lookup.text
        found = {entry["email"]: entry for entry in lookup.json()["contacts"]}
        for ack in acks:
            entry = found[ack.email]
            assert entry["contact_id"] == ack.contact_id, ack
            assert _opted_out(entry, ack.topic), f"acknowledged opt-out lost: {ack}"
            contact = client.get(f"/v1/contacts/{ack.contact_id}")
            assert contact.status_code == 200, contact.text
            history = [e for e in contact.json()["events"] if e["id"] == ack.event_id]
            assert len(history) == 1, f"acknowledged opt-out has no audit event: {ack}"
            assert history[0]["to_status"] == "unsubscribed"
            assert history[0]["topic"] == ack.topic

    events, seqs, head = stored_events(url)
    assert seqs == list(range(1, len(seqs) + 1)), "the crash left a gap in the audit seq"
    assert head == len(seqs)
    # Nothing half-written either: a change that was not acknowledged is there completely
    # (contact, state and event) or not at all.
    for body in bodies:
        entry = found[body["email"]]
        contact_id = entry["contact_id"]
        if contact_id is None:
            continue
        assert len(events.get(contact_id, [])) == 1, body
        assert _opted_out(entry, body.get("topic")), body
    assert sum(len(ids) for ids in events.values()) == sum(
        1 for entry in found.values() if entry["contact_id"] is not None
    )
