"""Owns signing in to the console, with a password or an admin API key, under the throttle of
failed sign-ins: count, check and record in one transaction, one try at a time per scope."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, delete, func, text
from sqlmodel import Session, col, select

from prefcenter.admin import rules
from prefcenter.admin.devices import Device, new_device
from prefcenter.admin.models import AdminSignInAttempt
from prefcenter.admin.rules import ThrottleScope
from prefcenter.admin.sessions import open_session
from prefcenter.admin.users import find_user, password_matches
from prefcenter.apikeys.service import find_caller
from prefcenter.audit.context import client_network

# The first key of `pg_advisory_xact_lock(int, int)` for every throttle scope ("sign"): apart
# from the migration lock, which takes the one-bigint form.
_LOCK_SPACE = 0x7369676E
# Expired failures deleted per new failure: bounds what one sign-in does after a flood.
_PRUNE_BATCH = 500


class SignInOutcome(StrEnum):
    SIGNED_IN = "signed_in"
    REFUSED = "refused"  # wrong password, unknown user, disabled user, unfit key
    THROTTLED = "throttled"  # earlier failures: not checked at all, try again after `wait`


@dataclass(frozen=True, slots=True)
class SignInResult:
    outcome: SignInOutcome
    # Only when signed in: the cookie's value, shown to the browser once, never stored.
    token: str | None = None
    # Only when signed in with a password: the device cookie to give the browser.
    device: Device | None = None
    # Only when throttled: how long until a try is checked again.
    wait: timedelta = timedelta(0)


@dataclass(frozen=True, slots=True)
class _Scope:
    """The failures one scope counts: the rows matching each value given. Only a device's
    scope counts rows with a `device_id`; a device's failures hold up nobody else."""

    kind: ThrottleScope
    username: str | None = None
    network: str | None = None
    device_id: str | None = None

    def matches(self) -> ColumnElement[bool]:
        attempt = AdminSignInAttempt
        conditions = [
            col(attempt.device_id) == self.device_id
            if self.device_id is not None
            else col(attempt.device_id).is_(None)
        ]
        if self.username is not None:
            conditions.append(col(attempt.username) == self.username)
        if self.network is not None:
            conditions.append(col(attempt.network) == self.network)
        return and_(*conditions)

    def lock_key(self) -> int:
        """A 32-bit key for the scope's advisory lock. Two scopes sharing one only wait for
        each other now and then; they never share a count."""
        parts = (self.kind.value, self.username or "", self.network or "", self.device_id or "")
        digest = hashlib.sha256("\0".join(parts).encode()).digest()
        return int.from_bytes(digest[:4], "big", signed=True)


def _scopes(*, username: str | None, network: str | None, device: Device | None) -> list[_Scope]:
    if device is not None:
        return [_Scope(ThrottleScope.DEVICE, username=device.username, device_id=device.device_id)]
    scopes = []
    if username is not None and network is not None:
        scopes.append(_Scope(ThrottleScope.CLIENT, username=username, network=network))
    if username is not None:
        scopes.append(_Scope(ThrottleScope.USERNAME, username=username))
    if network is not None:
        scopes.append(_Scope(ThrottleScope.NETWORK, network=network))
    return scopes


def _wait(session: Session, scopes: list[_Scope], now: datetime) -> timedelta:
    """How long this try must wait, with the scopes locked until the transaction ends.

    On PostgreSQL each scope's advisory lock is taken first, in one order (no deadlock between
    two tries sharing scopes), so a parallel try of the same scope counts only after this one
    has recorded its failure, or given up. SQLite's write transaction (BEGIN IMMEDIATE) already
    lets one writer in at a time.
    """
    if session.get_bind().dialect.name == "postgresql":
        for key in sorted({scope.lock_key() for scope in scopes}):
            session.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": _LOCK_SPACE, "key": key},
            )
    since = now - rules.ATTEMPT_WINDOW
    recent: dict[ThrottleScope, rules.RecentFailures] = {}
    for scope in scopes:
        count, latest_at = session.execute(
            select(func.count(), func.max(col(AdminSignInAttempt.attempted_at))).where(
                scope.matches(), col(AdminSignInAttempt.attempted_at) > since
            )
        ).one()
        recent[scope.kind] = rules.RecentFailures(count=count, latest_at=latest_at)
    return rules.sign_in_wait(recent, now)


