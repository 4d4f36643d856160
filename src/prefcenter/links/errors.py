"""Errors of the links domain."""

from prefcenter.problems import PayloadTooLarge


class BatchTooLarge(PayloadTooLarge):
    slug = "batch-too-large"
    title = "Too many items in one batch"
