"""Owns answering eligibility: who may be emailed about a topic, with a reason per address.

Set-based: one query per chunk of thousands of addresses (see lookup), never one per address.
Fail safe: a database error fails the request; nothing is ever answered "allowed" because of
one. The stream (`/v1/eligibility/stream`) is in `stream`, on the same lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.addresses import InvalidAddress, _fast_normalise, parse_address
from prefcenter.eligibility.lookup import StateTable, read_erased, read_states
from prefcenter.eligibility.rules import (
    INVALID_EMAIL,
    UNKNOWN_TOPIC,
    Eligibility,
    TopicModel,
    decide_eligibility,
)
from prefcenter.eligibility.schemas import MAX_ELIGIBILITY, EligibilityIn
from prefcenter.notices.reconsent import reconsent_of
from prefcenter.notices.rules import Reconsent
from prefcenter.problems import PayloadTooLarge
from prefcenter.topics.schemas import ConsentModel, TopicKind
from prefcenter.topics.service import find_topic


@dataclass(frozen=True, slots=True)
class TopicRef:
    id: int
    model: TopicModel
    # What the topic's notice asks for as the answer starts (None: nothing, or unbound).
    reconsent: Reconsent | None = None


def find_topic_ref(session: Session, key: str, *, now: datetime) -> TopicRef | None:
    """The topic, with the re-consent its notice asks for at `now` (a query only when bound)."""
    topic = find_topic(session, key)
    if topic is None or topic.id is None:
        return None
    return TopicRef(
        id=topic.id,
        model=TopicModel(kind=TopicKind(topic.kind), consent=ConsentModel(topic.consent)),
        reconsent=reconsent_of(session, topic.notice_key, now=now),
    )


def normalise_slowly(text: str) -> str | None:
    """The normalised address of a text the fast path could not vouch for, or None when the
    text is none. U+FFFD is what undecodable bytes became: no mailbox, though email-validator
    admits it."""
    if "\ufffd" in text:
        return None
    try:
        return parse_address(text).normalised
    except InvalidAddress:
        return None


def normalise(text: str) -> str | None:
    fast = _fast_normalise(text)
    return fast if fast is not None else normalise_slowly(text)


def decide_addresses(
    session: Session, topic: TopicRef | None, emails: Sequence[str], *, keys: AuditKeys
) -> list[Eligibility]:
    """One answer per text, in order; duplicates each get the same answer. Every address is
    also looked up by keyed hash among the erased, in the same query count: an erased address
    is suppressed for good, even if a contact row came back for it."""
    if topic is None:
        return [UNKNOWN_TOPIC] * len(emails)
    normalised = [normalise(text) for text in emails]
    wanted = {n for n in normalised if n is not None}
    table = StateTable(topic.model, lambda answer: answer)
    connection = session.connection()
    found = read_states(connection, topic.id, wanted, table, topic.reconsent)
    erased = read_erased(connection, keys, wanted)
    erased_answer = decide_eligibility(
        topic.model, erased=True, suppressed=False, subscription=None, bounced=False
    )
    answers: list[Eligibility] = []
    for address in normalised:
        if address is None:
            answers.append(INVALID_EMAIL)
        elif address in erased:
            answers.append(erased_answer)
        else:
            answers.append(found.get(address, table.unknown))
    return answers


def check_eligibility(
    session: Session, query: EligibilityIn, *, keys: AuditKeys, now: datetime
) -> bytes:
    """The answer as `EligibilityOut` JSON. Written directly (orjson) rather than through the
    model: for ten thousand results, building and serialising models costs more than the
    lookup itself. `test_router` holds the output to the model's schema."""
    if len(query.emails) > MAX_ELIGIBILITY:
        raise PayloadTooLarge(
            f"At most {MAX_ELIGIBILITY:,} addresses per call, not {len(query.emails):,}; "
            "use /v1/eligibility/stream for more."
        )
    answers = decide_addresses(
        session, find_topic_ref(session, query.topic, now=now), query.emails, keys=keys
    )
    rendered = {answer: (answer.allowed, answer.reason.value) for answer in set(answers)}
    results = []
    for text, answer in zip(query.emails, answers, strict=True):
        allowed, reason = rendered[answer]
        results.append({"email": text, "allowed": allowed, "reason": reason})
    return orjson.dumps({"results": results})
