"""Owns the console's pure decisions: when a session has ended, how long a sign-in waits after
failures, which network a client address counts under, whether a cookie must be Secure, what a
username may be, whether a form's CSRF token matches.

No database here: plain values in, plain answers out.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from prefcenter.audit import context

# A session ends after this long without a request, and after SESSION_MAX_AGE in any case.
SESSION_IDLE_TIMEOUT = timedelta(minutes=30)
SESSION_MAX_AGE = timedelta(hours=12)
# `last_seen_at` is written at most this often: a page view is otherwise read-only, and on
# SQLite every write takes the one write lock.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


class ThrottleScope(StrEnum):
    """What a failed sign-in counts against. A browser that signed in as the user before (its
    device cookie) counts only its own failures (DEVICE); any other client is held up by all
    three of the others."""

    CLIENT = "client"  # one username from one network: a guesser at the door
    DEVICE = "device"  # one username from one browser that signed in as it before
    USERNAME = "username"  # one username from every network: guessing spread over many
    NETWORK = "network"  # every username from one network: spraying one password at many


# Failures are remembered this long; the wait they cause is counted from the latest one.
ATTEMPT_WINDOW = timedelta(hours=24)
# Failures within the window that cost nothing; each one past them doubles the wait, from
# FIRST_DELAY up to MAX_DELAY. Never a lock: a right password is at most MAX_DELAY away, and
# a device that signed in before is not held up by anyone else's failures at all. A network
# gets more room than a username, since colleagues behind one office NAT share it.
FREE_FAILURES: Mapping[ThrottleScope, int] = {
    ThrottleScope.CLIENT: 5,
    ThrottleScope.DEVICE: 5,
    ThrottleScope.USERNAME: 10,
    ThrottleScope.NETWORK: 20,
}
FIRST_DELAY = timedelta(minutes=1)
MAX_DELAY = timedelta(minutes=15)
# How a client is counted: audit.context.client_network (an IPv4 address, an IPv6 /64).
MAX_NETWORK_LENGTH = context.MAX_NETWORK_LENGTH

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class SessionTimes:
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


def session_times(now: datetime) -> SessionTimes:
    return SessionTimes(created_at=now, expires_at=now + SESSION_MAX_AGE, last_seen_at=now)


def session_alive(times: SessionTimes, now: datetime) -> bool:
    """Alive until its absolute end and while it was used within the idle timeout."""
    return now < times.expires_at and now - times.last_seen_at < SESSION_IDLE_TIMEOUT


def needs_touch(last_seen_at: datetime, now: datetime) -> bool:
    return now - last_seen_at >= LAST_SEEN_RESOLUTION


@dataclass(frozen=True, slots=True)
class RecentFailures:
    """The failures within the window for one scope: how many, and the latest one's time."""

    count: int
    latest_at: datetime | None


def failure_delay(failures: int, *, free: int) -> timedelta:
    """How long after the latest failure the next try waits: nothing while `failures` is below
    `free`, FIRST_DELAY at `free`, doubling with each failure past it, never past MAX_DELAY."""
    if failures < free:
        return timedelta(0)
    doublings = failures - free
    # 2**doublings for an attacker's millions of failures would be a huge integer for nothing.
    if doublings >= math.ceil(math.log2(MAX_DELAY / FIRST_DELAY)):
        return MAX_DELAY
    return min(FIRST_DELAY * (1 << doublings), MAX_DELAY)


def sign_in_wait(recent: Mapping[ThrottleScope, RecentFailures], now: datetime) -> timedelta:
    """How long any sign-in under these scopes waits, right password or wrong (otherwise a
    guesser learns from the answer when it finally guessed right); zero when it may go ahead.
    The longest wait of any scope counts."""
    wait = timedelta(0)
    for scope, failures in recent.items():
        delay = failure_delay(failures.count, free=FREE_FAILURES[scope])
        # Below the free failures nothing waits, even when a parallel try's failure carries a
        # later time than this try's `now` (taken before it queued for the scope's lock).
        if failures.latest_at is None or not delay:
            continue
        wait = max(wait, failures.latest_at + delay - now)
    return wait


def retry_after_seconds(wait: timedelta) -> int:
    """The `Retry-After` value for a wait: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(wait.total_seconds()))


def normalise_username(text: str) -> str | None:
    """The username in its one stored form (lower case), or None when it cannot be one."""
    name = text.strip().lower()
    return name if USERNAME.fullmatch(name) else None


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in password):
        return "must not contain control characters"
    return None


def csrf_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; a missing or empty token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def cookie_secure(*, base_url: str, scheme: str, forwarded_proto: str | None) -> bool:
    """Secure whenever the browser reaches us over HTTPS: the public origin says so, the
    connection itself is TLS, or a trusted proxy says it terminated TLS (`forwarded_proto` is
    only passed in when the peer is a trusted proxy)."""
    return (
        base_url.lower().startswith("https://")
        or scheme == "https"
        or (forwarded_proto or "").split(",")[0].strip().lower() == "https"
    )
