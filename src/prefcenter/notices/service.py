"""Use cases of notices: define a notice, publish an immutable version (its audit event, its
webhook and, for a material one, its notification run, in the caller's transaction), say
which version was in force at a time, and check the version a consent names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import format_time
from prefcenter.audit.schemas import EventKind, NewEvent, new_event_id
from prefcenter.audit.service import append_event
from prefcenter.notices.errors import (
    NoticeNotFound,
    NoticePeriodTooShort,
    NoticeVersionExists,
    NoticeVersionNotFound,
    NoticeVersionSuperseded,
    NoVersionInForce,
    TextDigestMismatch,
    UnknownNoticeVersion,
)
from prefcenter.notices.models import Notice, NoticeVersion
from prefcenter.notices.notification import notification_counts, queue_notice_mails
from prefcenter.notices.rules import earliest_effective_at, needs_reason, split_ref, superseded_at
from prefcenter.notices.schemas import (
    NoticeIn,
    NoticeKind,
    NoticeOut,
    NoticePut,
    NoticeVersionIn,
    NoticeVersionOut,
    NotificationOut,
    RunDelivery,
)
from prefcenter.notices.team_run import queue_recipients, team_counts
from prefcenter.settings import Settings
from prefcenter.webhooks.queue import queue_notice_published


@dataclass(frozen=True, slots=True)
class Actor:
    """Who publishes, as the trail names them, and through what (api, console, cli)."""

    name: str
    channel: str


@dataclass(frozen=True, slots=True)
class Published:
    version: NoticeVersionOut
    queued: int  # notice mails of its run (0 unless material)


def _notice_out(notice: Notice) -> NoticeOut:
    return NoticeOut(
        key=notice.key,
        name=notice.name,
        kind=NoticeKind(notice.kind),
        created_at=notice.created_at,
        updated_at=notice.updated_at,
    )


def version_out(notice: Notice, row: NoticeVersion) -> NoticeVersionOut:
    return NoticeVersionOut(
        notice=notice.key,
        version=row.version,
        language=row.language,
        url=row.url,
        text=row.text,
        sha256=row.sha256,
        effective_at=row.effective_at,
        material=row.material,
        summary=row.summary,
        reason=row.reason,
        published_at=row.published_at,
        event_id=row.event_id,
        delivery=RunDelivery(row.delivery),
    )


def find_notice(session: Session, key: str, *, lock: bool = False) -> Notice:
    query = select(Notice).where(col(Notice.key) == key)
    if lock:
        query = query.with_for_update()
    notice = session.exec(query).first()
    if notice is None:
        raise NoticeNotFound(f"There is no notice {key!r}; create it with PUT /v1/notices/{{key}}.")
    return notice


def put_notice(session: Session, key: str, spec: NoticeIn, *, now: datetime) -> NoticePut:
    notice = session.exec(select(Notice).where(col(Notice.key) == key)).first()
    created = notice is None
    if notice is None:
        notice = Notice(
            key=key, name=spec.name, kind=spec.kind.value, created_at=now, updated_at=now
        )
    elif (notice.name, notice.kind) != (spec.name, spec.kind.value):
        notice.name, notice.kind, notice.updated_at = spec.name, spec.kind.value, now
    session.add(notice)
    session.flush()
    return NoticePut(notice=_notice_out(notice), created=created)


def list_notices(session: Session) -> list[NoticeOut]:
    return [_notice_out(n) for n in session.exec(select(Notice).order_by(col(Notice.key)))]


def list_versions(session: Session, key: str) -> list[NoticeVersionOut]:
    notice = find_notice(session, key)
    rows = session.exec(
        select(NoticeVersion)
        .where(col(NoticeVersion.notice_id) == notice.id)
        .order_by(col(NoticeVersion.effective_at).desc(), col(NoticeVersion.id).desc())
    )
    return [version_out(notice, row) for row in rows]


def publish_version(
    session: Session,
    key: str,
    spec: NoticeVersionIn,
    *,
    actor: Actor,
    settings: Settings,
    now: datetime,
) -> Published:
    """Publish a version: refused when its label exists (versions are immutable) or when it
    takes effect sooner than the notice period without a reason. A material version's mails
    are queued here, in the same transaction: published means announced."""
    digest = spec.text_digest()
    if digest is not None:
        raise TextDigestMismatch(
            f"sha256 is not the SHA-256 of the text (UTF-8), which is {digest}.",
            errors=[{"field": "sha256", "detail": f"the text's is {digest}"}],
        )
    notice = find_notice(session, key, lock=True)  # one publisher of a notice at a time
    assert notice.id is not None
    exists = session.exec(
        select(NoticeVersion.id).where(
            col(NoticeVersion.notice_id) == notice.id, col(NoticeVersion.version) == spec.version
        )
    ).first()
    if exists is not None:
        raise NoticeVersionExists(
            f"Version {spec.version!r} of {key!r} is published already; versions never change: "
            "publish the new text under a new version label."
        )
    period = settings.notice_period_days
    if spec.reason is None and needs_reason(
        spec.effective_at, published_at=now, period_days=period
    ):
        earliest = format_time(earliest_effective_at(now, period_days=period))
        raise NoticePeriodTooShort(
            f"A version must be published {period} days before it takes effect: the earliest "
            f"effective_at now is {earliest}. Give a reason to publish it sooner.",
            earliest_effective_at=earliest,
            errors=[{"field": "effective_at", "detail": f"earlier than {earliest}"}],
        )
    event_id = new_event_id()
    row = NoticeVersion(
        notice_id=notice.id,
        version=spec.version,
        language=spec.language,
        url=spec.url,
        text=spec.text,
        sha256=spec.sha256,
        effective_at=spec.effective_at,
        material=spec.material,
        summary=spec.summary,
        reason=spec.reason,
        published_at=now,
        published_by=actor.name[:200],
        event_id=event_id,
        delivery=spec.delivery.value,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    ref = f"{notice.key}@{row.version}"
    facts = {
        "notice": ref,
        "kind": notice.kind,
        "language": row.language,
        "sha256": row.sha256,
        "effective_at": format_time(row.effective_at),
        "material": row.material,
        "url": row.url,
        "delivery": row.delivery,
    }
    queued = 0
    if row.material and spec.delivery is not RunDelivery.SERVICE:
        queued = queue_recipients(
            session,
            ref=ref,
            version_id=row.id,
            event_id=event_id,
            webhooks=spec.delivery is RunDelivery.WEBHOOKS,
            now=now,
        )
    elif row.material:
        queued = queue_notice_mails(
            session,
            ref=ref,
            version_id=row.id,
            language=row.language,
            event_id=event_id,
            settings=settings,
            now=now,
        )
    append_event(
        session,
        NewEvent(
            id=event_id,
            kind=EventKind.NOTICE_PUBLISHED,
            occurred_at=now,
            actor=actor.name,
            source=actor.channel,
            outcome="published",
            reason=row.reason,
            evidence={k: v for k, v in facts.items() if v is not None},
            context={"summary": row.summary, "notice_mails_queued": queued},
        ),
    )
    queue_notice_published(
        session, data={**facts, "summary": row.summary, "published_at": format_time(now)}, now=now
    )
    return Published(version=version_out(notice, row), queued=queued)


def in_force(session: Session, key: str, *, at: datetime) -> NoticeVersionOut:
    """The version in force at `at`: the newest effective at or before it (one query)."""
    found = session.exec(
        select(Notice, NoticeVersion)
        .join(NoticeVersion, col(NoticeVersion.notice_id) == col(Notice.id), isouter=True)
        .where(
            col(Notice.key) == key,
            or_(col(NoticeVersion.id).is_(None), col(NoticeVersion.effective_at) <= at),
        )
        .order_by(col(NoticeVersion.effective_at).desc(), col(NoticeVersion.id).desc())
        .limit(1)
    ).first()
    if found is None:
        # Either no such notice or none in force: tell which.
        find_notice(session, key)
        raise NoVersionInForce(f"No version of {key!r} was in force at {format_time(at)}.")
    notice, row = found
    if row is None:
        raise NoVersionInForce(f"No version of {key!r} was in force at {format_time(at)}.")
    return version_out(notice, row)


def find_version(session: Session, key: str, version: str) -> tuple[Notice, NoticeVersion]:
    notice = find_notice(session, key)
    row = session.exec(
        select(NoticeVersion).where(
            col(NoticeVersion.notice_id) == notice.id, col(NoticeVersion.version) == version
        )
    ).first()
    if row is None:
        raise NoticeVersionNotFound(f"Notice {key!r} has no version {version!r}.")
    return notice, row


def notification(session: Session, key: str, version: str) -> NotificationOut:
    _, row = find_version(session, key, version)
    if row.delivery != RunDelivery.SERVICE.value:
        assert row.id is not None
        return team_counts(session, version_id=row.id)
    return notification_counts(session, event_id=row.event_id)


class NoticeChecks:
    """Checks the versions consents name (`<key>@<version>`): published, and in force at the
    change's `occurred_at` or about to be. A version is read once (a batch names few)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        # ref → when the next version took (or takes) effect; None: none after it.
        self._next: dict[str, datetime | None] = {}

    def check(self, ref: str, *, occurred_at: datetime) -> str:
        """The reference as stored, or a problem (UnknownNoticeVersion, NoticeVersionSuperseded)."""
        if ref not in self._next:
            self._next[ref] = _next_effective_at(self._session, ref)
        later = self._next[ref]
        if superseded_at(occurred_at, next_effective_at=later):
            assert later is not None
            raise NoticeVersionSuperseded(
                f"Notice version {ref!r} had been replaced by then (at {format_time(later)}).",
                errors=[
                    {"field": "notice", "detail": "replaced by a newer version by occurred_at"}
                ],
            )
        return ref


