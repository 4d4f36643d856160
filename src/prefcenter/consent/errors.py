"""Errors of the consent domain, each with its HTTP status."""

from prefcenter.problems import Conflict, PayloadTooLarge, Unprocessable


class RecipientOptOutProtected(Conflict):
    slug = "recipient-opt-out"
    title = "The recipient opted out themselves"


class ReasonRequired(Unprocessable):
    slug = "reason-required"
    title = "A reason is required"


class EvidenceRequired(Unprocessable):
    slug = "evidence-required"
    title = "Evidence is required"


class ConsentBatchTooLarge(PayloadTooLarge):
    slug = "batch-too-large"
    title = "Too many items in one batch"
