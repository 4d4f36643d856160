"""Owns signed checkpoints of the chain: an Ed25519-signed statement of (seq, hash, time) that
an operator keeps elsewhere, and the check that the chain still holds it.

A checkpoint is what makes a rewritten or truncated tail detectable: whoever can write to the
database can recompute every hash after an edit, but cannot sign a statement with the audit
key, and cannot change the copies kept outside it.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text

from prefcenter.audit.canonical import format_time
from prefcenter.audit.key_check import key_matches_trail, wrong_key_detail
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.verify import Progress, StateReplay, VerifyResult, verify_chain
from prefcenter.db import Database

CHECKPOINT_VERSION = 1
_SIGNED_FIELDS = ("v", "seq", "hash", "time", "key_id", "public_key")


class CheckpointInvalid(Exception):
    """The file is not a checkpoint signed by this service's audit key."""


def make_checkpoint(database: Database, keys: AuditKeys, *, now: datetime) -> dict[str, Any]:
    """The head of the chain, signed: `signature` is Ed25519 over the RFC 8785 bytes of every
    other field."""
    with database.transaction(write=False) as session:
        seq, hash_hex = session.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    statement: dict[str, Any] = {
        "v": CHECKPOINT_VERSION,
        "seq": seq,
        "hash": hash_hex,
        "time": format_time(now),
        "key_id": keys.key_id,
        "public_key": keys.public_key_b64,
    }
    signature = keys.sign(rfc8785.dumps(statement))
    return {**statement, "signature": base64.b64encode(signature).decode("ascii")}


def check_signature(checkpoint: dict[str, Any], keys: AuditKeys) -> tuple[int, str]:
    """(seq, hash) of a checkpoint signed by this service's audit key; raises otherwise."""
    if not isinstance(checkpoint, dict) or set(checkpoint) != {*_SIGNED_FIELDS, "signature"}:
        raise CheckpointInvalid("not a checkpoint: expected the fields of `audit checkpoint`")
    statement = {name: checkpoint[name] for name in _SIGNED_FIELDS}
    seq, hash_hex = statement["seq"], statement["hash"]
    if not isinstance(seq, int) or seq < 0 or not isinstance(hash_hex, str):
        raise CheckpointInvalid("not a checkpoint: bad seq or hash")
    # The key in the file is only a hint: a forger would put their own there.
    if statement["public_key"] != keys.public_key_b64:
        raise CheckpointInvalid(
            f"signed by key {statement['key_id']!r}, not this service's audit key {keys.key_id!r}"
        )
    try:
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
        public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(keys.public_key_b64))
        public_key.verify(signature, rfc8785.dumps(statement))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise CheckpointInvalid("the checkpoint's signature does not verify") from exc
    return seq, hash_hex


def verify_with_checkpoint(
    database: Database,
    keys: AuditKeys,
    checkpoint: dict[str, Any],
    *,
    replay: StateReplay | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Verify the chain, then that the event at the checkpoint's seq still has its hash.

    A chain recomputed after a rewrite verifies on its own; against the checkpoint it fails at
    the checkpoint's seq (which events changed before it no hash can tell). A truncated chain
    fails at the first missing seq.
    """
    with database.transaction(write=False) as session:
        if key_matches_trail(session, keys) is False:
            # Said before the checkpoint's signature is refused: the key is what is wrong.
            return VerifyResult(ok=False, checked=0, detail=wrong_key_detail(keys))
    seq, hash_hex = check_signature(checkpoint, keys)
    result = verify_chain(database, keys, replay=replay, progress=progress)
    if not result.ok:
        return result
    if seq == 0:
        return result
    with database.transaction(write=False) as session:
        stored = session.execute(
            text("SELECT hash FROM audit_event WHERE seq = :seq"), {"seq": seq}
        ).scalar()
    if stored is None:
        return VerifyResult(
            ok=False,
            checked=result.checked,
            first_bad_seq=result.checked + 1,
            detail=f"the checkpoint names seq {seq} but the chain ends at {result.checked}: "
            "its tail was deleted",
        )
    if stored != hash_hex:
        return VerifyResult(
            ok=False,
            checked=result.checked,
            first_bad_seq=seq,
            detail=f"the event at seq {seq} no longer has the checkpoint's hash: the chain "
            "was rewritten at or before it",
        )
    return result
