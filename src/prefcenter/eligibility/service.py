"""Owns answering eligibility: who may be emailed about a topic, with a reason per address.

Set-based: one query per chunk of thousands of addresses (see lookup), never one per address.
Fail safe: a database error fails the request; nothing is ever answered "allowed" because of
one. The stream (`/v1/eligibility/stream`) is in `stream`, on the same lookup.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.addresses import InvalidAddress, _fast_normalise, parse_address
from prefcenter.eligibility.lookup import StateTable, read_answers
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
    if "\ufffd" in text or "@" not in text:
        # No @-sign: no address, as email-validator would say, ~50 times slower.
        return None
    try:
        return parse_address(text).normalised
    except InvalidAddress:
        return None


def normalise(text: str) -> str | None:
    fast = _fast_normalise(text)
    return fast if fast is not None else normalise_slowly(text)


# Addresses per query of a call (lookup.read_answers): on PostgreSQL the database reads one
# chunk while the next is normalised and the previous one answered. The first is small, so
# that the database starts early; the rest in one, as the database's share grows with the
# number of chunks (measured on 5M contacts, PostgreSQL CPU per call of 10,000: 1,000 + 9,000
# within 3% of one chunk; 1,000 + 5,000 + 4,000 some 6% more; chunks of 2,000 some 15% more).
FIRST_CHUNK = 1_000
CALL_CHUNK = 10_000
_INVALID_EMAIL = (INVALID_EMAIL.allowed, INVALID_EMAIL.reason.value)


def _rendered(answer: Eligibility) -> tuple[bool, str]:
    return answer.allowed, answer.reason.value


def decide_addresses(
    session: Session, topic: TopicRef | None, emails: Sequence[str], *, keys: AuditKeys
) -> Iterator[list[tuple[bool, str]]]:
    """One answer (`allowed`, `reason` value) per text, in order, chunk by chunk (on
    PostgreSQL the database reads the next chunk while the caller uses one); duplicates each
    get the same answer. Every address is also looked up by keyed hash among
    the erased, in the same query count: an erased address is suppressed for good, even if a
    contact row came back for it."""
    if topic is None:
        yield [_rendered(UNKNOWN_TOPIC)] * len(emails)
        return
    table = StateTable(topic.model, _rendered)
    erased = _rendered(
        decide_eligibility(
            topic.model, erased=True, suppressed=False, subscription=None, bounced=False
        )
    )
    normalised: list[list[str | None]] = []

    def chunks() -> Iterator[set[str]]:
        # Lazy: each chunk is normalised while the database reads the one before.
        start, size = 0, FIRST_CHUNK
        while start < len(emails):
            chunk = [normalise(text) for text in emails[start : start + size]]
            normalised.append(chunk)
            start, size = start + size, CALL_CHUNK
            yield {address for address in chunk if address is not None}

    unknown = table.unknown
    found_chunks = read_answers(
        session.connection(), topic.id, chunks(), table, topic.reconsent, keys=keys, erased=erased
    )
    for index, found in enumerate(found_chunks):
        yield [
            _INVALID_EMAIL if address is None else found.get(address, unknown)
            for address in normalised[index]
        ]


def check_eligibility(
    session: Session, query: EligibilityIn, *, keys: AuditKeys, now: datetime
) -> bytes:
    """The answer as `EligibilityOut` JSON. Written directly (orjson) rather than through the
    model: for ten thousand results, building and serialising models costs more than the
    lookup itself. `test_router` holds the output to the model's schema. Each chunk's results
    are written as it is answered, while the database reads the next; orjson writes no
    whitespace, so the chunks' lists joined are the whole list as it would write it."""
    if len(query.emails) > MAX_ELIGIBILITY:
        raise PayloadTooLarge(
            f"At most {MAX_ELIGIBILITY:,} addresses per call, not {len(query.emails):,}; "
            "use /v1/eligibility/stream for more."
        )
    topic = find_topic_ref(session, query.topic, now=now)
    written: list[bytes] = []
    done = 0
    for answers in decide_addresses(session, topic, query.emails, keys=keys):
        texts = query.emails[done : done + len(answers)]
        done += len(answers)
        results = [
            {"email": text, "allowed": allowed, "reason": reason}
            for text, (allowed, reason) in zip(texts, answers, strict=True)
        ]
        if results:
            written.append(orjson.dumps(results)[1:-1])  # without its brackets
    return b'{"results":[' + b",".join(written) + b"]}"
