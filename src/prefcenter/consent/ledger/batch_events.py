"""Owns the audit events of a batch of API changes (consent.ledger.batch): each made ready for
the chain in a few µs. They are the events `changes.change_event` makes and
`audit.prepared.prepare_event` prepares, byte for byte (tests/consent/test_ledger_batch_events.py
holds them to it), made straight from the decided change (no `NewEvent` in between), with the
contact's address hash given, and an evidence document that an earlier change of the batch
already had not encoded and digested again.

Not from a template as an import's events are (ledger.bulk_events): a batch's events share
only their actor, and splicing the eight values that differ costs more than encoding the
event whole."""

from __future__ import annotations

from typing import Any

from prefcenter.audit.canonical import encode_document, event_parts, format_time
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent
from prefcenter.audit.schemas import EventKind
from prefcenter.consent.ledger.changes import ChangeRecord, event_context
from prefcenter.consent.rules import Decision, Outcome, RequestedChange


class BatchEvents:
    """The events of one batch's changes, all by one actor (the caller)."""

    def __init__(self, keys: AuditKeys, *, actor: str) -> None:
        self._keys = keys
        self._actor = actor
        # Documents made so far, by their context's items when every value is text and the
        # evidence is empty (the usual case: a sync's changes carry only the request's context).
        self._documents: dict[tuple[tuple[str, Any], ...], tuple[bytes, str]] = {}

    def event(
        self,
        *,
        event_id: str,
        contact_id: str,
        address_hash: str,
        topic_key: str | None,
        requested: RequestedChange,
        record: ChangeRecord,
        decision: Decision,
    ) -> PreparedEvent:
        """The event of one decided change (`change_event`'s, prepared); `address_hash`: the
        keyed hash of the contact's normalised address."""
        if record.actor != self._actor:
            raise ValueError("a batch's events are all by its actor")
        kind = (
            EventKind.CONSENT_CHANGE if topic_key is not None else EventKind.GLOBAL_CONSENT_CHANGE
        ).value
        document, digest = self._document(event_context(requested, record, decision), record)
        occurred_at = decision.occurred_at
        occurred_text = format_time(occurred_at)
        from_status = decision.from_status.value if decision.from_status else None
        to_status = (
            requested.status.value
            if decision.outcome is Outcome.SUPERSEDED
            else decision.status.value
        )
        outcome = decision.outcome.value
        keys = self._keys
        row: dict[str, Any] = {
            "id": event_id,
            "kind": kind,
            "occurred_at": occurred_text,
            "contact_id": contact_id,
            "topic": topic_key,
            "from_status": from_status,
            "to_status": to_status,
            "outcome": outcome,
            "actor": self._actor,
            "source": record.source,
            "campaign_id_digest": keys.free_text_digest("campaign_id", record.campaign_id),
            "reason_digest": keys.free_text_digest("reason", record.reason),
            "address_hash": address_hash,
            "evidence_digest": digest,
        }
        parts = event_parts(row)
        row["occurred_at"] = occurred_at
        free_text = (record.campaign_id, record.reason)
        return PreparedEvent(
            row=row,
            parts=parts,
            document=document,
            free_text=None if free_text == (None, None) else free_text,
            occurred_text=occurred_text,
        )

    def _document(self, context: dict[str, Any], record: ChangeRecord) -> tuple[bytes, str]:
        """The evidence document (`encode_document`'s) and its keyed digest."""
        key: tuple[tuple[str, Any], ...] | None = None
        if not record.evidence and all(type(v) is str for v in context.values()):
            key = tuple(context.items())
            known = self._documents.get(key)
            if known is not None:
                return known
        document = encode_document(context, record.evidence)
        assert document is not None  # the context holds the actor's kind
        made = (document, self._keys.evidence_digest(document))
        if key is not None:
            self._documents[key] = made
        return made
