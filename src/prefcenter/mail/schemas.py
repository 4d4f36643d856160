"""What a queued mail holds until the worker writes it: which message, for whom, in which
language. No address for a contact's mail (the worker reads it when it sends, so an erased
contact gets nothing), no rendered text, no token."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

# The languages the service writes its mail in (those of the recipient pages).
MailLanguage = Literal["en", "de"]


class MailTemplate(StrEnum):
    """Persisted in queued mail: values are only ever added."""

    DOUBLE_OPT_IN = "double_opt_in"  # the confirmation link of a pending subscription
    PREFERENCES_LINK = "preferences_link"  # "email me my link" (GET /p): a preference link
    # The link that turns back on what the person refused (from /p; `topic` None: marketing
    # as a whole); `pending_event` names the opt-out (consent.opt_out_markers).
    RESUBSCRIBE = "resubscribe"
    TEST = "test"  # `prefcenter mail test ADDRESS`
    # A notice version announced before it takes effect (notices); `notice` names it.
    NOTICE = "notice"


class MailPayload(BaseModel):
    """The outbox payload of a mail (outbox kind `mail`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: MailTemplate
    language: MailLanguage = "en"
    # A contact's mail: its public id; the address is read when the mail is sent.
    contact_id: str | None = None
    # A mail to an address that is no contact's (the test mail).
    to: str | None = None
    topic: str | None = None
    # DOUBLE_OPT_IN: the audit event that made the subscription pending (its link names it).
    pending_event: str | None = None
    campaign_id: str | None = None
    # NOTICE: the version, as `<key>@<version>`.
    notice: str | None = None
