"""Errors of the webhook domain."""

from prefcenter.problems import NotFound, Unprocessable


class WebhookNotFound(NotFound):
    slug = "webhook-not-found"
    title = "Unknown webhook endpoint"


class WebhookUrlRefused(Unprocessable):
    """A URL that deliveries may not go to (scheme, credentials, or an address that is not
    public: see webhooks.rules.address_refusal)."""

    slug = "webhook-url-refused"
    title = "Webhook URL refused"
