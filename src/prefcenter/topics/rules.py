"""Owns what a topic may be: the sharing rules (always opt-in, one named third party).

Pure: a topic specification in, nothing or a problem out.
"""

from __future__ import annotations

from prefcenter.topics.errors import InvalidSharingTopic
from prefcenter.topics.schemas import ConsentModel, TopicIn, TopicKind


def check_topic_spec(spec: TopicIn) -> None:
    """A `sharing` topic is `opt_in` and names its `third_party`; no other kind names one.

    An `opt_out` sharing topic would share everyone's data until they object: the policy
    promises sharing only with the person's prior consent, so it is refused, never coerced.
    """
    if spec.kind is TopicKind.SHARING:
        if spec.consent is not ConsentModel.OPT_IN:
            raise InvalidSharingTopic(
                "A sharing topic is always `opt_in`: data goes to a third party only after "
                "the person agreed. It cannot have an `opt_out` default.",
                errors=[{"field": "consent", "detail": "must be opt_in for a sharing topic"}],
            )
        if spec.third_party is None:
            raise InvalidSharingTopic(
                "A sharing topic names the party the data goes to in `third_party`.",
                errors=[{"field": "third_party", "detail": "required for a sharing topic"}],
            )
    elif spec.third_party is not None:
        raise InvalidSharingTopic(
            f"`third_party` names the party of a sharing topic; a {spec.kind.value} topic "
            "has none.",
            errors=[{"field": "third_party", "detail": "only for a sharing topic"}],
        )
