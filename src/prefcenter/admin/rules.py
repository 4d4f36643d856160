"""Owns the console's pure decisions: when a session has ended, when sign-in is throttled,
whether a cookie must be Secure, what a username may be, whether a form's CSRF token matches.

No database here: plain values in, plain answers out.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

# A session ends after this long without a request, and after SESSION_MAX_AGE in any case.
SESSION_IDLE_TIMEOUT = timedelta(minutes=30)
SESSION_MAX_AGE = timedelta(hours=12)
# `last_seen_at` is written at most this often: a page view is otherwise read-only, and on
# SQLite every write takes the one write lock.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)

# Failed sign-ins counted over a sliding window. Per username: a password guesser is stopped
# after a handful of tries. Per client address: one address trying many usernames is stopped
# too, with more room, since colleagues behind one office NAT share an address.
ATTEMPT_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_ADDRESS = 20

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
    for_username: int
    for_address: int


def sign_in_throttled(failures: RecentFailures) -> bool:
    """Refuse any sign-in, right or wrong, once either count is reached: otherwise a guesser
    learns from the answer when it finally guessed right."""
    return (
        failures.for_username >= MAX_FAILURES_PER_USERNAME
        or failures.for_address >= MAX_FAILURES_PER_ADDRESS
    )


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
