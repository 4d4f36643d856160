"""The problems of the inbound routes. A refused request changes nothing."""

from __future__ import annotations

from prefcenter.problems import NotFound, Problem


class InboundNotConfigured(NotFound):
    """The route exists, but its ESP's setting is not set: to a caller, nothing is here
    (the same problem as any unknown path)."""


class SignatureInvalid(Problem):
    """Missing, malformed or wrong signature (or credentials), or a signed time too old."""

    status = 401
    slug = "signature-invalid"
    title = "The signature does not check"


class SenderNotAllowed(Problem):
    """Signed, but not by a sender this service is configured to accept (an SNS topic or a
    certificate URL not allowed)."""

    status = 403
    slug = "sender-not-allowed"
    title = "Sender not allowed"


class PayloadInvalid(Problem):
    status = 400
    slug = "payload-invalid"
    title = "The payload cannot be read"


class NotAcceptable(Problem):
    """Mailgun's word for "do not retry this": a replayed token, a payload it cannot mean."""

    status = 406
    slug = "not-acceptable"
    title = "Not acceptable"


class UnsupportedMessage(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
