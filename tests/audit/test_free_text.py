"""Free text out of the chain (format 2): a reason or campaign id is committed to by its keyed
digest only, shown until the person is erased, gone from every table after, and any edit of
it is named by its seq; events of format 1 (the text in clear) verify beside the new ones."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit import chain_rows
from prefcenter.audit.canonical import FREE_TEXT_FIELDS
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.verify import VerifyResult
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database, utcnow
from tests.audit.first_format import first_format_event, write_first_format_events
from tests.audit.tampering import fetch, tables_holding, tamper
from tests.preference_center.test_router import one_click
from tests.support.factories import (
    Headers,
    audit_events,
    issue_links,
    make_topic,
    record_change,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
BOB = "bob@example.com"
# What a support desk should not type, and sometimes does.
STREET = "221B Baker Street, London NW1 6XE"
PHONE = "+44 20 7946 0958"
REASON = f"Her husband called from {PHONE}, they moved to {STREET}"
CAMPAIGN = f"callback {PHONE}"
BOB_REASON = "Ticket 5120: asked by mail"


def verify_trail(database: Database, *, deep: bool = False) -> VerifyResult:
    return verify_ledger(database, AuditKeys.from_settings(database.settings), deep=deep)


def canonical_of(database: Database, seq: int) -> bytes:
    ((canonical,),) = fetch(
        database.settings.database_url,
        "SELECT canonical FROM audit_event WHERE seq = :seq",
        {"seq": seq},
    )
    return bytes(canonical)


@pytest.fixture
def ada_opted_out(client: TestClient, admin_headers: Headers) -> dict[str, Any]:
    """Ada's support-desk opt-out, with personal data in its reason and campaign id."""
    make_topic(client, admin_headers, "news")
    record_change(client, admin_headers, ADA, "subscribed", topic="news")
    return record_change(
        client,
        admin_headers,
        ADA,
        "unsubscribed",
        topic="news",
        source="phone",
        reason=REASON,
        campaign_id=CAMPAIGN,
    )


def seq_of(database: Database, event_id: str) -> int:
    (event,) = [e for e in audit_events(database) if e.id == event_id]
    return event.seq


class TestRecorded:
    def test_the_chain_holds_keyed_digests_and_the_trail_shows_the_text(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        ada_opted_out: dict[str, Any],
    ) -> None:
        seq = seq_of(database, ada_opted_out["event_id"])
        canonical = canonical_of(database, seq)
        for needle in (STREET, PHONE, "Baker", "7946"):
            assert needle.encode() not in canonical
        keys = AuditKeys.from_settings(database.settings)
        decoded = orjson.loads(canonical)
        assert (decoded["v"], decoded["reason_digest"], decoded["campaign_id_digest"]) == (
            2,
            keys.free_text_digest("reason", REASON),
            keys.free_text_digest("campaign_id", CAMPAIGN),
        )
        assert "reason" not in decoded
        assert "campaign_id" not in decoded
        # The event's own columns for clear text are those of format 1 only.
        assert fetch(
            database.settings.database_url,
            "SELECT reason, campaign_id FROM audit_event WHERE seq = :seq",
            {"seq": seq},
        ) == [(None, None)]

        page = client.get(
            "/v1/audit", headers=admin_headers, params={"contact_id": ada_opted_out["contact_id"]}
        ).json()
        shown = page["events"][-1]
        assert (shown["reason"], shown["campaign_id"]) == (REASON, CAMPAIGN)
        export = client.get("/v1/audit/export", headers=admin_headers, params={"format": "csv"})
        assert REASON in export.text
        assert CAMPAIGN in export.text
        assert verify_trail(database, deep=True).ok

    def test_a_one_click_keeps_the_links_campaign_id_out_of_the_chain(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
    ) -> None:
        """PostgreSQL's one-click is the unsubscribe lane's single statement; SQLite's the
        app's ORM path: both write the same event."""
        make_topic(client, admin_headers, "news")
        record_change(client, writer_headers, ADA, "subscribed", topic="news")
        links = issue_links(
            client,
            issue_key(database, Scope.LINKS, name="mailer"),
            ADA,
            topic="news",
            campaign_id=CAMPAIGN,
        )

        assert one_click(client, links["unsubscribe_url"]).status_code == 200

        event = audit_events(database)[-1]
        assert (event.source, event.campaign_id, event.reason) == ("one_click", CAMPAIGN, None)
        assert PHONE.encode() not in canonical_of(database, event.seq)
        assert verify_trail(database, deep=True).ok

    def test_the_digests_are_keyed_per_field(self, database: Database) -> None:
        """The same text as a reason, a campaign id and an address: three unrelated hashes."""
        keys = AuditKeys.from_settings(database.settings)
        digests = {
            keys.free_text_digest("reason", ADA),
            keys.free_text_digest("campaign_id", ADA),
            keys.address_hash(ADA),
        }
        assert len(digests) == 3
        assert keys.free_text_digest("reason", None) is None
        assert keys.free_text_digest("reason", "") != keys.free_text_digest("reason", " ")


