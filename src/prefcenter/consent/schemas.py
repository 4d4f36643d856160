"""What goes in and out of `/v1/consents`, `/v1/contacts/lookup` and `/v1/contacts/{id}`
(read, erase, correct)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core.core_schema import CoreSchema
from typing_extensions import TypeAliasType

from prefcenter.audit.schemas import CampaignId, ScopedAuditEventOut
from prefcenter.bounces.schemas import BounceOut
from prefcenter.consent.rules import Outcome, Status
from prefcenter.contacts.addresses import EmailAddress
from prefcenter.mail.schemas import MailLanguage
from prefcenter.notices.schemas import NoticeRef
from prefcenter.timestamps import Rfc3339DateTime
from prefcenter.topics.schemas import TopicKey

MAX_LOOKUP = 1000
MAX_EVIDENCE_KEYS = 100
MAX_EVIDENCE_BYTES = 16 * 1024
MAX_EVIDENCE_DEPTH = 32
MAX_EXACT_INTEGER = 2**53 - 1

SourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
PrintableText = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]


class _EveryKeyMatches:
    """pydantic documents a dict with a key pattern as `patternProperties`, which leaves keys
    that do not match unconstrained; document instead that every key must match."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        ((pattern, values),) = json_schema.pop("patternProperties").items()
        return {
            **json_schema,
            "propertyNames": {"pattern": pattern},
            "additionalProperties": values,
        }


# What evidence may hold, for the OpenAPI document: JSON without NUL in any text (PostgreSQL
# `jsonb` cannot store it). Validation is `_check_evidence_value`, which names the field.
EvidenceText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
# Integers a double holds exactly: the audit trail writes evidence as RFC 8785 JSON.
EvidenceInteger = Annotated[int, Field(ge=-MAX_EXACT_INTEGER, le=MAX_EXACT_INTEGER)]
EvidenceValue = TypeAliasType(
    "EvidenceValue",
    "EvidenceText | EvidenceInteger | float | bool | list[EvidenceValue] "
    "| Annotated[dict[EvidenceText, EvidenceValue], _EveryKeyMatches] | None",
)
EvidenceDocument = Annotated[dict[EvidenceText, EvidenceValue], _EveryKeyMatches]


def _as_given(value: Any) -> Any:
    """Checks nothing: it lets `json_schema_input_type` document evidence exactly, while
    `_evidence_fits` does the checking and names `evidence` in its errors."""
    return value


class RequestedStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class ConsentChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    topic: TopicKey | None = Field(
        default=None, description="Omitted: the change applies to all marketing."
    )
    status: RequestedStatus
    occurred_at: Rfc3339DateTime | None = Field(
        default=None,
        description="When the person made the change (RFC 3339 with an offset); defaults to "
        "now, and a time in the future counts as now.",
    )
    source: SourceName = "api"
    campaign_id: CampaignId | None = None
    evidence: Annotated[
        dict[str, Any], BeforeValidator(_as_given, json_schema_input_type=EvidenceDocument)
    ] = Field(
        default_factory=dict,
        max_length=MAX_EVIDENCE_KEYS,
        description="Free-form proof: form text version, IP, ticket number… At most "
        f"{MAX_EVIDENCE_BYTES} bytes as JSON, nested at most {MAX_EVIDENCE_DEPTH} levels.",
        json_schema_extra={"maxProperties": MAX_EVIDENCE_KEYS},
    )
    reason: Annotated[PrintableText, StringConstraints(max_length=2000)] | None = Field(
        default=None,
        description="Why (admin keys): required to reverse a person's own opt-out.",
    )
    language: MailLanguage | None = Field(
        default=None,
        description="The language of the mail the service sends about this change (the "
        "double-opt-in confirmation, when it sends mail itself); defaults to en.",
    )
    notice: NoticeRef | None = Field(
        default=None,
        description="The notice version the person saw, `<key>@<version>`: published, and in "
        "force at `occurred_at` or about to be. Recorded with the change.",
    )

    @field_validator("evidence")
    @classmethod
    def _evidence_fits(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_evidence_value(value, depth=1)
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_EVIDENCE_BYTES:
            raise ValueError(f"must be at most {MAX_EVIDENCE_BYTES} bytes as JSON")
        return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_evidence_value(value: Any, *, depth: int) -> None:
    """Refuse what one of the engines cannot store or the history cannot render back: NUL in
    text (PostgreSQL `jsonb`), lone surrogates (not UTF-8), NaN/Infinity (not JSON), integers
    a double cannot hold (RFC 8785), nesting deeper than a serialiser allows."""
    if isinstance(value, dict | list) and depth > MAX_EVIDENCE_DEPTH:
        raise ValueError(f"must be nested at most {MAX_EVIDENCE_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        # JSON may escape half of a UTF-16 pair alone ("\ud800"): not text, no engine stores it.
        if not value.isascii() and _LONE_SURROGATE.search(value):
            raise ValueError("must not contain lone surrogates (\\ud800-\\udfff)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must not contain NaN or Infinity")
    elif isinstance(value, int) and not -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
        # The audit trail stores evidence as RFC 8785 JSON, whose numbers are doubles.
        raise ValueError(
            f"integers must be within ±{MAX_EXACT_INTEGER} (send larger ones as strings)"
        )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_evidence_value(key, depth=depth)
            _check_evidence_value(item, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_evidence_value(item, depth=depth + 1)


class ConsentChangeOut(BaseModel):
    contact_id: str
    email: str
    topic: str | None
    status: Status
    changed: bool
    outcome: Outcome
    event_id: str
    confirm_url: str | None = Field(
        default=None,
        description="Only while a double opt-in subscription is pending, and only when the "
        "service sends no mail itself: the link to mail to the person; it makes the "
        "subscription `subscribed` and expires. With mail on, the service mails it.",
    )


class LookupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[EmailAddress] = Field(min_length=1, max_length=MAX_LOOKUP)


class SubscriptionOut(BaseModel):
    topic: str
    status: Status
    since: datetime
    # Subscribed under a version of the topic's notice that a material version has replaced:
    # eligibility answers `reconsent_required` until the person consents again.
    reconsent_required: bool = False


class ContactLookup(BaseModel):
    email: str
    contact_id: str | None
    suppressed: bool
    subscriptions: list[SubscriptionOut]
    bounced: bool = Field(
        default=False, description="The address hard-bounced: no mail of any kind is sent to it."
    )


class LookupOut(BaseModel):
    contacts: list[ContactLookup]


class SuppressionOut(BaseModel):
    suppressed: bool
    since: datetime
    source: str
    by_recipient: bool


class ContactOut(BaseModel):
    contact_id: str
    email: str | None
    created_at: datetime
    erased_at: datetime | None
    suppressed: bool
    suppression: SuppressionOut | None
    subscriptions: list[SubscriptionOut]
    events: list[ScopedAuditEventOut] = Field(
        description="The contact's whole history, oldest first; `evidence` and `context` only "
        "for a key that also has `audit:read`."
    )
    bounce: BounceOut | None = Field(
        default=None, description="What the ESPs reported (null: no bounce ever)."
    )


class ErasureOut(BaseModel):
    contact_id: str
    erased_at: datetime
    event_id: str = Field(description="The erasure's audit event; the same on every repeat.")


class AddressCorrectionIn(BaseModel):
    """A support-desk correction of a contact's address (admin keys)."""

    model_config = ConfigDict(extra="forbid")

    address: EmailAddress
    reason: Annotated[PrintableText, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Why, for the trail: for example the ticket in which the person asked."
    )

    @field_validator("reason")
    @classmethod
    def _reason_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say why")
        return value


class AddressCorrectionOut(BaseModel):
    contact_id: str
    email: str = Field(description="The new address, as given.")
    changed: bool
    event_id: str | None = Field(description="The correction's audit event; null if unchanged.")


class ReceiptSignature(BaseModel):
    algorithm: str = Field(description="`Ed25519`.")
    canonicalization: str = Field(
        description="`RFC 8785`: the signature is over the JSON Canonicalization Scheme bytes "
        "of `receipt`."
    )
    key_id: str = Field(description="First 16 hex digits of SHA-256 of the raw public key.")
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, base64.")
    value: str = Field(description="The 64-byte signature, base64.")


class SignedReceipt(BaseModel):
    receipt: dict[str, Any] = Field(
        description="Kantara Consent Receipt v1.1 fields (ISO/IEC TS 27560), times in RFC 3339."
    )
    signature: ReceiptSignature
