"""Errors of the topic domain."""

from prefcenter.problems import Conflict, NotFound, Unprocessable


class TopicNotFound(NotFound):
    slug = "topic-not-found"
    title = "Unknown topic"


class UnknownTopic(Unprocessable):
    """A request body names a topic that does not exist (422; a path naming one is a 404)."""

    slug = "unknown-topic"
    title = "Unknown topic"


class TopicModelChange(Conflict):
    slug = "topic-model-change"
    title = "A topic's kind and consent model are fixed"


class InvalidSharingTopic(Unprocessable):
    """A `sharing` topic that is not opt-in or names no third party, or a `third_party` on a
    topic of another kind."""

    slug = "invalid-sharing-topic"
    title = "A sharing topic is opt-in and names its third party"


class UnknownNotice(Unprocessable):
    """A topic names a notice to bind to that does not exist (create it first)."""

    slug = "unknown-notice"
    title = "Unknown notice"
