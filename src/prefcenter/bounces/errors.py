"""The problems of bounces."""

from prefcenter.problems import NotFound


class BounceContactNotFound(NotFound):
    slug = "contact-not-found"
    title = "Unknown contact"
