"""Owns console sessions on the server: open one at sign-in, find the live one behind a cookie,
keep it alive, end it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col

from prefcenter.admin import rules
from prefcenter.admin.models import AdminSession, AdminUser
from prefcenter.apikeys.models import ApiKey
from prefcenter.apikeys.schemas import Scope


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def open_session(
    session: Session,
    *,
    actor: str,
    now: datetime,
    admin_user_id: int | None = None,
    api_key_id: int | None = None,
) -> str:
    """A new session; returns the cookie's token, shown to the browser once, never stored."""
    # Ended sessions go as new ones start: no sweeper process needed.
    session.execute(
        delete(AdminSession).where(
            or_(
                col(AdminSession.expires_at) <= now,
                col(AdminSession.last_seen_at) <= now - rules.SESSION_IDLE_TIMEOUT,
            )
        )
    )
    token = secrets.token_urlsafe(32)
    times = rules.session_times(now)
    session.add(
        AdminSession(
            id=hash_token(token),
            admin_user_id=admin_user_id,
            api_key_id=api_key_id,
            actor=actor,
            csrf_secret=secrets.token_urlsafe(32),
            created_at=times.created_at,
            expires_at=times.expires_at,
            last_seen_at=times.last_seen_at,
        )
    )
    session.flush()
    return token


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id: str
    actor: str
    csrf_secret: str
    # What the header shows: the username, or the API key's name.
    display_name: str
    needs_touch: bool


def find_session(session: Session, token: str | None, *, now: datetime) -> ActiveSession | None:
    """The live session behind a cookie, or None. The user (or key) behind it is checked again
    each time: a disabled user or a revoked key is signed out at once."""
    if not token or len(token) > 200:
        return None
    row = session.get(AdminSession, hash_token(token))
    if row is None:
        return None
    times = rules.SessionTimes(row.created_at, row.expires_at, row.last_seen_at)
    if not rules.session_alive(times, now):
        return None
    if row.admin_user_id is not None:
        user = session.get(AdminUser, row.admin_user_id)
        if user is None or user.disabled:
            return None
        display_name = user.username
    else:
        key = session.get(ApiKey, row.api_key_id) if row.api_key_id is not None else None
        if key is None or key.revoked_at is not None or Scope.ADMIN not in key.scopes.split():
            return None
        display_name = f"API key {key.name}"
    return ActiveSession(
        id=row.id,
        actor=row.actor,
        csrf_secret=row.csrf_secret,
        display_name=display_name,
        needs_touch=rules.needs_touch(row.last_seen_at, now),
    )


def touch_session(session: Session, session_id: str, *, now: datetime) -> None:
    session.execute(
        update(AdminSession).where(col(AdminSession.id) == session_id).values(last_seen_at=now)
    )


def end_session(session: Session, session_id: str) -> None:
    session.execute(delete(AdminSession).where(col(AdminSession.id) == session_id))
