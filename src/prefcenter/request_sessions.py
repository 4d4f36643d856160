"""Owns each request's transaction as a FastAPI dependency (`ReadSession`, `WriteSession`,
`ReplicaSession`): the app's Database (db.py), and a session slot awaited in the event loop
before a worker thread opens the transaction that db.Database.transaction commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import contextmanager_in_threadpool
from sqlmodel import Session

from prefcenter.db import Database


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def read_database_of(request: Request) -> Database:
    """The database for this request's heavy reads: its read replica when there is one (see
    Database.reads)."""
    return database_of(request).reads()


@asynccontextmanager
async def _request_transaction(
    request: Request, *, write: bool, replica: bool = False
) -> AsyncIterator[Session]:
    """The request's transaction, entered and left in worker threads like any sync dependency,
    but only once one of the process's session slots is free.

    The slot is awaited in the event loop, holding neither a thread nor a connection. Without
    it a burst of requests fills every worker thread with waits for a pooled connection or, on
    SQLite, for the write lock, while the requests that hold those need a thread again to run
    their handler and validate their answer: nothing moves until the pool and busy timeouts
    turn the burst into 500s and 503s.
    """
    database = read_database_of(request) if replica else database_of(request)
    async with (
        database.write_slots if write else nullcontext(),
        database.session_slots,
        contextmanager_in_threadpool(database.transaction(write=write)) as session,
    ):
        yield session


async def _read_session(request: Request) -> AsyncIterator[Session]:
    async with _request_transaction(request, write=False) as session:
        yield session


async def _replica_session(request: Request) -> AsyncIterator[Session]:
    async with _request_transaction(request, write=False, replica=True) as session:
        yield session


async def _write_session(request: Request) -> AsyncIterator[Session]:
    async with _request_transaction(request, write=True) as session:
        yield session


# scope="function": the transaction commits when the handler returns, before the response is
# sent, so a 2xx is only ever sent for a committed change.
ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]
# A read transaction on the read replica when there is one, once it has caught up with the
# primary as of the request's start (see Database.reads): for the heavy reads only.
ReplicaSession = Annotated[Session, Depends(_replica_session, scope="function")]
