"""Errors of the topic domain."""

from prefcenter.problems import Conflict, NotFound


class TopicNotFound(NotFound):
    slug = "topic-not-found"
    title = "Unknown topic"


class TopicModelChange(Conflict):
    slug = "topic-model-change"
    title = "A topic's kind and consent model are fixed"
