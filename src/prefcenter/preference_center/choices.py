"""The preference center's use cases: what the page shows (marketing topics, and apart from
them the sharing topics) and saving the person's choices. The token is the only credential."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlmodel import Session, col, select

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.ledger.state import subscription_state
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.opt_out_markers import all_marker, topic_marker
from prefcenter.consent.rules import ActorKind, RequestedChange, Status, needs_mailbox_proof
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import mask_address
from prefcenter.mail.config import MailConfig
from prefcenter.mail.schemas import MailLanguage
from prefcenter.notices.reconsent import reconsent_by_notice
from prefcenter.notices.schemas import NoticeKind, NoticeVersionOut
from prefcenter.notices.service import find_notice, in_force, in_force_of_kind
from prefcenter.preference_center.resubscribe import queue_resubscribe_mail
from prefcenter.preference_center.schemas import (
    NoticeAsking,
    PolicyInForce,
    PreferencesView,
    TopicChoice,
)
from prefcenter.preference_center.service import (
    Channel,
    recipient_change,
    recipient_record,
    token_contact,
)
from prefcenter.tokens import VerifiedToken
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind


@dataclass(frozen=True, slots=True)
class ResubscribeByMail:
    """How the preference center asks the mailbox before turning back on what the person
    refused: the service's mail, the audit keys (the throttle counts by keyed hash) and the
    language of the page."""

    mail: MailConfig
    keys: AuditKeys
    language: MailLanguage

    def queue(
        self,
        session: Session,
        contact: Contact,
        topic_key: str | None,
        marker: str,
        request: RequestContext,
        now: datetime,
    ) -> bool:
        return queue_resubscribe_mail(
            session,
            self.mail,
            self.keys,
            contact=contact,
            topic_key=topic_key,
            marker=marker,
            client_ip=request.client_ip,
            language=self.language,
            now=now,
        )


def _topics_of_kind(session: Session, kind: TopicKind) -> list[Topic]:
    return list(session.exec(select(Topic).where(Topic.kind == kind).order_by(col(Topic.name))))


def _is_on(topic: Topic, subscription: Subscription | None) -> bool:
    """What the checkbox shows: opt-in topics are on once subscribed (or pending), opt-out
    topics until unsubscribed."""
    if subscription is None:
        return topic.consent == ConsentModel.OPT_OUT
    return subscription.status != Status.UNSUBSCRIBED


def _subscriptions(session: Session, contact: Contact) -> dict[int, Subscription]:
    return {
        s.topic_id: s
        for s in session.exec(select(Subscription).where(Subscription.contact_id == contact.id))
    }


def _choice(
    topic: Topic,
    subscription: Subscription | None,
    *,
    on: bool,
    asking: dict[int, NoticeAsking],
) -> TopicChoice:
    reconsent = asking.get(_id(topic))
    return TopicChoice(
        key=topic.key,
        name=topic.name,
        description=topic.description,
        # A subscription to give again shows off: nothing is sent until the box is ticked.
        on=on and reconsent is None,
        pending=subscription is not None and subscription.status == Status.PENDING,
        third_party=topic.third_party,
        reconsent=reconsent,
    )


def _asking(
    session: Session, topics: list[Topic], subscriptions: dict[int, Subscription], now: datetime
) -> dict[int, NoticeAsking]:
    """The topics (by id) whose subscription a material notice version asks to be given
    again now, with the notice as the page names it (queries only for bound topics)."""
    rules = reconsent_by_notice(
        session, {t.notice_key for t in topics if t.notice_key is not None}, now=now
    )
    asking: dict[int, NoticeAsking] = {}
    named: dict[str, NoticeAsking] = {}
    for topic in topics:
        rule = rules.get(topic.notice_key or "")
        subscription = subscriptions.get(_id(topic))
        if rule is None or subscription is None or subscription.status != Status.SUBSCRIBED:
            continue
        if not rule.required(subscription.notice_version_id, subscription.occurred_at):
            continue
        key = topic.notice_key
        assert key is not None
        if key not in named:
            version = in_force(session, key, at=now)
            named[key] = NoticeAsking(
                name=find_notice(session, key).name, version=version.version, url=version.url
            )
        asking[_id(topic)] = named[key]
    return asking


def _policy_in_force(session: Session, now: datetime) -> NoticeVersionOut | None:
    return in_force_of_kind(session, NoticeKind.PRIVACY_POLICY, at=now)


def _view(
    session: Session,
    contact: Contact,
    pending_topics: list[str],
    refused_topics: list[str] | None = None,
    *,
    policy: NoticeVersionOut | None,
    now: datetime,
    confirm_all_by_mail: bool = False,
) -> PreferencesView:
    assert contact.id is not None
    assert contact.address is not None
    subscriptions = _subscriptions(session, contact)
    suppression = session.get(Suppression, contact.id)
    suppressed = bool(suppression and suppression.suppressed)
    marketing = _topics_of_kind(session, TopicKind.MARKETING)
    shared = _topics_of_kind(session, TopicKind.SHARING)
    asking = _asking(session, marketing + shared, subscriptions, now)
    choices = []
    for topic in marketing:
        subscription = subscriptions.get(_id(topic))
        # Opted out of everything: nothing is sent, so no box may say otherwise.
        on = not suppressed and _is_on(topic, subscription)
        choices.append(_choice(topic, subscription, on=on, asking=asking))
    sharing = []
    for topic in shared:
        subscription = subscriptions.get(_id(topic))
        # Not mail: an opt-out from all marketing neither hides nor turns off a sharing box.
        on = _is_on(topic, subscription)
        sharing.append(_choice(topic, subscription, on=on, asking=asking))
    return PreferencesView(
        masked_address=mask_address(contact.address),
        suppressed=suppressed,
        topics=choices,
        sharing=sharing,
        pending_topics=pending_topics,
        refused_topics=refused_topics or [],
        confirm_all_by_mail=confirm_all_by_mail,
        privacy_policy=None
        if policy is None
        else PolicyInForce(
            version=policy.version, effective_at=policy.effective_at, url=policy.url
        ),
    )


def preferences_view(
    session: Session, verified: VerifiedToken, *, now: datetime
) -> PreferencesView:
    contact = token_contact(session, verified, lock=False)
    return _view(session, contact, [], policy=_policy_in_force(session, now), now=now)


@dataclass(slots=True)
class _Saving:
    """One save of the page: who, with what proof, and what it left pending or refused."""

    contact: Contact
    subscriptions: dict[int, Subscription]
    record: ChangeRecord
    request: RequestContext
    now: datetime
    by_mail: ResubscribeByMail | None
    pending: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # Topics whose subscription is to be given again (their box showed off).
    asking: dict[int, NoticeAsking] = field(default_factory=dict)


def save_preferences(
    session: Session,
    verified: VerifiedToken,
    *,
    chosen: set[str],
    shown: set[str],
    unsubscribe_all: bool,
    request: RequestContext,
    now: datetime,
    by_mail: ResubscribeByMail | None = None,
) -> PreferencesView:
    """Apply what the person chose on the page: only topics that were shown and whose box
    differs from the current state change. Turning a topic off, or on where the person never
    opted out themselves, takes effect at once (a double opt-in topic goes to `pending`).
    Reversing the person's own opt-out, or lifting "unsubscribe from all", is not done from a
    link: whoever holds the link could do it (see rules.needs_mailbox_proof). With `by_mail`
    (the service sends mail), a mail to the address carries the link that does it
    (preference_center.resubscribe); without, those topics are left as they were and named on
    the page, with how to reach the support desk.

    Sharing topics follow the same rule, apart from marketing: "unsubscribe from all" is about
    mail and neither grants nor withdraws a sharing consent. Pressed with a sharing box
    unticked, it still withdraws that one (a withdrawal is never held back); a box ticked
    waits for "save"."""
    marketing = {t.key: t for t in _topics_of_kind(session, TopicKind.MARKETING)}
    sharing = {t.key: t for t in _topics_of_kind(session, TopicKind.SHARING)}
    contact = token_contact(session, verified, lock=True)
    assert contact.id is not None
    # The privacy policy in force as the person saves: the trail names it, as POST /v1/consents
    # does the version a client names (`<key>@<version>`).
    policy = _policy_in_force(session, now)
    record = recipient_record(verified, Channel.PREFERENCE_CENTER, request)
    if policy is not None:
        record = replace(
            record, context={**record.context, "notice": f"{policy.notice}@{policy.version}"}
        )
    subscriptions = _subscriptions(session, contact)
    saving = _Saving(
        contact=contact,
        subscriptions=subscriptions,
        record=record,
        request=request,
        now=now,
        by_mail=by_mail,
        asking=_asking(session, [*marketing.values(), *sharing.values()], subscriptions, now),
    )
    shown_sharing = shown & set(sharing)
    wanted_sharing = chosen & shown_sharing
    if unsubscribe_all:
        # Only withdrawals: a box that was off stays off, ticked or not.
        wanted_sharing = {key for key in wanted_sharing if _shown_on(saving, sharing[key])}
    _apply_choices(session, saving, sharing, shown_sharing, wanted_sharing)
    if unsubscribe_all:
        apply_change(
            session,
            contact=contact,
            topic=None,
            requested=recipient_change(Status.UNSUBSCRIBED, Channel.PREFERENCE_CENTER, now),
            record=saving.record,
            now=now,
        )
        return _view(session, contact, saving.pending, saving.refused, policy=policy, now=now)
    wanted = {key for key in chosen if key in marketing and key in shown}
    suppression = session.get(Suppression, contact.id)
    if suppression is not None and suppression.suppressed:
        # Every box showed off. Ticking any asks to lift the opt-out from all marketing: that
        # needs the mailbox's proof, so nothing changes now (saving the page as it was chose
        # nothing at all).
        if wanted and by_mail is not None:
            sent = by_mail.queue(session, contact, None, all_marker(suppression), request, now)
            return _view(
                session,
                contact,
                saving.pending,
                saving.refused,
                policy=policy,
                now=now,
                confirm_all_by_mail=sent,
            )
        refused = saving.refused + [marketing[key].name for key in sorted(wanted)]
        return _view(session, contact, saving.pending, refused, policy=policy, now=now)
    _apply_choices(session, saving, marketing, shown & set(marketing), wanted)
    return _view(session, contact, saving.pending, saving.refused, policy=policy, now=now)


def _id(topic: Topic) -> int:
    assert topic.id is not None
    return topic.id


def _shown_on(saving: _Saving, topic: Topic) -> bool:
    """What the topic's box showed (a subscription to give again showed off)."""
    on = _is_on(topic, saving.subscriptions.get(_id(topic)))
    return on and _id(topic) not in saving.asking


