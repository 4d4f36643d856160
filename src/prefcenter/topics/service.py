"""Use cases for topics: create or update one (audited), list them, find one by key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.notices.models import Notice
from prefcenter.topics.errors import TopicModelChange, TopicNotFound, UnknownNotice
from prefcenter.topics.models import Topic
from prefcenter.topics.rules import check_topic_spec
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind, TopicOut, TopicPut


def topic_out(topic: Topic) -> TopicOut:
    return TopicOut(
        key=topic.key,
        name=topic.name,
        description=topic.description,
        kind=TopicKind(topic.kind),
        consent=ConsentModel(topic.consent),
        double_opt_in=topic.double_opt_in,
        third_party=topic.third_party,
        notice=topic.notice_key,
        created_at=topic.created_at,
        updated_at=topic.updated_at,
    )


# Built once: every recipient's click looks its topic up.
_BY_KEY = select(Topic).where(col(Topic.key) == bindparam("key"))


def find_topic(session: Session, key: str) -> Topic | None:
    return session.exec(_BY_KEY, params={"key": key}).first()


def require_topic(session: Session, key: str) -> Topic:
    """The topic with this key; an unknown one is a 404 problem."""
    topic = find_topic(session, key)
    if topic is None:
        raise TopicNotFound(f"There is no topic {key!r}.")
    return topic


def get_topic(session: Session, key: str) -> TopicOut:
    return topic_out(require_topic(session, key))


def list_topics(session: Session) -> list[TopicOut]:
    return [topic_out(t) for t in session.exec(select(Topic).order_by(col(Topic.key)))]


def put_topic(
    session: Session, key: str, spec: TopicIn, *, caller: Caller, now: datetime
) -> TopicPut:
    """Create the topic, or update its name, description and double opt-in.

    Kind and consent model are fixed once created: turning an `opt_in` topic into `opt_out`
    would make every known address mailable at once. Create a new topic instead. So is a
    sharing topic's third party: the people who agreed to share with one party did not agree
    to share with another.
    """
    check_topic_spec(spec)
    _check_notice(session, spec.notice)
    topic = find_topic(session, key)
    created = topic is None
    if topic is None:
        topic = Topic(
            key=key,
            name=spec.name,
            description=spec.description,
            kind=spec.kind.value,
            consent=spec.consent.value,
            double_opt_in=spec.double_opt_in,
            third_party=spec.third_party,
            notice_key=spec.notice,
            created_at=now,
            updated_at=now,
        )
    else:
        if topic.kind != spec.kind.value or topic.consent != spec.consent.value:
            raise TopicModelChange(
                f"Topic {key!r} is {topic.kind}/{topic.consent}; its kind and consent model "
                "cannot change (that would change who may be emailed for every contact). "
                "Create a new topic instead."
            )
        if topic.third_party != spec.third_party:
            raise TopicModelChange(
                f"Topic {key!r} shares with {topic.third_party!r}; its third party cannot "
                "change (the people who agreed to that party did not agree to another). "
                "Create a new sharing topic instead."
            )
        unchanged = (
            topic.name == spec.name
            and topic.description == spec.description
            and topic.double_opt_in == spec.double_opt_in
            and topic.notice_key == spec.notice
        )
        if unchanged:
            return TopicPut(topic=topic_out(topic), created=False)
        topic.name = spec.name
        topic.description = spec.description
        topic.double_opt_in = spec.double_opt_in
        # Binding (or rebinding) changes no subscription: one given while the topic was bound
        # elsewhere or unbound counts as given under the version in force at its time
        # (notices.rules.Reconsent).
        topic.notice_key = spec.notice
        topic.updated_at = now
    session.add(topic)
    session.flush()
    append_event(
        session,
        NewEvent(
            kind=EventKind.TOPIC_CHANGE,
            occurred_at=now,
            actor=caller.actor,
            source="api",
            outcome="applied",
            topic=key,
            evidence={},
            context={"created": created, "topic": spec.model_dump(mode="json")},
        ),
    )
    return TopicPut(topic=topic_out(topic), created=created)


def _check_notice(session: Session, key: str | None) -> None:
    if key is None:
        return
    if session.exec(select(Notice.id).where(col(Notice.key) == key)).first() is None:
        raise UnknownNotice(
            f"There is no notice {key!r} to bind the topic to; create it with "
            "PUT /v1/notices/{key} first.",
            errors=[{"field": "notice", "detail": "not a notice"}],
        )
