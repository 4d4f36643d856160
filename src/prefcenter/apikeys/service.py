"""Use cases for API keys: issue, list, revoke, and find the caller behind a bearer secret."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.apikeys.models import ApiKey
from prefcenter.apikeys.schemas import ApiKeyInfo, Caller, IssuedApiKey, Scope
from prefcenter.db import utcnow
from prefcenter.driver import driver_sql
from prefcenter.plain_text import is_plain_text
from prefcenter.problems import NotFound, Unprocessable

SECRET_PREFIX = "pck_"  # noqa: S105 - a public marker, not a secret
MAX_SECRET_LENGTH = 200


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _info(key: ApiKey) -> ApiKeyInfo:
    assert key.id is not None
    return ApiKeyInfo(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=[Scope(s) for s in key.scopes.split()],
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


def create_api_key(session: Session, *, name: str, scopes: list[Scope]) -> IssuedApiKey:
    """Issue a key. The secret is returned once; only its hash is kept."""
    name = name.strip()
    if not name or len(name) > 100 or not is_plain_text(name):
        raise Unprocessable("An API key needs a name of 1-100 printable characters.")
    if not scopes:
        raise Unprocessable("An API key needs at least one scope.")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=secret[: len(SECRET_PREFIX) + 6],
        secret_hash=hash_secret(secret),
        scopes=" ".join(sorted({s.value for s in scopes})),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return IssuedApiKey(info=_info(key), secret=secret)


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    return [_info(k) for k in session.exec(select(ApiKey).order_by(col(ApiKey.id)))]


def revoke_api_key(session: Session, *, key_id: int) -> ApiKeyInfo:
    """Revoke at once; revoking again is harmless and keeps the first revocation time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"There is no API key with id {key_id}.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.flush()
    return _info(key)


def find_caller(session: Session, secret: str) -> Caller | None:
    """The caller a bearer secret belongs to, or None if it is unknown or revoked."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
    key = session.exec(select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret))).first()
    if key is None or key.revoked_at is not None or key.id is None:
        return None
    return Caller(
        key_id=key.id,
        name=key.name,
        scopes=frozenset(Scope(s) for s in key.scopes.split()),
    )


_CALLER_SQL = (
    "SELECT id, name, scopes FROM api_key WHERE secret_hash = %(hash)s AND revoked_at IS NULL"
)
_CALLER = {sqlite: driver_sql(_CALLER_SQL, sqlite=sqlite) for sqlite in (False, True)}


def find_caller_on_cursor(cursor: Any, secret: str, *, sqlite: bool) -> Caller | None:
    """`find_caller` in one statement on a driver cursor (db.Database.run_on_connection), for
    every API request: no ORM, no transaction of its own. Read on every request, never
    cached, so that a revoked key's next request is refused."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
    cursor.execute(_CALLER[sqlite], {"hash": hash_secret(secret)})
    row = cursor.fetchone()
    if row is None:
        return None
    key_id, name, scopes = row
    return Caller(key_id=key_id, name=name, scopes=frozenset(Scope(s) for s in scopes.split()))
