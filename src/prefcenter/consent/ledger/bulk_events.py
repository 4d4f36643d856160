"""Owns the audit events of a bulk write (an import): many changes of one topic by one actor
from one source, each made ready for the chain in a few µs. They are the events
`changes.change_event` makes and `audit.prepared.prepare_event` prepares, byte for byte
(tests/consent/test_ledger_bulk_events.py holds them to it): the canonical bytes are spliced
into a template that `event_parts` encoded once, and the evidence document is written as
`encode_document` writes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from prefcenter.audit.canonical import (
    encode_document,
    format_time,
    is_plain_document,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import EVENT_INSERT_COLUMNS, PartsTemplate, PreparedEvent
from prefcenter.audit.schemas import EventKind
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.rules import ActorKind, Decision, Outcome, RequestedChange

# What differs from one event of the batch to the next, in the template's order.
_VARYING = (
    "id",
    "occurred_at",
    "contact_id",
    "from_status",
    "to_status",
    "outcome",
    "address_hash",
    "evidence_digest",
)


# The largest integer RFC 8785 writes exactly (a double's): a line number stands where it is.
_LINE_MARK = 2**53 - 1


class BulkEvents:
    """The events of changes to `topic_key` recorded as `record` says (its evidence is each
    event's, with the event's own additions; no campaign id, reason or confirmation link), by
    an actor of kind `actor_kind`."""

    def __init__(
        self, keys: AuditKeys, *, topic_key: str, record: ChangeRecord, actor_kind: ActorKind
    ) -> None:
        if (
            record.campaign_id is not None
            or record.reason is not None
            or record.confirm_link_to is not None
        ):
            raise ValueError("bulk events carry no free text and no confirmation link")
        self._digest = keys.hmac_sha256
        self._context = {"actor_kind": actor_kind.value, **record.context}
        self._evidence = record.evidence
        # Plain when its fixed part is: each event adds only integers of a line number's size
        # and strings (encode_document's own test).
        self._plain = is_plain_document({"context": self._context, "evidence": self._evidence})
        self._line_template = self._template_of_a_line() if self._plain else None
        fixed: dict[str, Any] = {
            "kind": EventKind.CONSENT_CHANGE.value,
            "topic": topic_key,
            "actor": record.actor,
            "source": record.source,
            "campaign_id_digest": None,
            "reason_digest": None,
        }
        self._fixed_row = fixed
        self._template = PartsTemplate(fixed, _VARYING)
        self._last_time: tuple[datetime, str] | None = None

    def document(
        self, added: dict[str, Any], *, claimed: datetime | None = None
    ) -> tuple[bytes, str]:
        """The evidence document of an event whose evidence adds `added` to the record's, and
        its keyed digest; `claimed`: the time a clamped change claimed. Depends on nothing
        decided, so an import makes it before the batch's state is read."""
        template = self._line_template
        if template is not None and claimed is None and len(added) == 1:
            line = added.get("line")
            if type(line) is int and -_LINE_MARK <= line <= _LINE_MARK:
                lined = template % line
                return lined, self._digest(lined).hex()
        context = self._context
        if claimed is not None:
            context = {**context, "claimed_occurred_at": claimed.isoformat()}
        evidence = {**self._evidence, **added}
        document = (
            orjson.dumps({"context": context, "evidence": evidence}, option=orjson.OPT_SORT_KEYS)
            if self._plain and is_plain_document(added)
            else encode_document(context, evidence)
        )
        assert document is not None  # the context holds the actor's kind
        return document, self._digest(document).hex()

    def _template_of_a_line(self) -> bytes | None:
        """The document of an event that adds only its line (an import's, mostly) as a `%d`
        format: the sorted keys put the line where a marker number stands, and an integer
        is written as its digits. None when the marker's digits are found elsewhere too, or
        the record's evidence has a line of its own."""
        if "line" in self._evidence:
            return None
        marked = orjson.dumps(
            {"context": self._context, "evidence": {**self._evidence, "line": _LINE_MARK}},
            option=orjson.OPT_SORT_KEYS,
        )
        digits = b"%d" % _LINE_MARK
        if marked.count(digits) != 1:
            return None
        return marked.replace(b"%", b"%%").replace(digits, b"%d")

    def event(
        self,
        *,
        event_id: str,
        contact_id: str,
        address_hash: str,
        requested: RequestedChange,
        decision: Decision,
        added: dict[str, Any],
        document: tuple[bytes, str] | None = None,
    ) -> PreparedEvent:
        """The event of one decided change; `added`: what its evidence adds to the record's;
        `document`: `self.document(added)` if already made (not used for a clamped change,
        whose document also holds the time it claimed)."""
        if decision.clamped:
            document = self.document(added, claimed=requested.occurred_at)
        elif document is None:
            document = self.document(added)
        document_bytes, digest = document
        occurred_at = decision.occurred_at
        if self._last_time is None or self._last_time[0] != occurred_at:
            self._last_time = (occurred_at, format_time(occurred_at))
        occurred_text = self._last_time[1]
        from_status = decision.from_status.value if decision.from_status else None
        to_status = (
            requested.status.value
            if decision.outcome is Outcome.SUPERSEDED
            else decision.status.value
        )
        outcome = decision.outcome.value
        parts = self._template.parts(
            (
                event_id,
                occurred_text,
                contact_id,
                from_status,
                to_status,
                outcome,
                address_hash,
                digest,
            )
        )
        row = {
            **self._fixed_row,
            "id": event_id,
            "occurred_at": occurred_at,
            "contact_id": contact_id,
            "from_status": from_status,
            "to_status": to_status,
            "outcome": outcome,
            "address_hash": address_hash,
            "evidence_digest": digest,
        }
        return PreparedEvent(
            row=row,
            parts=parts,
            document=document_bytes,
            free_text=None,
            occurred_text=occurred_text,
        )


assert set(_VARYING) | {
    "kind",
    "topic",
    "actor",
    "source",
    "campaign_id_digest",
    "reason_digest",
} == set(EVENT_INSERT_COLUMNS)
