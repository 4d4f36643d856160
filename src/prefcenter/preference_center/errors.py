"""Why a recipient link was refused. The page says as little as possible about the contact."""

from __future__ import annotations


class InvalidLink(Exception):
    """Refused with no change; `status` is 400 for a bad token, 404 for one whose contact is
    gone; `expired` picks the wording for a confirmation link that is no longer valid,
    `retired` the one for a link signed with a retired key."""

    def __init__(self, status: int, *, expired: bool = False, retired: bool = False) -> None:
        super().__init__(f"invalid link ({status})")
        self.status = status
        self.expired = expired
        self.retired = retired
