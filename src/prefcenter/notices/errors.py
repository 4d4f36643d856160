"""Errors of the notice domain."""

from prefcenter.problems import Conflict, NotFound, Unprocessable


class NoticeNotFound(NotFound):
    slug = "notice-not-found"
    title = "Unknown notice"


class NoticeVersionNotFound(NotFound):
    slug = "notice-version-not-found"
    title = "Unknown notice version"


class NoVersionInForce(NotFound):
    slug = "no-notice-version-in-force"
    title = "No version in force at that time"


class NoticeVersionExists(Conflict):
    """Versions are immutable: publishing a label twice is refused, whatever the body."""

    slug = "notice-version-exists"
    title = "Notice version already published"


class NoticePeriodTooShort(Unprocessable):
    """An effective date sooner than the notice period, without a reason; the problem carries
    `earliest_effective_at`."""

    slug = "notice-period-too-short"
    title = "Takes effect too soon"


class UnknownNoticeVersion(Unprocessable):
    """A consent names a notice version that was never published."""

    slug = "unknown-notice-version"
    title = "Unknown notice version"


class NoticeVersionSuperseded(Unprocessable):
    """A consent names a version that a newer one had replaced by its `occurred_at`."""

    slug = "notice-version-superseded"
    title = "Notice version no longer in force"


class TextDigestMismatch(Unprocessable):
    """The `sha256` of a version is not that of its text (what a text hashes to, no schema
    can say)."""

    slug = "notice-text-digest-mismatch"
    title = "sha256 is not that of the text"


class NoNotificationRun(Conflict):
    """The version has no run to export or mark: not material, or mailed by the service."""

    slug = "notice-run-not-external"
    title = "No run for the team to send"


class NoRecipientEndpoint(Unprocessable):
    """`"delivery": "webhooks"` while no enabled endpoint subscribes to `notice.recipient`:
    the run would reach nobody."""

    slug = "notice-no-recipient-endpoint"
    title = "No webhook endpoint takes notice.recipient"


class NotARecipient(NotFound):
    """A mark names a contact the run did not include (unknown, or erased or bounced when the
    version was published)."""

    slug = "notice-recipient-not-found"
    title = "Not a recipient of this run"


class RecipientErased(Conflict):
    """A mark names a contact erased since the run was queued: nothing more is recorded of
    them."""

    slug = "notice-recipient-erased"
    title = "Recipient erased"


class BounceIsFinal(Conflict):
    """A mark that would turn a recipient marked bounced into sent or failed."""

    slug = "notice-delivery-bounced"
    title = "Delivery already marked bounced"
