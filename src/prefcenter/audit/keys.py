"""Owns the keys derived from the audit key: the HMAC key that stands in for addresses and
evidence in the chain, one HMAC key per free-text field (a reason, a campaign id) that stands
in for its text, and the Ed25519 key that signs checkpoints and consent receipts."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Request

from prefcenter.audit.canonical import FREE_TEXT_FIELDS
from prefcenter.settings import Settings

# HKDF `info` labels: one secret, independent keys for independent uses. Never change them:
# the address hashes already stored and the published public key depend on them.
_HMAC_INFO = b"prefcenter audit hmac v1"
_SIGNING_INFO = b"prefcenter audit ed25519 v1"
# One key per free-text field (the label ends in the field's name): a digest of a reason is not
# the address hash of the same text, nor the digest of a campaign id that reads the same.
_FREE_TEXT_INFO = b"prefcenter audit free text v1 "


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id_of(public_key_b64: str) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


class KeyedHash:
    """HMAC-SHA256 (RFC 2104) under one 32-byte key, its two padded key blocks hashed once,
    here: each keyed hash then costs two SHA-256 of the message's size, some three times less
    than `hmac.digest`, which pads and hashes the key again every time (once per event written
    and verified)."""

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # HKDF gives 32 bytes: no pre-hash needed
        # The padded key blocks hashed, to be copied, never updated: a loop that runs a
        # million times (verification) inlines `__call__` with them.
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, message: bytes) -> bytes:
        """`hmac.digest(key, message, "sha256")`, faster."""
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest


@dataclass(frozen=True, slots=True)
class AuditKeys:
    hmac_key: bytes
    signing_key: Ed25519PrivateKey
    public_key_b64: str
    key_id: str
    # (field name, key) for each of FREE_TEXT_FIELDS.
    free_text_keys: tuple[tuple[str, bytes], ...]
    hmac_sha256: KeyedHash = field(init=False, repr=False, compare=False)
    _free_text: dict[str, KeyedHash] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hmac_sha256", KeyedHash(self.hmac_key))
        free_text = {name: KeyedHash(key) for name, key in self.free_text_keys}
        object.__setattr__(self, "_free_text", free_text)

    @staticmethod
    def from_settings(settings: Settings) -> AuditKeys:
        return _keys_for(settings.audit_secret)

    def address_hash(self, normalised_address: str) -> str:
        """The keyed hash that stands for an address in the chain and after erasure."""
        return self.hmac_sha256(normalised_address.encode("utf-8")).hex()

    def address_hashes(self, normalised_addresses: Iterable[str]) -> dict[str, str]:
        """Each address by its `address_hash`, `KeyedHash.__call__` inlined: some 30% faster
        over the ten thousands of addresses an eligibility call looks up among the erased."""
        inner, outer = self.hmac_sha256.inner, self.hmac_sha256.outer
        by_hash = {}
        for address in normalised_addresses:
            hashed = inner.copy()
            hashed.update(address.encode("utf-8"))
            keyed = outer.copy()
            keyed.update(hashed.digest())
            by_hash[keyed.hexdigest()] = address
        return by_hash

    def evidence_digest(self, document: bytes) -> str:
        return self.hmac_sha256(document).hex()

    def free_text_digest(self, name: str, text: str | None) -> str | None:
        """The keyed hash that stands for a free-text field (FREE_TEXT_FIELDS) in the chain,
        over its exact UTF-8 text; None when there is no text. Keyed, not a plain hash: a
        campaign id or a short reason is easily guessed, and a plain hash would confirm it to
        anyone reading the trail."""
        if text is None:
            return None
        return self._free_text[name](text.encode("utf-8")).hex()

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()


@lru_cache(maxsize=8)
def _keys_for(secret: bytes) -> AuditKeys:
    signing_key = Ed25519PrivateKey.from_private_bytes(_derive(secret, _SIGNING_INFO))
    public = public_key_b64(signing_key.public_key())
    return AuditKeys(
        hmac_key=_derive(secret, _HMAC_INFO),
        signing_key=signing_key,
        public_key_b64=public,
        key_id=key_id_of(public),
        free_text_keys=tuple(
            (name, _derive(secret, _FREE_TEXT_INFO + name.encode("ascii")))
            for name in FREE_TEXT_FIELDS
        ),
    )


def audit_keys_of(request: Request) -> AuditKeys:
    """The running app's audit keys, derived once at start."""
    keys: AuditKeys = request.app.state.audit_keys
    return keys
