"""Errors of the links domain."""

from prefcenter.problems import PayloadTooLarge, Unprocessable


class BatchTooLarge(PayloadTooLarge):
    slug = "batch-too-large"
    title = "Too many items in one batch"


class UnknownLinkTopic(Unprocessable):
    slug = "unknown-topic"
    title = "Unknown topic"
