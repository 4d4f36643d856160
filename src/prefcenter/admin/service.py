"""Use cases of console access: admin users (create, list, disable), sign-in with a password or
an admin API key under a rate limit, and server-side sessions (find, end)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col, select

from prefcenter.admin import rules
from prefcenter.admin.errors import AdminUserExists, AdminUserNotFound, InvalidAdminUser
from prefcenter.admin.models import AdminSession, AdminSignInAttempt, AdminUser
from prefcenter.apikeys.models import ApiKey
from prefcenter.apikeys.schemas import Scope
from prefcenter.apikeys.service import find_caller

# Argon2id at OWASP's recommended setting (19 MiB, 2 passes, 1 lane): sign-in is an
# unauthenticated endpoint, and each try costs the server this much memory and CPU; RFC 9106's
# 64 MiB profile took ~0.5 s per try here. Changing these rehashes each password at its next
# sign-in (check_needs_rehash).
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@cache
def _decoy_hash() -> str:
    """A hash to verify against when the username does not exist, so that an unknown name
    costs as long as a wrong password and the timing reveals no usernames."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class AdminUserInfo:
    id: int
    username: str
    created_at: datetime
    disabled: bool


def _info(user: AdminUser) -> AdminUserInfo:
    assert user.id is not None
    return AdminUserInfo(
        id=user.id, username=user.username, created_at=user.created_at, disabled=user.disabled
    )


def _find_user(session: Session, username: str) -> AdminUser | None:
    return session.exec(select(AdminUser).where(AdminUser.username == username)).first()


def create_admin(session: Session, *, username: str, password: str, now: datetime) -> AdminUserInfo:
    name = rules.normalise_username(username)
    if name is None:
        raise InvalidAdminUser(
            "A username is 1-64 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    problem = rules.password_problem(password)
    if problem is not None:
        raise InvalidAdminUser(f"The password {problem}.")
    if _find_user(session, name) is not None:
        raise AdminUserExists(f"There already is an admin user {name!r}.")
    user = AdminUser(username=name, password_hash=_hasher.hash(password), created_at=now)
    session.add(user)
    session.flush()
    return _info(user)


def list_admins(session: Session) -> list[AdminUserInfo]:
    return [_info(u) for u in session.exec(select(AdminUser).order_by(col(AdminUser.username)))]


def disable_admin(session: Session, *, username: str) -> AdminUserInfo:
    """Disable the user and end every session of theirs at once."""
    name = rules.normalise_username(username)
    user = _find_user(session, name) if name else None
    if user is None or user.id is None:
        raise AdminUserNotFound(f"There is no admin user {username!r}.")
    user.disabled = True
    session.add(user)
    session.execute(delete(AdminSession).where(col(AdminSession.admin_user_id) == user.id))
    session.flush()
    return _info(user)


class SignInOutcome(StrEnum):
    SIGNED_IN = "signed_in"
    REFUSED = "refused"  # wrong password, unknown user, disabled user, unfit key
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class SignInResult:
    outcome: SignInOutcome
    # Only when signed in: the cookie's value, shown to the browser once, never stored.
    token: str | None = None


def _recent_failures(
    session: Session, *, username: str | None, client_ip: str | None, now: datetime
) -> rules.RecentFailures:
    since = now - rules.ATTEMPT_WINDOW

    def count(column: str, value: str | None) -> int:
        if value is None:
            return 0
        query = (
            select(func.count())
            .select_from(AdminSignInAttempt)
            .where(
                getattr(AdminSignInAttempt, column) == value,
                col(AdminSignInAttempt.attempted_at) > since,
            )
        )
        return session.exec(query).one()

    return rules.RecentFailures(
        for_username=count("username", username), for_address=count("client_ip", client_ip)
    )


def _record_failure(
    session: Session, *, username: str | None, client_ip: str | None, now: datetime
) -> SignInResult:
    session.execute(
        delete(AdminSignInAttempt).where(
            col(AdminSignInAttempt.attempted_at) <= now - rules.ATTEMPT_WINDOW
        )
    )
    session.add(AdminSignInAttempt(username=username, client_ip=client_ip, attempted_at=now))
    session.flush()
    return SignInResult(SignInOutcome.REFUSED)


def _open_session(
    session: Session,
    *,
    actor: str,
    now: datetime,
    admin_user_id: int | None = None,
    api_key_id: int | None = None,
) -> SignInResult:
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
    return SignInResult(SignInOutcome.SIGNED_IN, token=token)


def sign_in_with_password(
    session: Session, *, username: str, password: str, client_ip: str | None, now: datetime
) -> SignInResult:
    """Check the password (always spending one Argon2 verification, whatever the username) and
    open a session. Failures are recorded in the caller's transaction, which must commit even
    though sign-in failed: that is what the rate limit counts."""
    # A name that cannot exist is counted against the client address only: it is never a
    # user's, and it may hold anything (a NUL would not even be stored by PostgreSQL).
    name = rules.normalise_username(username)
    failures = _recent_failures(session, username=name, client_ip=client_ip, now=now)
    if rules.sign_in_throttled(failures):
        return SignInResult(SignInOutcome.THROTTLED)
    user = _find_user(session, name) if name is not None else None
    stored = user.password_hash if user is not None else _decoy_hash()
    verified: bool
    try:
        verified = _hasher.verify(stored, password[: rules.MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        verified = False
    if not verified or user is None or user.disabled or user.id is None:
        return _record_failure(session, username=name, client_ip=client_ip, now=now)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        session.add(user)
    return _open_session(session, actor=f"admin:{user.username}", admin_user_id=user.id, now=now)


def sign_in_with_api_key(
    session: Session, *, secret: str, client_ip: str | None, now: datetime
) -> SignInResult:
    """An API key with the `admin` scope opens a session named after the key."""
    if rules.sign_in_throttled(
        _recent_failures(session, username=None, client_ip=client_ip, now=now)
    ):
        return SignInResult(SignInOutcome.THROTTLED)
    caller = find_caller(session, secret.strip())
    if caller is None or not caller.is_admin:
        return _record_failure(session, username=None, client_ip=client_ip, now=now)
    return _open_session(session, actor=caller.actor, api_key_id=caller.key_id, now=now)


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
