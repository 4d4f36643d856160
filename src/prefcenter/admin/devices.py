"""Owns the device cookie's content: that this browser signed in as a user before, as
`<kid>:<device id>:<issued>:<username>:<tag>`, HMAC-SHA256 under a key derived from the
signing key ring for this purpose alone.

Pure code: no database, no clock of its own. What the cookie earns is decided in `sign_in`: a
sign-in from a known device counts only that device's own failures, so nobody else's guessing
holds up the user on a browser they have used before. It proves a past sign-in, never a
password: the password is still checked every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from prefcenter.admin.rules import USERNAME
from prefcenter.settings import SigningKey

# HKDF `info`: a key of its own, so that no link token (signed with the ring's keys as they
# are) can ever pass for a device cookie, nor the other way round.
_KEY_INFO = b"prefcenter admin device cookie v1"
# Browsers keep a cookie at most 400 days; the server stops believing one after this, however
# long the browser kept it. Each sign-in from the device issues it afresh.
DEVICE_MAX_AGE = timedelta(days=365)
# Hosts' clocks may differ a little; a cookie from further in the future was not ours.
_CLOCK_SKEW = timedelta(minutes=5)
MAX_COOKIE_LENGTH = 200
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_ISSUED = re.compile(r"[0-9]{1,11}")


@dataclass(frozen=True, slots=True)
class Device:
    """A browser that signed in as `username` before; `device_id` is random, per browser."""

    username: str
    device_id: str


def new_device(username: str) -> Device:
    return Device(username=username, device_id=secrets.token_urlsafe(16))


@lru_cache(maxsize=16)
def _device_key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)


def _tag(key: SigningKey, signed_part: str) -> str:
    digest = hmac.new(_device_key(key.secret), signed_part.encode("ascii"), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def device_cookie(ring: tuple[SigningKey, ...], device: Device, *, now: datetime) -> str:
    """The cookie's value, signed with the first key of the ring."""
    key = ring[0]
    signed_part = f"{key.kid}:{device.device_id}:{int(now.timestamp())}:{device.username}"
    return f"{signed_part}:{_tag(key, signed_part)}"


def read_device_cookie(
    ring: tuple[SigningKey, ...], value: str | None, *, now: datetime
) -> Device | None:
    """The device a cookie stands for, or None if it is missing, malformed, signed with a key
    no longer in the ring, tampered with, or too old. The tag is checked (in constant time)
    before anything else of the cookie is believed."""
    if not value or len(value) > MAX_COOKIE_LENGTH or not value.isascii():
        return None
    parts = value.split(":")
    if len(parts) != 5:
        return None
    kid, device_id, issued, username, tag = parts
    key = next((k for k in ring if hmac.compare_digest(k.kid, kid)), None)
    if key is None:
        return None
    if not hmac.compare_digest(tag, _tag(key, ":".join(parts[:4]))):
        return None
    if not (
        _DEVICE_ID.fullmatch(device_id)
        and _ISSUED.fullmatch(issued)
        and USERNAME.fullmatch(username)
    ):
        return None
    issued_at = datetime.fromtimestamp(int(issued), UTC)
    if not now - DEVICE_MAX_AGE < issued_at <= now + _CLOCK_SKEW:
        return None
    return Device(username=username, device_id=device_id)
