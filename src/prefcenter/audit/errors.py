"""The audit trail's problems."""

from __future__ import annotations

from prefcenter.problems import Problem

# Seconds a caller is told to wait while another verification runs: about what one of a
# million events takes (README, "audit-trail figures").
VERIFY_RETRY_AFTER_S = 10


class VerifyInProgress(Problem):
    """A verification reads the whole chain: one at a time per process, so that callers cannot
    pile them up and take every database connection and CPU."""

    status = 429
    slug = "verify-in-progress"
    title = "A verification is already running"

    def __init__(self) -> None:
        super().__init__(
            "This process is already verifying the audit trail; ask again later (see Retry-After).",
            headers={"Retry-After": str(VERIFY_RETRY_AFTER_S)},
        )
