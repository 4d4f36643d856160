"""Owns admin users: create, list and disable them, and check their Argon2id password hashes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete
from sqlmodel import Session, col, select

from prefcenter.admin import rules
from prefcenter.admin.errors import AdminUserExists, AdminUserNotFound, InvalidAdminUser
from prefcenter.admin.models import AdminSession, AdminUser

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


def find_user(session: Session, username: str) -> AdminUser | None:
    return session.exec(select(AdminUser).where(AdminUser.username == username)).first()


def password_matches(session: Session, user: AdminUser | None, password: str) -> bool:
    """One Argon2 verification whether or not there is a user (no match without one); a match
    against an outdated hash rehashes it at the current setting, in the caller's transaction."""
    given = password[: rules.MAX_PASSWORD_LENGTH]
    try:
        _hasher.verify(user.password_hash if user is not None else _decoy_hash(), given)
    except (VerificationError, InvalidHashError):
        return False
    if user is None:
        return False
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(given)
        session.add(user)
    return True


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
    if find_user(session, name) is not None:
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
    user = find_user(session, name) if name else None
    if user is None or user.id is None:
        raise AdminUserNotFound(f"There is no admin user {username!r}.")
    user.disabled = True
    session.add(user)
    session.execute(delete(AdminSession).where(col(AdminSession.admin_user_id) == user.id))
    session.flush()
    return _info(user)
