"""Load for the fault tests: one-click opt-outs and API consent writes sent by clients that
retry a 503 until it lands, with every answer kept, so a test can tell what was acknowledged
and what the service said while it was hurt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from prefcenter.problems import PROBLEM_MEDIA_TYPE

ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOPIC = "news"
# Between a 503 and the retry: shorter than the Retry-After asked for, to see recovery sharply.
RETRY_PAUSE_S = 0.1


@dataclass(frozen=True, slots=True)
class Answer:
    what: str  # "one-click" or "api"
    key: str  # the address
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no answer at all (connection refused or cut)
    retry_after: str | None
    content_type: str
    body: str


@dataclass(slots=True)
class Record:
    answers: list[Answer] = field(default_factory=list)

    def acknowledged(self, what: str) -> set[str]:
        return {a.key for a in self.answers if a.what == what and a.status == 200}

    def statuses(self) -> set[int | None]:
        return {a.status for a in self.answers}

    def first_success_after(self, moment: float) -> float | None:
        """When the first 200 of a request sent after `moment` came back."""
        ends = [a.ended for a in self.answers if a.status == 200 and a.started >= moment]
        return min(ends) if ends else None


Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def _attempt(client: httpx.AsyncClient, what: str, key: str, send: Send) -> Answer:
    started = time.monotonic()
    try:
        response = await send(client)
    except httpx.TransportError as exc:
        return Answer(what, key, started, time.monotonic(), None, None, "", repr(exc))
    return Answer(
        what,
        key,
        started,
        time.monotonic(),
        response.status_code,
        response.headers.get("retry-after"),
        response.headers.get("content-type", "").split(";")[0],
        response.text[:300],
    )


def one_click(token: str) -> Send:
    return lambda client: client.post(f"/u/{token}", content=ONE_CLICK_BODY, headers=FORM)


def consent_write(body: dict[str, Any]) -> Send:
    return lambda client: client.post("/v1/consents", json=body)


@dataclass(frozen=True, slots=True)
class Job:
    what: str
    key: str
    send: Send


async def run_jobs(
    base_url: str,
    headers: dict[str, str],
    jobs: list[Job],
    *,
    concurrency: int,
    record: Record,
    retry: bool = True,
    deadline_s: float = 60.0,
) -> None:
    """Send every job, `concurrency` at a time; with `retry`, a job is sent again after a 503 or
    no answer until it is answered otherwise (or `deadline_s` passes)."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    stop_at = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < stop_at:
            job = queue.get_nowait()
            while True:
                answer = await _attempt(client, job.what, job.key, job.send)
                record.answers.append(answer)
                if not retry or answer.status not in (None, 503) or time.monotonic() > stop_at:
                    break
                await asyncio.sleep(RETRY_PAUSE_S)

    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def assert_unavailable_answers_are_problems(record: Record) -> None:
    """Every answer but a 200 is a 503 problem document with Retry-After (a one-click comes
    from a mail client, not a person: it gets the problem too)."""
    for answer in record.answers:
        if answer.status == 200:
            continue
        assert answer.status == 503, answer
        assert answer.retry_after is not None, answer
        assert answer.content_type == PROBLEM_MEDIA_TYPE, answer


def opt_out_bodies(run: str, count: int) -> list[dict[str, Any]]:
    return [
        {"email": f"api-{run}-{n}@example.com", "topic": TOPIC, "status": "unsubscribed"}
        for n in range(count)
    ]


def stored_opt_outs(database_url: str, addresses: set[str]) -> set[str]:
    """Which of these addresses the database holds as unsubscribed from TOPIC, each with its
    audit event."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT c.address FROM subscription s "
                    "JOIN contact c ON c.id = s.contact_id JOIN topic t ON t.id = s.topic_id "
                    "WHERE t.key = :topic AND s.status = 'unsubscribed' AND EXISTS ("
                    "  SELECT 1 FROM audit_event e WHERE e.contact_id = c.public_id"
                    "  AND e.kind = 'consent_change')"
                ),
                {"topic": TOPIC},
            ).all()
    finally:
        engine.dispose()
    return {str(address) for (address,) in rows} & addresses


def audit_seqs_are_gap_free(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            seqs = list(connection.scalars(text("SELECT seq FROM audit_event ORDER BY seq")))
            head = connection.scalar(text("SELECT seq FROM audit_head WHERE id = 1"))
    finally:
        engine.dispose()
    assert seqs == list(range(1, len(seqs) + 1)), "a gap in the audit seq"
    assert head == len(seqs)
