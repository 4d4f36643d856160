"""Owns the secrets' side of the configuration: the signing key ring's syntax and strength, and
the key files generated once beside a SQLite database (settings.Settings reads them)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("prefcenter.settings")

# Of a signing key's secret, as given (its UTF-8 bytes): 256 bits, the size of the HMAC-SHA256
# key it becomes. Shorter text is most likely a password, not random data; a forged link
# unsubscribes anybody.
MIN_SECRET_BYTES = 32
# The audit key keys the hash that stands for an address in the chain and derives the
# Ed25519 key that signs checkpoints and receipts: 256 bits.
MIN_AUDIT_KEY_BYTES = 32


class ConfigError(Exception):
    """The configuration cannot run the service; the message says what to set."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes


def parse_signing_keys(value: str) -> tuple[SigningKey, ...]:
    """Parse `kid:secret[,kid:secret…]`; the first key signs, all verify.

    An empty, duplicate or short (< MIN_SECRET_BYTES) entry is refused, one kept only to verify
    old links too: a weak key would make every unsubscribe link forgeable.
    """
    keys: list[SigningKey] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not kid or not secret:
            raise ConfigError(f"PREFCENTER_SIGNING_KEYS entry {kid or '?'!r} is not kid:secret")
        if not kid.isalnum() or len(kid) > 16:
            raise ConfigError(f"signing key id {kid!r} must be 1-16 letters or digits")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"signing key {kid!r} is too short: use at least {MIN_SECRET_BYTES} bytes "
                "of random data, e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if any(k.kid == kid for k in keys):
            raise ConfigError(f"signing key id {kid!r} appears twice")
        keys.append(SigningKey(kid=kid, secret=secret.encode()))
    return tuple(keys)


def local_signing_key(db_path: Path) -> str:
    """Read, or create once, the signing key file beside a SQLite database."""
    return _local_secret(
        db_path.with_name(db_path.name + ".signing-keys"),
        lambda: f"local{secrets.token_hex(2)}:{secrets.token_urlsafe(32)}",
        "PREFCENTER_SIGNING_KEYS is not set: generated a signing key in %s. Back it up with "
        "the database; links issued with it stop working if it is lost.",
    )


def local_audit_key(db_path: Path) -> str:
    """Read, or create once, the audit key file beside a SQLite database."""
    return _local_secret(
        db_path.with_name(db_path.name + ".audit-key"),
        lambda: secrets.token_urlsafe(48),
        "PREFCENTER_AUDIT_KEY is not set: generated the audit key in %s. Back it up with the "
        "database; without it an erased address can no longer be recognised.",
    )


def _local_secret(key_path: Path, make_value: Callable[[], str], warning: str) -> str:
    """Read, or create once (atomically, mode 0600), a secret file beside a SQLite database."""
    try:
        return key_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    key_path.parent.mkdir(parents=True, exist_ok=True)
    value = make_value()
    # Write a private temp file, then hard-link it into place: link() fails if another worker
    # won the race, and no reader ever sees a half-written key.
    tmp_path = key_path.with_name(f"{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp_path, key_path)
    except FileExistsError:
        return key_path.read_text(encoding="utf-8").strip()
    finally:
        tmp_path.unlink()
    logger.warning(warning, key_path)
    return value
