"""Why the console refused a request. Each is rendered as an HTML page with its status (or, for
a missing session, a redirect to the sign-in page) by `admin.pages`."""

from __future__ import annotations

from datetime import timedelta

from prefcenter.admin.rules import retry_after_seconds
from prefcenter.problems import Conflict, NotFound, Problem, Unprocessable


class NotSignedIn(Problem):
    """No live session: the page answers 303 to the sign-in page instead."""

    status = 303
    slug = "not-signed-in"
    title = "Sign in first"


class CsrfRejected(Problem):
    status = 403
    slug = "csrf"
    title = "The form has expired"


class SignInThrottled(Problem):
    status = 429
    slug = "sign-in-throttled"
    title = "Too many failed sign-ins"

    @classmethod
    def waiting(cls, wait: timedelta) -> SignInThrottled:
        seconds = retry_after_seconds(wait)
        when = f"{seconds} seconds" if seconds < 120 else f"{-(-seconds // 60)} minutes"
        return cls(
            f"Too many failed sign-ins from here or for this user: try again in {when}. A "
            "browser that has signed in as this user before is not held up by anyone else's "
            "failures; an admin API key works from here too.",
            headers={"Retry-After": str(seconds)},
        )


class AdminUserExists(Conflict):
    slug = "admin-user-exists"
    title = "That username is taken"


class AdminUserNotFound(NotFound):
    slug = "admin-user-not-found"
    title = "Unknown admin user"


class InvalidAdminUser(Unprocessable):
    slug = "invalid-admin-user"
    title = "Invalid username or password"
