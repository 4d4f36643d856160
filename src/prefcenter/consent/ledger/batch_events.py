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
from prefcenter.consent.rules import Decision, Outcome, RequestedChange, Status

_TOPIC_KIND = EventKind.CONSENT_CHANGE.value
_GLOBAL_KIND = EventKind.GLOBAL_CONSENT_CHANGE.value


class BatchEvents:
    """The events of one batch's changes, all by one actor (the caller)."""

    def __init__(self, keys: AuditKeys, *, actor: str) -> None:
        self._keys = keys
        self._actor = actor
        # Documents made so far, by their context's items when every value is text and the
        # evidence is empty (the usual case: a sync's changes carry only the request's context).
        self._documents: dict[tuple[tuple[str, Any], ...], tuple[bytes, str]] = {}
        # The same, by what makes the context from a record's (`event_context`) when that is
        # all there is to it: the record's context (kept here, so that its id stays its own),
        # the actor's kind, and who was handed the link. A batch's records share the request's
        # context, so most events find their document without making their context.
        self._by_record: dict[tuple[int, str, str | None], tuple[Any, bytes, str]] = {}

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
        document, digest = self._document(requested, record, decision)
        occurred_at = decision.occurred_at
        occurred_text = format_time(occurred_at)
        from_status = decision.from_status
        outcome = decision.outcome
        keys = self._keys
        campaign_id, reason = record.campaign_id, record.reason
        row: dict[str, Any] = {
            "id": event_id,
            "kind": _TOPIC_KIND if topic_key is not None else _GLOBAL_KIND,
            "occurred_at": occurred_text,
            "contact_id": contact_id,
            "topic": topic_key,
            "from_status": from_status.value if from_status else None,
            "to_status": (
                requested.status if outcome is Outcome.SUPERSEDED else decision.status
            ).value,
            "outcome": outcome.value,
            "actor": self._actor,
            "source": record.source,
            "campaign_id_digest": None
            if campaign_id is None
            else keys.free_text_digest("campaign_id", campaign_id),
            "reason_digest": None if reason is None else keys.free_text_digest("reason", reason),
            "address_hash": address_hash,
            "evidence_digest": digest,
        }
        parts = event_parts(row)
        row["occurred_at"] = occurred_at
        return PreparedEvent(
            row=row,
            parts=parts,
            document=document,
            free_text=None if campaign_id is None and reason is None else (campaign_id, reason),
            occurred_text=occurred_text,
        )

    def _document(
        self, requested: RequestedChange, record: ChangeRecord, decision: Decision
    ) -> tuple[bytes, str]:
        """The evidence document (`encode_document`'s of `event_context`) and its keyed
        digest."""
        by_record: tuple[int, str, str | None] | None = None
        if not record.evidence and not decision.clamped:
            # What `event_context` adds to the record's context, but for a clamped time.
            link = (
                record.confirm_link_to
                if decision.outcome is Outcome.APPLIED and decision.status is Status.PENDING
                else None
            )
            by_record = (id(record.context), requested.actor.value, link)
            found = self._by_record.get(by_record)
            if found is not None:
                return found[1], found[2]
        context = event_context(requested, record, decision)
        key: tuple[tuple[str, Any], ...] | None = None
        made: tuple[bytes, str] | None = None
        if not record.evidence and all(type(v) is str for v in context.values()):
            key = tuple(context.items())
            made = self._documents.get(key)
        if made is None:
            document = encode_document(context, record.evidence)
            assert document is not None  # the context holds the actor's kind
            made = (document, self._keys.evidence_digest(document))
            if key is not None:
                self._documents[key] = made
        if by_record is not None:
            self._by_record[by_record] = (record.context, *made)
        return made
