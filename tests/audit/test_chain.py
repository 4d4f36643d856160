"""The chain on both engines: every edit, insertion or deletion is named by its seq; the
database itself refuses UPDATE and DELETE on events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from prefcenter.audit import chain_rows
from prefcenter.audit.canonical import (
    CANONICAL_KEYS,
    CANONICAL_VERSION,
    EVENT_COLUMNS,
    chain_hash,
    encode_event,
)
from prefcenter.audit.checkpoint import (
    CheckpointInvalid,
    make_checkpoint,
    verify_with_checkpoint,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditHead
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.audit.verify import VerifyResult
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database, utcnow
from prefcenter.settings import Settings
from tests.audit.tampering import fetch, rechain, tamper, triggers_off
from tests.support.factories import make_topic, record_change

Headers = dict[str, str]


@dataclass(frozen=True, slots=True)
class Chain:
    url: str
    database: Database
    keys: AuditKeys
    seqs: list[int]

    def verify(self, *, deep: bool = False) -> VerifyResult:
        return verify_ledger(self.database, self.keys, deep=deep)


@pytest.fixture
def chain(
    client: TestClient, admin_headers: Headers, database: Database, settings: Settings
) -> Chain:
    """Eight events of every kind, with and without evidence, contact-wide and per topic."""
    make_topic(client, admin_headers, "news")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    record_change(
        client,
        admin_headers,
        "ada@example.com",
        "subscribed",
        topic="news",
        evidence={"form": "signup-v3", "ip": "192.0.2.1", "score": 0.5},
    )
    record_change(
        client,
        admin_headers,
        "bob@example.com",
        "subscribed",
        topic="news",
        campaign_id="spring",
        evidence={"text": 'Zeichen ✓ \u0007 "quoted"'},
    )
    record_change(client, admin_headers, "ada@example.com", "unsubscribed", topic="offers")
    record_change(client, admin_headers, "bob@example.com", "unsubscribed", reason="asked by phone")
    record_change(
        client,
        admin_headers,
        "cy@example.com",
        "subscribed",
        topic="news",
        occurred_at=utcnow().replace(year=2020),
    )
    record_change(client, admin_headers, "ada@example.com", "unsubscribed", topic="news")
    seqs = [
        row[0]
        for row in fetch(database.settings.database_url, "SELECT seq FROM audit_event ORDER BY seq")
    ]
    assert seqs == list(range(1, 9))
    return Chain(
        url=settings.database_url,
        database=database,
        keys=AuditKeys.from_settings(settings),
        seqs=seqs,
    )


def flip_byte(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


class TestVerify:
    def test_an_untouched_chain_verifies(self, chain: Chain) -> None:
        assert chain.verify(deep=True) == VerifyResult(ok=True, checked=8)

    def test_an_empty_chain_verifies(self, database: Database, settings: Settings) -> None:
        assert verify_ledger(database, AuditKeys.from_settings(settings)).ok

    @pytest.mark.parametrize("chunk", [2, 3, 8])
    def test_chunk_boundaries_neither_skip_nor_repeat_an_event(
        self, chain: Chain, chunk: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The chain is read in chunks (on PostgreSQL the next one fetched while the last is
        checked): partial, exact and single chunks all check every event once."""
        monkeypatch.setattr(chain_rows, "CHUNK", chunk)
        assert chain.verify() == VerifyResult(ok=True, checked=8)
        ((original,),) = fetch(chain.url, "SELECT canonical FROM audit_event WHERE seq = 5")
        tamper(
            chain.url,
            "UPDATE audit_event SET canonical = :c WHERE seq = 5",
            {"c": flip_byte(bytes(original), 3)},
        )
        result = chain.verify()
        assert (result.ok, result.first_bad_seq) == (False, 5)

    def test_every_byte_edit_of_canonical_bytes_names_its_seq(self, chain: Chain) -> None:
        for seq, canonical in fetch(chain.url, "SELECT seq, canonical FROM audit_event"):
            original = bytes(canonical)
            # The first, a middle and the last byte of every event.
            for position in (0, len(original) // 2, len(original) - 1):
                tamper(
                    chain.url,
                    "UPDATE audit_event SET canonical = :c WHERE seq = :seq",
                    {"c": flip_byte(original, position), "seq": seq},
                )
                result = chain.verify()
                assert (result.ok, result.first_bad_seq) == (False, seq), (seq, position)
            tamper(
                chain.url,
                "UPDATE audit_event SET canonical = :c WHERE seq = :seq",
                {"c": original, "seq": seq},
            )
        assert chain.verify().ok

    def test_every_column_edit_names_its_seq(self, chain: Chain) -> None:
        """Those the event's format has no key for too (its clear free text, say)."""
        columns = [c for c in EVENT_COLUMNS if c != "seq"] + ["hash"]
        for seq in chain.seqs:
            (row,) = fetch(
                chain.url,
                f"SELECT {', '.join(columns)} FROM audit_event WHERE seq = :seq",
                {"seq": seq},
            )
            for name, value in zip(columns, row, strict=True):
                if isinstance(value, datetime):  # PostgreSQL; SQLite keeps times as text
                    edited: object = value.replace(microsecond=(value.microsecond + 1) % 10**6)
                elif value is None:
                    edited = "x"
                else:
                    edited = value[:-1] + ("0" if value[-1] != "0" else "1")
                tamper(
                    chain.url,
                    f"UPDATE audit_event SET {name} = :v WHERE seq = :seq",
                    {"v": edited, "seq": seq},
                )
                result = chain.verify()
                assert (result.ok, result.first_bad_seq) == (False, seq), (seq, name)
                tamper(
                    chain.url,
                    f"UPDATE audit_event SET {name} = :v WHERE seq = :seq",
                    {"v": value, "seq": seq},
                )
        assert chain.verify().ok

    def test_a_column_edit_before_a_broken_hash_is_named_first(self, chain: Chain) -> None:
        """PostgreSQL checks the columns apart, on a second connection (chain_rows.ColumnCheck),
        while the chain is walked: the first bad event is still the one named, whichever
        check finds it."""
        ((original,),) = fetch(chain.url, "SELECT canonical FROM audit_event WHERE seq = 6")
        tamper(chain.url, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 3")
        tamper(
            chain.url,
            "UPDATE audit_event SET canonical = :c WHERE seq = 6",
            {"c": flip_byte(bytes(original), 3)},
        )

        result = chain.verify()

        assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
        assert result.detail == "its columns differ from its canonical bytes"

    def test_an_edited_evidence_document_names_its_seq(self, chain: Chain) -> None:
        for seq, document in fetch(chain.url, "SELECT seq, document FROM audit_evidence"):
            original = bytes(document)
            tamper(
                chain.url,
                "UPDATE audit_evidence SET document = :d WHERE seq = :seq",
                {"d": flip_byte(original, len(original) // 2), "seq": seq},
            )
            result = chain.verify()
            assert (result.ok, result.first_bad_seq) == (False, seq)
            tamper(
                chain.url,
                "UPDATE audit_evidence SET document = :d WHERE seq = :seq",
                {"d": original, "seq": seq},
            )
        assert chain.verify().ok

    def test_a_missing_document_is_bad_unless_its_contact_was_erased(self, chain: Chain) -> None:
        (seq, contact_id), *_ = fetch(
            chain.url,
            "SELECT e.seq, e.contact_id FROM audit_event e JOIN audit_evidence d ON d.seq = e.seq "
            "WHERE e.contact_id IS NOT NULL ORDER BY e.seq",
        )
        tamper(chain.url, "DELETE FROM audit_evidence WHERE seq = :seq", {"seq": seq})
        result = chain.verify()
        assert (result.ok, result.first_bad_seq) == (False, seq)

        tamper(
            chain.url,
            "UPDATE contact SET erased_at = :now WHERE public_id = :id",
            {"now": utcnow().replace(tzinfo=None), "id": contact_id},
        )
        assert chain.verify().ok

    def test_a_document_added_to_an_event_without_one_names_its_seq(self, chain: Chain) -> None:
        with chain.database.transaction(write=True) as session:
            append_event(
                session,
                NewEvent(
                    kind=EventKind.TOPIC_CHANGE,
                    occurred_at=utcnow(),
                    actor="test",
                    source="test",
                    outcome="applied",
                ),
            )
        assert chain.verify().ok
        seq = 9
        tamper(
            chain.url,
            "INSERT INTO audit_evidence (seq, document) VALUES (:seq, :d)",
            {"seq": seq, "d": b'{"context":{},"evidence":{"forged":true}}'},
        )
        result = chain.verify()
        assert (result.ok, result.first_bad_seq) == (False, seq)

    def test_a_forged_event_appended_past_the_head_is_named(self, chain: Chain) -> None:
        (last_hash, canonical) = fetch(
            chain.url, "SELECT hash, canonical FROM audit_event WHERE seq = 8"
        )[0]
        forged = forged_event(
            chain, seq=9, prev_hash=bytes.fromhex(last_hash), template=bytes(canonical)
        )
        tamper(chain.url, INSERT_EVENT, forged)
        result = chain.verify()
        assert (result.ok, result.first_bad_seq) == (False, 9)

    def test_a_forged_event_in_a_gap_is_named(self, chain: Chain) -> None:
        """Whoever forges an event in the middle must move the later ones: a gap, or a hash
        that does not follow."""
        tamper(chain.url, "DELETE FROM audit_evidence WHERE seq = 5")
        tamper(chain.url, "DELETE FROM audit_event WHERE seq = 5")
        assert (chain.verify().first_bad_seq) == 5
        (prev_hash, canonical) = fetch(
            chain.url, "SELECT hash, canonical FROM audit_event WHERE seq = 4"
        )[0]
        tamper(
            chain.url,
            INSERT_EVENT,
            forged_event(
                chain, seq=5, prev_hash=bytes.fromhex(prev_hash), template=bytes(canonical)
            ),
        )
        result = chain.verify()
        # The forged event chains onto seq 4; seq 6 no longer chains onto it.
        assert (result.ok, result.first_bad_seq) == (False, 6)

    def test_a_deleted_tail_is_named_by_the_head(self, chain: Chain) -> None:
        tamper(chain.url, "DELETE FROM audit_evidence WHERE seq >= 7")
        tamper(chain.url, "DELETE FROM audit_event WHERE seq >= 7")
        result = chain.verify()
        assert (result.ok, result.first_bad_seq) == (False, 7)

    def test_a_deleted_tail_with_its_head_moved_back_is_caught_by_a_checkpoint(
        self, chain: Chain
    ) -> None:
        checkpoint = make_checkpoint(chain.database, chain.keys, now=utcnow())
        tamper(chain.url, "DELETE FROM audit_evidence WHERE seq >= 7")
        tamper(chain.url, "DELETE FROM audit_event WHERE seq >= 7")
        rechain(chain.url)
        assert chain.verify().ok  # on its own, a truncated chain is a valid chain

        result = verify_with_checkpoint(chain.database, chain.keys, checkpoint)
        assert (result.ok, result.first_bad_seq) == (False, 7)

    def test_a_rewritten_tail_is_caught_by_a_checkpoint(self, chain: Chain) -> None:
        checkpoint = make_checkpoint(chain.database, chain.keys, now=utcnow())
        (canonical,) = fetch(chain.url, "SELECT canonical FROM audit_event WHERE seq = 8")[0]
        rewritten = bytes(canonical).replace(b'"unsubscribed"', b'"subscribed"')
        tamper(
            chain.url,
            "UPDATE audit_event SET canonical = :c, to_status = 'subscribed' WHERE seq = 8",
            {"c": rewritten},
        )
        rechain(chain.url)
        assert chain.verify().ok

        result = verify_with_checkpoint(chain.database, chain.keys, checkpoint)
        assert (result.ok, result.first_bad_seq) == (False, 8)
        with pytest.raises(CheckpointInvalid, match="signature"):  # it covers the seq
            verify_with_checkpoint(chain.database, chain.keys, {**checkpoint, "seq": 7})

    def test_an_edited_subscription_is_caught_by_the_deep_verify_only(self, chain: Chain) -> None:
        tamper(
            chain.url, "UPDATE subscription SET status = 'subscribed' WHERE status = 'unsubscribed'"
        )
        assert chain.verify().ok
        result = chain.verify(deep=True)
        (ada,) = fetch(
            chain.url, "SELECT public_id FROM contact WHERE address = 'ada@example.com'"
        )[0]
        assert (result.ok, result.first_bad_seq, result.first_bad_contact) == (False, None, ada)

    def test_an_edited_suppression_is_caught_by_the_deep_verify(self, chain: Chain) -> None:
        tamper(chain.url, "DELETE FROM suppression")
        result = chain.verify(deep=True)
        (bob,) = fetch(
            chain.url, "SELECT public_id FROM contact WHERE address = 'bob@example.com'"
        )[0]
        assert (result.ok, result.first_bad_contact) == (False, bob)


class TestAppend:
    @pytest.mark.parametrize("count", [1, 3, 250])  # 250: PostgreSQL writes them by COPY
    def test_events_of_one_transaction_are_chained_in_order(self, chain: Chain, count: int) -> None:
        """One event is one statement on PostgreSQL, many are hashed in Python and inserted
        set-based: either way the chain verifies and reads back what was appended."""
        moment = utcnow().replace(year=2024)
        news = [
            NewEvent(
                kind=EventKind.CONSENT_CHANGE,
                occurred_at=moment,
                actor="test",
                source="import",
                outcome="applied",
                contact_id=f"c{i}",
                topic="news",
                to_status="subscribed",
                reason=f"Zeile {i} ✓ \u0007" if i % 2 else None,
                evidence={"line": i, "score": 0.5} if i % 3 == 0 else {"line": i},
                context={} if i % 5 == 4 else {"actor_kind": "admin"},
                address=f"p{i}@example.com",
            )
            for i in range(count)
        ]
        with chain.database.transaction(write=True) as session:
            for new in news:
                append_event(session, new)
        assert chain.verify() == VerifyResult(ok=True, checked=8 + count)
        with chain.database.transaction(write=False) as session:
            stored = read_events(session, col(AuditEvent.seq) > 8)
        assert [e.seq for e in stored] == list(range(9, 9 + count))
        assert [(e.id, e.reason, e.evidence, e.context, e.occurred_at) for e in stored] == [
            (n.id, n.reason, n.evidence, n.context, moment) for n in news
        ]
        times = [e.recorded_at for e in stored]
        assert len(set(times)) == 1  # one transaction, one time
        with chain.database.transaction(write=False) as session:
            head = session.exec(select(AuditHead)).one()
        assert (head.seq, head.recorded_at) == (8 + count, times[0])

    def test_a_document_shared_by_consecutive_events_is_stored_for_each(self, chain: Chain) -> None:
        """PostgreSQL sends a run of consecutive events' identical documents once
        (driver_appends.copy_chained): each event still has its own row, the runs broken by
        an event with another document or with none, and a document seen again after
        another starts a new run."""
        moment = utcnow().replace(year=2024)
        shared = {"actor_kind": "admin"}

        def context_and_evidence(i: int) -> tuple[dict[str, str], dict[str, int]]:
            if i % 11 == 10:
                return {}, {}  # no document
            if i % 7 == 6:
                return shared, {"line": i}  # its own
            return shared, {}  # the run's

        news = [
            NewEvent(
                kind=EventKind.CONSENT_CHANGE,
                occurred_at=moment,
                actor="test",
                source="import",
                outcome="applied",
                contact_id=f"c{i}",
                topic="news",
                to_status="subscribed",
                evidence=context_and_evidence(i)[1],
                context=context_and_evidence(i)[0],
                address=f"p{i}@example.com",
            )
            for i in range(250)
        ]
        with chain.database.transaction(write=True) as session:
            for new in news:
                append_event(session, new)
        assert chain.verify() == VerifyResult(ok=True, checked=8 + len(news))
        with chain.database.transaction(write=False) as session:
            stored = read_events(session, col(AuditEvent.seq) > 8)
            documents = session.execute(
                text("SELECT count(*) FROM audit_evidence WHERE seq > 8")
            ).scalar_one()
        assert [(e.id, e.evidence, e.context) for e in stored] == [
            (n.id, n.evidence, n.context) for n in news
        ]
        assert documents == len([n for n in news if n.context or n.evidence])

    def test_sqlite_writes_the_columns_as_the_canonical_bytes(self, chain: Chain) -> None:
        """Verification on SQLite trusts `json_object` to rebuild the canonical bytes from the
        columns (and looks again in Python where it does not): it must for awkward text."""
        awkward = "".join(map(chr, range(1, 32))) + '"\\/\x7f\u2028\u00e9✓\U0001f600 '
        with chain.database.transaction(write=True) as session:
            for text_value in (awkward, "", " ", "\\u0041"):
                append_event(
                    session,
                    NewEvent(
                        kind=EventKind.TOPIC_CHANGE,
                        occurred_at=utcnow(),
                        actor=text_value or "x",
                        source="test",
                        outcome="applied",
                        topic=text_value,
                        reason=text_value,
                    ),
                )
        assert chain.verify().ok
        if not chain.url.startswith("sqlite"):
            return
        columns = ", ".join(
            f"'{name}', replace({name}, ' ', 'T') || 'Z'"
            if name in ("occurred_at", "recorded_at")
            else f"'{name}', {name}"
            for name in sorted(CANONICAL_KEYS)
        )
        differing = fetch(
            chain.url,
            f"SELECT seq FROM audit_event "
            f"WHERE CAST(json_object({columns}, 'v', {CANONICAL_VERSION}) AS BLOB) != canonical",
        )
        assert differing == []

    def test_recorded_at_never_runs_backwards_along_seq(self, chain: Chain) -> None:
        with chain.database.transaction(write=False) as session:
            times = [e.recorded_at for e in read_events(session)]
        assert times == sorted(times)


INSERT_EVENT = (
    f"INSERT INTO audit_event ({', '.join(CANONICAL_KEYS)}, canonical, hash) "
    f"VALUES ({', '.join(f':{name}' for name in CANONICAL_KEYS)}, :canonical, :hash)"
)


def forged_event(chain: Chain, *, seq: int, prev_hash: bytes, template: bytes) -> dict[str, object]:
    """A well-formed event that chains onto `prev_hash`, as a forger without the key makes it:
    a copy of the event before it (`template`) under a new seq and id."""
    values = orjson.loads(template)
    values.pop("v")
    values.update(seq=seq, id=f"forged-{seq}", evidence_digest=None)
    canonical = encode_event(values)
    ((recorded_at, occurred_at),) = fetch(
        chain.url,
        "SELECT recorded_at, occurred_at FROM audit_event WHERE seq = :seq",
        {"seq": seq - 1},
    )
    return {
        **values,
        "recorded_at": recorded_at,
        "occurred_at": occurred_at,
        "canonical": canonical,
        "hash": chain_hash(prev_hash, canonical).hex(),
    }


class TestAppendOnly:
    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE audit_event SET actor = 'someone else' WHERE seq = 1",
            "DELETE FROM audit_event WHERE seq = 8",
            "DELETE FROM audit_event",
            "UPDATE audit_evidence SET document = X'7B7D'",
        ],
    )
    def test_the_database_refuses_to_edit_the_trail(self, chain: Chain, sql: str) -> None:
        engine = create_engine(chain.url)
        try:
            with pytest.raises(DBAPIError, match="audit trail is append-only"), engine.begin() as c:
                c.execute(text(sql.replace("X'7B7D'", "'{}'") if "postgres" in chain.url else sql))
        finally:
            engine.dispose()
        assert chain.verify().ok

    def test_erasure_may_delete_evidence_documents(self, chain: Chain) -> None:
        engine = create_engine(chain.url)
        try:
            with engine.begin() as connection:
                deleted = connection.execute(text("DELETE FROM audit_evidence WHERE seq = 3"))
        finally:
            engine.dispose()
        assert deleted.rowcount == 1

    def test_triggers_are_back_after_tampering(self, chain: Chain) -> None:
        with triggers_off(chain.url) as connection:
            connection.execute(text("UPDATE audit_event SET actor = actor WHERE seq = 1"))
        engine = create_engine(chain.url)
        try:
            with pytest.raises(DBAPIError), engine.begin() as connection:
                connection.execute(text("DELETE FROM audit_event WHERE seq = 1"))
        finally:
            engine.dispose()
