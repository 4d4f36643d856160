"""The floor: the least a FastAPI + psycopg service can do per durable write, to compare with.

One table, one `INSERT` per `POST /u/{token}` committed with `synchronous_commit=on` (durable,
like prefcenter), and one indexed single-row `SELECT` per `GET /u/{token}`. Sync handlers run
in FastAPI's thread pool like prefcenter's, over a small pool of psycopg 3 connections (the
same driver). No templates, no ORM, no validation beyond the path.

Served by bench/one_click.py with the same uvicorn and worker count as prefcenter:

    FLOOR_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/DB \
        .venv/bin/uvicorn --app-dir bench floor_app:app --workers 2 --log-level warning

`create_schema(url)` makes the table (one_click.py calls it before starting the server).
"""

from __future__ import annotations

import os
import queue
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse

# prefcenter's default PREFCENTER_DB_POOL_SIZE; one_click.py sets both alike (BENCH_POOL_SIZE)
POOL_SIZE = int(os.environ.get("FLOOR_POOL_SIZE", "10"))
SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_optout (
    id bigserial PRIMARY KEY,
    token text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_floor_optout_token ON floor_optout (token);
"""


def create_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(SCHEMA)


class Pool:
    """A fixed set of connections handed out one at a time (psycopg_pool is not installed)."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._free: queue.LifoQueue[psycopg.Connection[tuple[object, ...]]] = queue.LifoQueue()
        for _ in range(size):
            self._free.put(self._connect())

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self._url, options="-c synchronous_commit=on")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        connection = self._free.get()
        try:
            with connection.transaction():
                yield connection
        except psycopg.OperationalError:
            connection.close()
            connection = self._connect()
            raise
        finally:
            self._free.put(connection)


_pools: list[Pool] = []


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    _pools.append(Pool(os.environ["FLOOR_DATABASE_URL"], POOL_SIZE))  # one per worker process
    yield


app = FastAPI(lifespan=lifespan)


def pool() -> Pool:
    return _pools[0]


@app.post("/u/{token:path}")
def insert(token: str) -> PlainTextResponse:
    with pool().transaction() as connection:
        connection.execute("INSERT INTO floor_optout (token) VALUES (%s)", (token,))
    return PlainTextResponse("ok")


@app.get("/u/{token:path}")
def read(token: str) -> HTMLResponse:
    with pool().transaction() as connection:
        row = connection.execute(
            "SELECT id FROM floor_optout WHERE token = %s LIMIT 1", (token,)
        ).fetchone()
    return HTMLResponse(f"<p>{'found' if row else 'not found'}</p>")


@app.get("/readyz")
def readyz() -> PlainTextResponse:
    with pool().transaction() as connection:
        connection.execute("SELECT 1")
    return PlainTextResponse("ok")
