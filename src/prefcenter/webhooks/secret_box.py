"""Owns how endpoint secrets are kept: encrypted (AES-256-GCM) with a key derived from the
audit key, so that a copy of the database alone cannot sign deliveries. The service itself
must read them back to sign, so whoever holds the database and the audit key holds them."""

from __future__ import annotations

import base64
import secrets
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from prefcenter.settings import Settings

# HKDF `info` label: never change it, the stored secrets depend on it.
_INFO = b"prefcenter webhook secrets v1"
_VERSION = "v1:"
_NONCE_BYTES = 12


class SecretUnreadable(Exception):
    """A stored secret that this audit key cannot open (another key, or tampered with)."""


@lru_cache(maxsize=8)
def _cipher(audit_secret: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(audit_secret)
    return AESGCM(key)


def seal(settings: Settings, secret: str, *, endpoint: str) -> str:
    """The secret as stored; bound to its endpoint, so it cannot be copied to another."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = _cipher(settings.audit_secret).encrypt(nonce, secret.encode(), endpoint.encode())
    return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")


def open_sealed(settings: Settings, stored: str, *, endpoint: str) -> str:
    if not stored.startswith(_VERSION):
        raise SecretUnreadable("unknown format")
    raw = base64.b64decode(stored[len(_VERSION) :])
    try:
        plain = _cipher(settings.audit_secret).decrypt(
            raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], endpoint.encode()
        )
    except InvalidTag:
        raise SecretUnreadable("not sealed with this audit key") from None
    return plain.decode()