def check_consent_notice(session: Session, ref: str, *, occurred_at: datetime) -> str:
    return NoticeChecks(session).check(ref, occurred_at=occurred_at)


def _next_effective_at(session: Session, ref: str) -> datetime | None:
    key, label = split_ref(ref)
    found = session.exec(
        select(NoticeVersion)
        .join(Notice, col(Notice.id) == col(NoticeVersion.notice_id))
        .where(col(Notice.key) == key, col(NoticeVersion.version) == label)
    ).first()
    if found is None:
        raise UnknownNoticeVersion(
            f"There is no published notice version {ref!r}.",
            errors=[{"field": "notice", "detail": "not a published notice version"}],
        )
    return session.exec(
        select(NoticeVersion.effective_at)
        .where(
            col(NoticeVersion.notice_id) == found.notice_id,
            or_(
                col(NoticeVersion.effective_at) > found.effective_at,
                (col(NoticeVersion.effective_at) == found.effective_at)
                & (col(NoticeVersion.id) > found.id),
            ),
        )
        .order_by(col(NoticeVersion.effective_at))
        .limit(1)
    ).first()


def in_force_of_kind(
    session: Session, kind: NoticeKind, *, at: datetime
) -> NoticeVersionOut | None:
    """The version in force at `at` among the notices of a kind (the newest effective at or
    before it, whichever notice it belongs to), or None: the recipient pages name it."""
    found = session.exec(
        select(Notice, NoticeVersion)
        .join(NoticeVersion, col(NoticeVersion.notice_id) == col(Notice.id))
        .where(col(Notice.kind) == kind.value, col(NoticeVersion.effective_at) <= at)
        .order_by(col(NoticeVersion.effective_at).desc(), col(NoticeVersion.id).desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    notice, row = found
    return version_out(notice, row)
