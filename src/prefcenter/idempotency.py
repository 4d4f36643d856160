"""Owns `Idempotency-Key` handling: a retried mutating call gets its first answer, and changes
nothing a second time. Knows nothing of the domain: it stores status codes and JSON bodies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from sqlalchemy import Text
from sqlmodel import Field, Session, SQLModel, select

from prefcenter.db import UtcDateTime, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.problems import Unprocessable
from prefcenter.sqlite_times import sqlite_text

MAX_KEY_LENGTH = 255
REPLAY_HEADER = "Idempotent-Replayed"

ModelT = TypeVar("ModelT", bound=BaseModel)


class IdempotencyKeyReused(Unprocessable):
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"

    # Who sent it: keys of different callers never collide.
    owner: str = Field(max_length=64, primary_key=True)
    key: str = Field(max_length=MAX_KEY_LENGTH, primary_key=True)
    request_hash: str = Field(max_length=64)
    status_code: int
    response_body: str = Field(sa_type=Text)
    created_at: datetime = Field(sa_type=UtcDateTime, index=True)


_NOT_PARSED: Any = object()


def fingerprint(
    method: str, path: str, query: str, body: bytes, *, parsed: Any = _NOT_PARSED
) -> str:
    """Same method, path, query and JSON value → same fingerprint (key order and spacing of the
    JSON do not matter). `parsed`: the body's JSON value, when the caller has it already (a
    batch's 100 KB is not parsed twice)."""
    try:
        value = json.loads(body) if parsed is _NOT_PARSED else parsed
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A first answer as stored under its key."""

    request_hash: str
    status_code: int
    body: str


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """An answer written as JSON by its maker, byte for byte as its model's
    `model_dump_json` writes it (a batch's thousand results, without a model each)."""

    body: str


AnswerT = TypeVar("AnswerT", bound=BaseModel | JsonAnswer)


def _json_of(answer: BaseModel | JsonAnswer) -> str:
    return answer.body if isinstance(answer, JsonAnswer) else answer.model_dump_json()


@dataclass(frozen=True, slots=True)
class IdempotentCall:
    """The request's Idempotency-Key (if any) and its fingerprint."""

    key: str | None
    request_hash: str

    def run(
        self,
        session: Session,
        *,
        owner: str,
        response: Response,
        model: type[ModelT],
        call: Callable[[], ModelT],
        status_code: Callable[[ModelT], int] | None = None,
    ) -> ModelT:
        """Answer from the stored first response, or run `call` and store its answer in the
        same transaction as the change it made.

        Must run inside a write transaction: on SQLite that serialises concurrent retries; on
        PostgreSQL a concurrent duplicate fails on the primary key and is told to retry (409).
        """
        result, _ = self._run(session, owner, response, model, call, status_code)
        return result

    def run_json(
        self,
        session: Session,
        *,
        owner: str,
        response: Response,
        model: type[ModelT],
        call: Callable[[], ModelT | JsonAnswer],
    ) -> str:
        """`run`, answering the answer's JSON: serialised once for the stored record and the
        response alike (a batch's thousand results are not written twice). `call` may answer
        with its JSON already written (`JsonAnswer`); a replay writes the stored answer
        through `model`, as for any answer."""
        result, body = self._run(session, owner, response, model, call, None)
        return body if body is not None else _json_of(result)

    def _run(
        self,
        session: Session,
        owner: str,
        response: Response,
        model: type[ModelT],
        call: Callable[[], AnswerT],
        status_code: Callable[[AnswerT], int] | None,
    ) -> tuple[AnswerT | ModelT, str | None]:
        """The answer, and its JSON as stored when this call stored it."""
        if self.key is None:
            result = call()
            if status_code is not None:
                response.status_code = status_code(result)
            return result, None
        stored = session.exec(
            select(IdempotencyRecord).where(
                IdempotencyRecord.owner == owner, IdempotencyRecord.key == self.key
            )
        ).first()
        if stored is not None:
            answer = self.replay(
                StoredAnswer(stored.request_hash, stored.status_code, stored.response_body),
                response=response,
                model=model,
            )
            return answer, None
        result = call()
        code = status_code(result) if status_code is not None else (response.status_code or 200)
        response.status_code = code
        body = _json_of(result)
        session.add(
            IdempotencyRecord(
                owner=owner,
                key=self.key,
                request_hash=self.request_hash,
                status_code=code,
                response_body=body,
                created_at=utcnow(),
            )
        )
        session.flush()
        return result, body

    def replay(self, stored: StoredAnswer, *, response: Response, model: type[ModelT]) -> ModelT:
        """The first answer again, if this is the request it answered; else
        `IdempotencyKeyReused`."""
        if stored.request_hash != self.request_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {self.key!r} was first used with a different request; "
                "use a new key for a new request."
            )
        response.status_code = stored.status_code
        response.headers[REPLAY_HEADER] = "true"
        return model.model_validate_json(stored.body)


_STORE_PG = """, kept AS (
    INSERT INTO idempotency_record
        (owner, key, request_hash, status_code, response_body, created_at)
    SELECT %(i_owner)s, %(i_key)s, %(i_request_hash)s, %(i_status_code)s, %(i_body)s,
        %(i_created_at)s
    WHERE {only_if}
)
"""


def guarded_store_pg(
    *,
    owner: str,
    key: str,
    request_hash: str,
    status_code: int,
    body: str,
    created_at: datetime,
    only_if: str,
) -> tuple[str, dict[str, Any]]:
    """The storing of a first answer as a CTE for a caller's own PostgreSQL statement
    (`, kept AS (…)`, to follow its other CTEs), with its parameters (named `i_…`): a row only
    where the SQL condition `only_if` holds (the change was written). A key stored meanwhile
    by a concurrent request fails the whole statement (unique_violation), so nothing of it is
    written: the caller then answers as `IdempotentCall.run` would."""
    params: dict[str, Any] = {
        "i_owner": owner,
        "i_key": key,
        "i_request_hash": request_hash,
        "i_status_code": status_code,
        "i_body": body,
        "i_created_at": created_at,
    }
    return _STORE_PG.format(only_if=only_if), params


_STORE_SQLITE = (
    "INSERT INTO idempotency_record"
    " (owner, key, request_hash, status_code, response_body, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def store_sqlite(
    cursor: DriverCursor,
    *,
    owner: str,
    key: str,
    request_hash: str,
    status_code: int,
    body: str,
    created_at: datetime,
) -> None:
    """Store a first answer on a sqlite3 cursor in the caller's write transaction, as `run`
    stores it through the session. A key stored already raises the driver's IntegrityError."""
    cursor.execute(
        _STORE_SQLITE, (owner, key, request_hash, status_code, body, sqlite_text(created_at))
    )


async def _idempotent_call(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_KEY_LENGTH,
            pattern=r"^[\x21-\x7e]+$",
            description="Retrying with the same key and body returns the first answer and "
            "changes nothing; the same key with another body is refused (422).",
        ),
    ] = None,
) -> IdempotentCall:
    body = b""
    parsed = _NOT_PARSED
    if idempotency_key is not None:
        body = await request.body()
        # As the route parsed it (Starlette keeps it): the same `json.loads`. Not JSON: the
        # fingerprint is the bytes'.
        with suppress(ValueError):
            parsed = await request.json()
    return IdempotentCall(
        key=idempotency_key,
        request_hash=fingerprint(
            request.method, request.url.path, request.url.query, body, parsed=parsed
        ),
    )


Idempotency = Annotated[IdempotentCall, Depends(_idempotent_call)]