def _apply_choices(
    session: Session,
    saving: _Saving,
    topics: dict[str, Topic],
    shown: set[str],
    wanted: set[str],
) -> None:
    """Change each shown topic whose box differs from what it showed; turning one back on that
    the person turned off themselves waits for the mailbox (pending) or is refused. Ticking a
    subscription that asked to be given again gives it again, under the version in force: the
    person never opted out of it, so nothing waits."""
    for key in sorted(shown):
        topic = topics[key]
        subscription = saving.subscriptions.get(_id(topic))
        want_on = key in wanted
        if want_on == _shown_on(saving, topic):
            continue
        if want_on and needs_mailbox_proof(subscription_state(subscription)):
            assert subscription is not None  # an opt-out is a row
            marker = topic_marker(subscription)
            if saving.by_mail is not None and saving.by_mail.queue(
                session, saving.contact, topic.key, marker, saving.request, saving.now
            ):
                saving.pending.append(topic.name)
            else:
                saving.refused.append(topic.name)
            continue
        status = Status.SUBSCRIBED if want_on else Status.UNSUBSCRIBED
        requested = RequestedChange(
            status=status,
            occurred_at=saving.now,
            actor=ActorKind.RECIPIENT,
            source=Channel.PREFERENCE_CENTER.value,
            # Ticking a box proves the click, not who owns the mailbox: a double opt-in topic
            # still needs the confirmation link that the mail tool sends.
            double_opt_in=topic.double_opt_in,
        )
        applied = apply_change(
            session,
            contact=saving.contact,
            topic=topic,
            requested=requested,
            record=saving.record,
            now=saving.now,
        )
        if applied.decision.status is Status.PENDING:
            saving.pending.append(topic.name)
