"""The reason table of `decide_eligibility`, without a database: every reason, both topic kinds,
both consent models."""

from __future__ import annotations

import pytest

from prefcenter.consent.rules import Status
from prefcenter.eligibility.rules import Eligibility, Reason, TopicModel, decide_eligibility
from prefcenter.topics.schemas import ConsentModel, TopicKind

OPT_IN = TopicModel(kind=TopicKind.MARKETING, consent=ConsentModel.OPT_IN)
OPT_OUT = TopicModel(kind=TopicKind.MARKETING, consent=ConsentModel.OPT_OUT)
TRANSACTIONAL_IN = TopicModel(kind=TopicKind.TRANSACTIONAL, consent=ConsentModel.OPT_IN)
TRANSACTIONAL_OUT = TopicModel(kind=TopicKind.TRANSACTIONAL, consent=ConsentModel.OPT_OUT)
MARKETING = (OPT_IN, OPT_OUT)
TRANSACTIONAL = (TRANSACTIONAL_IN, TRANSACTIONAL_OUT)
EVERY_TOPIC = MARKETING + TRANSACTIONAL
SUBSCRIPTIONS = (None, Status.SUBSCRIBED, Status.UNSUBSCRIBED, Status.PENDING)


def decide(
    topic: TopicModel,
    *,
    erased: bool = False,
    suppressed: bool = False,
    subscription: Status | None = None,
    bounced: bool = False,
) -> Eligibility:
    return decide_eligibility(
        topic, erased=erased, suppressed=suppressed, subscription=subscription, bounced=bounced
    )


@pytest.mark.parametrize("topic", MARKETING)
def test_subscribed_is_allowed(topic: TopicModel) -> None:
    assert decide(topic, subscription=Status.SUBSCRIBED) == Eligibility(
        allowed=True, reason=Reason.SUBSCRIBED
    )


def test_opt_out_topic_allows_who_said_nothing() -> None:
    assert decide(OPT_OUT) == Eligibility(allowed=True, reason=Reason.OPT_OUT_DEFAULT)


def test_opt_in_topic_refuses_who_said_nothing() -> None:
    assert decide(OPT_IN) == Eligibility(allowed=False, reason=Reason.NOT_SUBSCRIBED)


@pytest.mark.parametrize("topic", TRANSACTIONAL)
@pytest.mark.parametrize("subscription", SUBSCRIPTIONS)
@pytest.mark.parametrize("suppressed", [False, True])
def test_transactional_ignores_marketing_opt_outs(
    topic: TopicModel, subscription: Status | None, suppressed: bool
) -> None:
    answer = decide(topic, suppressed=suppressed, subscription=subscription)
    assert answer == Eligibility(allowed=True, reason=Reason.TRANSACTIONAL)


@pytest.mark.parametrize("topic", MARKETING)
def test_unsubscribed_is_refused(topic: TopicModel) -> None:
    answer = decide(topic, subscription=Status.UNSUBSCRIBED)
    assert answer == Eligibility(allowed=False, reason=Reason.UNSUBSCRIBED)


@pytest.mark.parametrize("topic", MARKETING)
def test_pending_is_refused(topic: TopicModel) -> None:
    assert decide(topic, subscription=Status.PENDING) == Eligibility(
        allowed=False, reason=Reason.PENDING
    )


@pytest.mark.parametrize("topic", MARKETING)
@pytest.mark.parametrize("subscription", SUBSCRIPTIONS)
def test_suppression_blocks_every_marketing_topic(
    topic: TopicModel, subscription: Status | None
) -> None:
    answer = decide(topic, suppressed=True, subscription=subscription)
    assert answer == Eligibility(allowed=False, reason=Reason.SUPPRESSED)


@pytest.mark.parametrize("topic", EVERY_TOPIC)
@pytest.mark.parametrize("subscription", SUBSCRIPTIONS)
def test_erasure_blocks_everything(topic: TopicModel, subscription: Status | None) -> None:
    answer = decide(topic, erased=True, subscription=subscription)
    assert answer == Eligibility(allowed=False, reason=Reason.SUPPRESSED)


def test_every_reason_is_in_the_contract() -> None:
    # contract.md, "Marketing tools: who may be emailed": values are only ever added.
    assert {r.value for r in Reason} == {
        "subscribed",
        "opt_out_default",
        "transactional",
        "unsubscribed",
        "not_subscribed",
        "pending",
        "suppressed",
        "bounced",
        "reconsent_required",
        "unknown_topic",
        "invalid_email",
    }


SHARING = TopicModel(kind=TopicKind.SHARING, consent=ConsentModel.OPT_IN)


@pytest.mark.parametrize("topic", [*MARKETING, SHARING])
def test_a_subscription_to_give_again_is_not_allowed(topic: TopicModel) -> None:
    answer = decide_eligibility(
        topic, erased=False, suppressed=False, subscription=Status.SUBSCRIBED, reconsent=True
    )
    assert answer == Eligibility(allowed=False, reason=Reason.RECONSENT_REQUIRED)


@pytest.mark.parametrize("topic", EVERY_TOPIC)
@pytest.mark.parametrize("subscription", SUBSCRIPTIONS)
@pytest.mark.parametrize("suppressed", [False, True])
@pytest.mark.parametrize("bounced", [False, True])
def test_reconsent_changes_only_a_subscription_that_would_allow(
    topic: TopicModel, subscription: Status | None, suppressed: bool, bounced: bool
) -> None:
    """Opt-outs stay opt-outs, a bounce or an opt-out from all stays what it answered, and
    transactional mail never depended on a subscription."""
    before = decide_eligibility(
        topic, erased=False, suppressed=suppressed, subscription=subscription, bounced=bounced
    )
    after = decide_eligibility(
        topic,
        erased=False,
        suppressed=suppressed,
        subscription=subscription,
        bounced=bounced,
        reconsent=True,
    )
    if before.reason is Reason.SUBSCRIBED:
        assert after == Eligibility(allowed=False, reason=Reason.RECONSENT_REQUIRED)
    else:
        assert after == before


@pytest.mark.parametrize("topic", EVERY_TOPIC)
@pytest.mark.parametrize("subscription", SUBSCRIPTIONS)
@pytest.mark.parametrize("suppressed", [False, True])
def test_a_bounce_blocks_every_kind_of_mail(
    topic: TopicModel, subscription: Status | None, suppressed: bool
) -> None:
    answer = decide(topic, subscription=subscription, suppressed=suppressed, bounced=True)
    assert answer == Eligibility(allowed=False, reason=Reason.BOUNCED)


@pytest.mark.parametrize("topic", EVERY_TOPIC)
def test_erasure_is_named_before_a_bounce(topic: TopicModel) -> None:
    assert decide(topic, erased=True, bounced=True) == Eligibility(
        allowed=False, reason=Reason.SUPPRESSED
    )