def _record_failure(
    session: Session,
    *,
    username: str | None,
    network: str | None,
    device: Device | None,
    now: datetime,
) -> SignInResult:
    # Expired rows go as new ones arrive: no sweeper process. Rows another try is deleting
    # are skipped rather than waited for (two such waits could deadlock); SQLite has one
    # writer anyway and no FOR UPDATE to render.
    expired = (
        select(col(AdminSignInAttempt.id))
        .where(col(AdminSignInAttempt.attempted_at) <= now - rules.ATTEMPT_WINDOW)
        .limit(_PRUNE_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(delete(AdminSignInAttempt).where(col(AdminSignInAttempt.id).in_(expired)))
    session.add(
        AdminSignInAttempt(
            username=username,
            network=network,
            device_id=device.device_id if device is not None else None,
            attempted_at=now,
        )
    )
    session.flush()
    return SignInResult(SignInOutcome.REFUSED)


def _throttled(wait: timedelta) -> SignInResult:
    return SignInResult(SignInOutcome.THROTTLED, wait=wait)


def sign_in_with_password(
    session: Session,
    *,
    username: str,
    password: str,
    client_ip: str | None,
    device: Device | None,
    now: datetime,
) -> SignInResult:
    """Check the password (one Argon2 verification, whatever the username) and open a session,
    unless earlier failures make this try wait: then nothing is checked, right password or
    wrong, and nothing is recorded (waiting out a delay must not prolong it).

    `device` is what the browser's device cookie says; for this username it puts the try in
    the device's own scope, out of reach of anyone else's failures. Runs in a write
    transaction, which must commit even though sign-in failed: the failure recorded is what
    the throttle counts.
    """
    # A name that cannot exist is counted against the client network only: it is never a
    # user's, and it may hold anything (a NUL would not even be stored by PostgreSQL).
    name = rules.normalise_username(username)
    network = client_network(client_ip)
    known = device if device is not None and device.username == name else None
    wait = _wait(session, _scopes(username=name, network=network, device=known), now)
    if wait > timedelta(0):
        return _throttled(wait)
    user = find_user(session, name) if name is not None else None
    if (
        not password_matches(session, user, password)
        or user is None
        or user.disabled
        or user.id is None
    ):
        return _record_failure(session, username=name, network=network, device=known, now=now)
    if known is not None:
        # The device has shown the password again: its own earlier typos are forgiven.
        session.execute(
            delete(AdminSignInAttempt).where(
                col(AdminSignInAttempt.username) == known.username,
                col(AdminSignInAttempt.device_id) == known.device_id,
            )
        )
    token = open_session(session, actor=f"admin:{user.username}", admin_user_id=user.id, now=now)
    return SignInResult(
        SignInOutcome.SIGNED_IN, token=token, device=known or new_device(user.username)
    )


def sign_in_with_api_key(
    session: Session, *, secret: str, client_ip: str | None, now: datetime
) -> SignInResult:
    """An API key with the `admin` scope opens a session named after the key. Failures count
    against the client network only: a key names no user, and is too long to guess."""
    network = client_network(client_ip)
    wait = _wait(session, _scopes(username=None, network=network, device=None), now)
    if wait > timedelta(0):
        return _throttled(wait)
    caller = find_caller(session, secret.strip())
    if caller is None or not caller.is_admin:
        return _record_failure(session, username=None, network=network, device=None, now=now)
    token = open_session(session, actor=caller.actor, api_key_id=caller.key_id, now=now)
    return SignInResult(SignInOutcome.SIGNED_IN, token=token)
