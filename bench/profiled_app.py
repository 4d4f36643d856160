"""prefcenter's app with timing probes, for bench/profile_one_click.py. Not for production.

`make_app()` builds the real app from the environment (like `prefcenter serve`) and adds:
- an ASGI wrapper that times each request and keeps a record in a context variable (which
  FastAPI's thread-pool hops copy, so every stage of the request writes into it);
- SQLAlchemy events: every statement's round trip, the pool's pre-ping, the COMMIT;
- the session-slot semaphore wrapped to time the wait for a slot.
When the worker shuts down it writes its records (one JSON line per request) to
`$BENCH_PROFILE_DIR/requests-<pid>.jsonl`.
"""

from __future__ import annotations

import json
import os
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefcenter.app import create_app
from prefcenter.settings import Settings

_record: ContextVar[dict[str, Any] | None] = ContextVar("bench_record", default=None)
_records: list[dict[str, Any]] = []


def _now() -> float:
    return time.perf_counter()


def _mark(name: str) -> None:
    record = _record.get()
    if record is not None:
        record.setdefault(name, _now())


class Timed:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {
            "wall": time.time(),
            "t0": _now(),
            "method": scope["method"],
            "path": scope["path"][:3],
            "stmts": [],
        }
        token = _record.set(record)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                record["t_response"] = _now()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            record["t_end"] = _now()
            _record.reset(token)
            _records.append(record)


class TimedSlots:
    """The database's session-slot semaphore, timing how long each request waits for one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __aenter__(self) -> None:
        _mark("t_slot_wait")
        await self.inner.__aenter__()
        _mark("t_slot")

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)


def _statement_kind(statement: str) -> str:
    words = statement.replace("\n", " ").split()
    if not words:
        return "?"
    verb = words[0].upper()
    table = "?"
    for marker in ("FROM", "INTO", "UPDATE"):
        if marker in (w.upper() for w in words):
            index = [w.upper() for w in words].index(marker)
            if index + 1 < len(words):
                table = words[index + 1].strip('"(')
                break
    if verb == "UPDATE":
        table = words[1]
    if verb == "WITH":  # the audit append: WITH head AS (UPDATE audit_head …) INSERT …
        table = words[1] + " (UPDATE audit_head + INSERT audit_event)"
    lock = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
    return f"{verb} {table}{lock}"


def _instrument(app: Any) -> None:
    database = app.state.database
    database.session_slots = TimedSlots(database.session_slots)
    engine = database.engine
    dialect = engine.dialect
    original_ping = dialect.do_ping

    def timed_ping(dbapi_connection: Any) -> bool:
        started = _now()
        try:
            result: bool = original_ping(dbapi_connection)
        finally:
            record = _record.get()
            if record is not None:
                record["stmts"].append(["ping SELECT 1", started, _now()])
        return result

    dialect.do_ping = timed_ping

    @event.listens_for(engine, "before_cursor_execute")
    def _before(*args: Any) -> None:
        record = _record.get()
        if record is not None:
            record["stmts"].append([_statement_kind(args[2]), _now(), None])

    @event.listens_for(engine, "after_cursor_execute")
    def _after(*args: Any) -> None:
        record = _record.get()
        if record is not None and record["stmts"]:
            record["stmts"][-1][2] = _now()

    @event.listens_for(engine, "commit")
    def _commit(*args: Any) -> None:
        _mark("t_commit")

    @event.listens_for(Session, "after_commit")
    def _committed(*args: Any) -> None:
        _mark("t_committed")

    @event.listens_for(Session, "after_begin")
    def _begun(*args: Any) -> None:
        _mark("t_session")


def make_app() -> Any:
    app = create_app(Settings())
    _instrument(app)
    router_lifespan = app.router.lifespan_context

    from contextlib import asynccontextmanager  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(inner: Any) -> Any:
        async with router_lifespan(inner) as state:
            yield state
        out = Path(os.environ.get("BENCH_PROFILE_DIR", ".")) / f"requests-{os.getpid()}.jsonl"
        with out.open("w") as handle:
            for record in _records:
                handle.write(json.dumps(record) + "\n")

    app.router.lifespan_context = lifespan
    return Timed(app)
