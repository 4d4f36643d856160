"""Owns telling a wrong audit key from a tampered trail: the keyed digests of the first events
that have any (evidence documents, free text) are checked under the configured key.

A trail written under another key fails on every keyed digest; an edit fails on the events it
touched. So if not one of the first few digests checks, the key is wrong, and verification says
that instead of naming the first event with a digest as edited.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session

from prefcenter.audit.canonical import FREE_TEXT_DIGESTS, FREE_TEXT_FIELDS
from prefcenter.audit.keys import AuditKeys

# How many documents and how many free texts are looked at: enough that an edit of a few
# events is not taken for a wrong key, few enough to cost nothing before a full verification.
SAMPLE = 32
WRONG_KEY = (
    "the audit key does not match the one that wrote this trail (none of its first keyed "
    "digests checks under key {key_id}): set PREFCENTER_AUDIT_KEY, or put back the .audit-key "
    "file, that belongs with this database; the audit key cannot be rotated"
)

_EVIDENCE = text(
    "SELECT d.document, e.evidence_digest FROM audit_evidence d "  # noqa: S608
    f"JOIN audit_event e ON e.seq = d.seq ORDER BY d.seq LIMIT {SAMPLE}"
)
_FREE_TEXT = text(
    f"SELECT {', '.join(f'f.{name}' for name in FREE_TEXT_FIELDS)}, "  # noqa: S608 - constants
    f"{', '.join(f'e.{name}' for name in FREE_TEXT_DIGESTS)} FROM audit_free_text f "
    f"JOIN audit_event e ON e.seq = f.seq ORDER BY f.seq LIMIT {SAMPLE}"
)


def key_matches_trail(session: Session, keys: AuditKeys) -> bool | None:
    """True when at least one of the first keyed digests of the trail checks under `keys`,
    False when none does, None when the trail holds none yet (nothing to tell by: an empty
    trail, or only events without evidence or free text)."""
    sampled = False
    for document, digest in session.execute(_EVIDENCE):
        sampled = True
        if digest is not None and keys.evidence_digest(bytes(document)) == digest:
            return True
    width = len(FREE_TEXT_FIELDS)
    for row in session.execute(_FREE_TEXT):
        texts, digests = row[:width], row[width:]
        sampled = True
        expected = [
            keys.free_text_digest(name, value)
            for name, value in zip(FREE_TEXT_FIELDS, texts, strict=True)
        ]
        if any(d is not None and d == e for d, e in zip(digests, expected, strict=True)):
            return True
    return False if sampled else None


def wrong_key_detail(keys: AuditKeys) -> str:
    return WRONG_KEY.format(key_id=keys.key_id)