class TestErasure:
    def test_no_table_holds_the_text_after_the_contact_is_erased(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        ada_opted_out: dict[str, Any],
    ) -> None:
        ada = ada_opted_out["contact_id"]
        corrected = client.patch(
            f"/v1/contacts/{ada}",
            headers=admin_headers,
            json={"address": "ada@example.org", "reason": f"Moved; new phone {PHONE}"},
        )
        assert corrected.status_code == 200, corrected.text
        record_change(client, admin_headers, BOB, "unsubscribed", reason=BOB_REASON)
        url = database.settings.database_url
        assert tables_holding(url, PHONE) == [
            "audit_free_text.campaign_id",
            "audit_free_text.reason",
        ]

        erased = client.delete(f"/v1/contacts/{ada}", headers=admin_headers)
        assert erased.status_code == 200, erased.text

        for needle in (STREET, PHONE, REASON, CAMPAIGN):
            assert tables_holding(url, needle) == [], needle
        assert tables_holding(url, BOB_REASON) == ["audit_free_text.reason"]  # not Bob's
        events = client.get("/v1/audit", headers=admin_headers, params={"contact_id": ada}).json()
        assert [(e["reason"], e["campaign_id"]) for e in events["events"]] == [(None, None)] * 4
        assert verify_trail(database) == VerifyResult(ok=True, checked=6)
        assert verify_trail(database, deep=True).ok

    def test_an_erased_contacts_first_format_events_keep_their_text(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        """The limitation docs/operations.md states: format 1 bytes were hashed with the text
        in them; erasing cannot take it out without breaking the chain."""
        keys = AuditKeys.from_settings(database.settings)
        contact_id = record_change(client, admin_headers, ADA, "unsubscribed")["contact_id"]
        url = database.settings.database_url
        # Ada's event as it was, then a format 1 event of hers before it: rebuilt from seq 1.
        tamper(url, "DELETE FROM audit_evidence")
        tamper(url, "DELETE FROM audit_event")
        write_first_format_events(
            url,
            [
                first_format_event(
                    keys,
                    1,
                    address=ADA,
                    kind="global_consent_change",
                    contact_id=contact_id,
                    to_status="unsubscribed",
                    reason=REASON,
                )
            ],
        )
        assert verify_trail(database).ok

        assert client.delete(f"/v1/contacts/{contact_id}", headers=admin_headers).status_code == 200

        assert tables_holding(url, PHONE) == ["audit_event.canonical", "audit_event.reason"]
        assert verify_trail(database).ok


class TestTampering:
    @pytest.mark.parametrize("field", FREE_TEXT_FIELDS)
    @pytest.mark.parametrize("edited", ["someone else's words", "", None])
    def test_an_edited_free_text_is_named_by_its_seq(
        self,
        database: Database,
        ada_opted_out: dict[str, Any],
        field: str,
        edited: str | None,
    ) -> None:
        seq = seq_of(database, ada_opted_out["event_id"])
        url = database.settings.database_url
        tamper(
            url,
            f"UPDATE audit_free_text SET {field} = :v WHERE seq = :seq",
            {"v": edited, "seq": seq},
        )

        result = verify_trail(database)

        assert (result.ok, result.first_bad_seq) == (False, seq)
        assert result.detail == f"its {field} does not match the digest in its canonical bytes"

    @pytest.mark.parametrize("chunk", [1, 2, 3, 5])
    def test_chunk_boundaries_neither_skip_nor_repeat_a_free_text(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        ada_opted_out: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
        chunk: int,
    ) -> None:
        """SQLite reads each chunk's free text apart, by its range of seq (PostgreSQL joins it
        into the streamed chain): at either end of a chunk, or alone in one, it is checked
        once."""
        monkeypatch.setattr(chain_rows, "CHUNK", chunk)
        record_change(client, admin_headers, BOB, "unsubscribed", reason=BOB_REASON)
        assert verify_trail(database) == VerifyResult(ok=True, checked=4)
        url = database.settings.database_url
        for seq in (3, 4):
            (row,) = fetch(url, "SELECT reason FROM audit_free_text WHERE seq = :seq", {"seq": seq})
            tamper(url, "UPDATE audit_free_text SET reason = 'x' WHERE seq = :seq", {"seq": seq})
            result = verify_trail(database)
            assert (result.ok, result.first_bad_seq) == (False, seq), (chunk, seq)
            tamper(
                url,
                "UPDATE audit_free_text SET reason = :r WHERE seq = :seq",
                {"r": row[0], "seq": seq},
            )
        assert verify_trail(database).ok

    def test_free_text_added_to_an_event_without_any_is_named(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        record_change(client, admin_headers, ADA, "unsubscribed")
        tamper(
            database.settings.database_url,
            "INSERT INTO audit_free_text (seq, reason) VALUES (1, 'forged')",
        )

        result = verify_trail(database)

        assert (result.ok, result.first_bad_seq) == (False, 1)

    def test_a_missing_free_text_is_bad_unless_its_contact_was_erased(
        self, database: Database, ada_opted_out: dict[str, Any]
    ) -> None:
        seq = seq_of(database, ada_opted_out["event_id"])
        url = database.settings.database_url
        tamper(url, "DELETE FROM audit_free_text WHERE seq = :seq", {"seq": seq})

        result = verify_trail(database)
        assert (result.ok, result.first_bad_seq) == (False, seq)
        assert result.detail is not None
        assert "free text" in result.detail

        tamper(
            url,
            "UPDATE contact SET erased_at = :now WHERE public_id = :id",
            {"now": utcnow().replace(tzinfo=None), "id": ada_opted_out["contact_id"]},
        )
        assert verify_trail(database).ok

    def test_the_text_put_back_into_the_events_column_is_named(
        self, database: Database, ada_opted_out: dict[str, Any]
    ) -> None:
        """A format 2 event's clear-text columns stay null: reading would show them."""
        seq = seq_of(database, ada_opted_out["event_id"])
        tamper(
            database.settings.database_url,
            "UPDATE audit_event SET reason = :r WHERE seq = :seq",
            {"r": "forged", "seq": seq},
        )

        result = verify_trail(database)

        assert (result.ok, result.first_bad_seq) == (False, seq)

    def test_the_database_refuses_to_edit_free_text_but_erasure_may_delete_it(
        self, database: Database, ada_opted_out: dict[str, Any]
    ) -> None:
        engine = create_engine(database.settings.database_url)
        try:
            with pytest.raises(DBAPIError, match="audit trail is append-only"), engine.begin() as c:
                c.execute(text("UPDATE audit_free_text SET reason = 'edited'"))
            with engine.begin() as connection:
                deleted = connection.execute(text("DELETE FROM audit_free_text"))
        finally:
            engine.dispose()
        assert deleted.rowcount == 1


class TestFirstFormat:
    def test_first_format_events_verify_beside_new_ones_on_the_databases_fast_path(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The database rebuilds each event's bytes from its columns in the event's own format:
        no event is looked at again in Python."""
        keys = AuditKeys.from_settings(database.settings)
        write_first_format_events(
            database.settings.database_url,
            [
                first_format_event(keys, 1, address=None, topic="news"),
                first_format_event(keys, 2, address=None, reason=REASON, campaign_id=CAMPAIGN),
                first_format_event(keys, 3, address=None, reason="", campaign_id="x\u0007✓"),
            ],
        )
        make_topic(client, admin_headers, "news")
        record_change(
            client, admin_headers, ADA, "unsubscribed", reason=REASON, campaign_id=CAMPAIGN
        )
        record_change(client, admin_headers, BOB, "unsubscribed")

        def looked_at_again(*args: object) -> list[Any]:
            raise AssertionError(f"the SQL found an event's columns to differ: {args}")

        monkeypatch.setattr(chain_rows, "row_columns", looked_at_again)
        assert verify_trail(database) == VerifyResult(ok=True, checked=6)
        events = audit_events(database)
        assert [(e.reason, e.campaign_id) for e in events] == [
            (None, None),
            (REASON, CAMPAIGN),
            ("", "x\u0007✓"),
            (None, None),  # the topic
            (REASON, CAMPAIGN),
            (None, None),
        ]
        assert [orjson.loads(canonical_of(database, e.seq))["v"] for e in events] == [
            1,
            1,
            1,
            2,
            2,
            2,
        ]

    @pytest.mark.parametrize("column", ["reason", "campaign_id", "reason_digest"])
    def test_an_edited_first_format_column_is_named(self, database: Database, column: str) -> None:
        keys = AuditKeys.from_settings(database.settings)
        url = database.settings.database_url
        write_first_format_events(
            url,
            [
                first_format_event(keys, 1, address=None),
                first_format_event(keys, 2, address=None, reason=REASON, campaign_id=CAMPAIGN),
            ],
        )
        assert verify_trail(database).ok
        tamper(url, f"UPDATE audit_event SET {column} = 'edited' WHERE seq = 2")

        result = verify_trail(database)

        assert (result.ok, result.first_bad_seq) == (False, 2)
