"""Use cases for API keys: issue, list, revoke, and find the caller behind a bearer secret."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.apikeys.models import ApiKey
from prefcenter.apikeys.schemas import ApiKeyInfo, Caller, IssuedApiKey, Scope, granting
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
    if key is None or key.revoked_at is not None:
        return None
    return caller_of_row(key.id, key.name, key.scopes)


# The caller's key, for a statement that reads it (as `k`) with its request's own rows (the
# API lanes, consent.change_lane and consent.lookup_lane): found by the hash of the bearer
# secret (%(secret_hash)s, `hash_secret`), unless revoked. Read on every request, never
# cached, so that a revoked key's next request is refused.
CALLER_MATCH = "k.secret_hash = %(secret_hash)s AND k.revoked_at IS NULL"
CALLER_COLUMNS = ("k.id", "k.name", "k.scopes")
_CALLER_SQL = f"SELECT {', '.join(CALLER_COLUMNS)} FROM api_key AS k WHERE {CALLER_MATCH}"  # noqa: S608  (constants)
_CALLER = {sqlite: driver_sql(_CALLER_SQL, sqlite=sqlite) for sqlite in (False, True)}


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an `Authorization: Bearer <secret>` header, if it has an API key's form;
    None for anything else (which no key matches: the app's 401)."""
    if authorization is None:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(SECRET_PREFIX):
        return None
    return secret if len(secret) <= MAX_SECRET_LENGTH else None


def caller_of_row(key_id: int | None, name: str | None, scopes: str | None) -> Caller | None:
    """The caller of `CALLER_COLUMNS` as read; None when no key matched (NULLs of an outer
    join)."""
    if key_id is None or name is None or scopes is None:
        return None
    return Caller(key_id=key_id, name=name, scopes=frozenset(Scope(s) for s in scopes.split()))


def granted_pg(scope: Scope) -> str:
    """PostgreSQL: the key `k` (CALLER_MATCH) allows `scope` (Caller.allows), for a statement
    that reads only for a caller who may: a refused caller's request costs no more than the
    app's refusal."""
    granted = ", ".join(f"'{s.value}'" for s in sorted(granting(scope)))
    return f"string_to_array(k.scopes, ' ') && ARRAY[{granted}]"


def find_caller_on_cursor(cursor: Any, secret: str, *, sqlite: bool) -> Caller | None:
    """`find_caller` in one statement on a driver cursor (db.Database.run_on_connection), for
    every API request: no ORM, no transaction of its own. Read on every request, never
    cached, so that a revoked key's next request is refused."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
    cursor.execute(_CALLER[sqlite], {"secret_hash": hash_secret(secret)})
    row = cursor.fetchone()
    if row is None:
        return None
    return caller_of_row(*row)
