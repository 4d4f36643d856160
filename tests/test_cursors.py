"""The one cursor codec of the keyset reads (`/v1/audit`, `/v1/changes`): what it hands out
comes back as the same position; anything else, tampered or garbage, is an `invalid-cursor`
problem naming the parameter, on the API too."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.changes import CHANGES_CURSOR
from prefcenter.audit.queries import AUDIT_CURSOR
from prefcenter.cursors import InvalidCursor, SeqCursor
from prefcenter.db import Database
from tests.support.factories import assert_problem, error_fields
from tests.support.harness import issue_key

FEED = SeqCursor(kind="feed", field="after")
GARBAGE = (
    "",
    "x",
    "12",
    "feed:1",
    "ZmVlZDox=",  # a valid cursor with padding added
    "ZmVlZDox!",  # a stray character base64 decoding alone would skip
    "ZmVlZDotMQ",  # feed:-1
    "ZmVlZDox".upper(),
    FEED.encode(1) + "\n",
    SeqCursor(kind="other", field="after").encode(1),
    SeqCursor(kind="feed", field="after").encode(10**18),  # 19 digits
    "ZmVlZDrvvJE",  # feed: and a full-width digit one
)


class TestSeqCursor:
    @pytest.mark.parametrize("seq", [0, 1, 99, 10**17, 10**18 - 1])
    def test_round_trips(self, seq: int) -> None:
        assert FEED.decode(FEED.encode(seq)) == seq

    def test_is_opaque_text_without_padding(self) -> None:
        assert FEED.encode(1) == "ZmVlZDox"

    @pytest.mark.parametrize("cursor", GARBAGE)
    def test_anything_not_handed_out_is_refused_naming_the_field(self, cursor: str) -> None:
        with pytest.raises(InvalidCursor) as raised:
            FEED.decode(cursor)
        errors = raised.value.extensions["errors"]
        assert errors == [{"field": "after", "detail": "is not a valid cursor"}]

    @given(st.text(max_size=40))
    def test_any_text_decodes_only_as_the_cursor_it_is(self, cursor: str) -> None:
        try:
            seq = FEED.decode(cursor)
        except InvalidCursor:
            return
        assert FEED.encode(seq) == cursor

    def test_the_feeds_keep_the_cursors_they_handed_out_before(self) -> None:
        """Clients store `next`: the text of a position may never change."""
        assert CHANGES_CURSOR.encode(7) == "c2VxOjc"
        assert AUDIT_CURSOR.encode(7) == "YXVkaXQ6Nw"


class TestOnTheApi:
    def test_one_feeds_cursor_is_refused_by_the_other(
        self, client: TestClient, database: Database
    ) -> None:
        headers = issue_key(database, Scope.AUDIT_READ, Scope.CONSENT_READ, name="both")
        changes = client.get(
            "/v1/changes", headers=headers, params={"after": AUDIT_CURSOR.encode(0)}
        )
        audit = client.get(
            "/v1/audit", headers=headers, params={"cursor": CHANGES_CURSOR.encode(0)}
        )
        assert error_fields(assert_problem(changes, 422, "invalid-cursor"))[-1].endswith("after")
        assert error_fields(assert_problem(audit, 422, "invalid-cursor"))[-1].endswith("cursor")

    @pytest.mark.parametrize("cursor", ["x", AUDIT_CURSOR.encode(3) + "A"])
    def test_a_tampered_cursor_is_a_422_problem(
        self, client: TestClient, database: Database, cursor: str
    ) -> None:
        headers = issue_key(database, Scope.AUDIT_READ, name="auditor")
        response = client.get("/v1/audit", headers=headers, params={"cursor": cursor})
        assert_problem(response, 422, "invalid-cursor")
