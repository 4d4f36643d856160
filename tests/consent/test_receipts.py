"""`GET /v1/contacts/{contact_id}/receipt`: a Kantara-shaped consent receipt whose Ed25519
signature over its RFC 8785 bytes verifies with the published key, and fails on any change."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.support.factories import Headers, Json, assert_problem, make_topic, record_change
from tests.support.harness import issue_key

ADA = "Ada@Example.com"


@pytest.fixture
def ada(client: TestClient, admin_headers: Headers, writer_headers: Headers) -> str:
    make_topic(client, admin_headers, "news", description="Monthly product news")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    record_change(
        client,
        writer_headers,
        ADA,
        "subscribed",
        topic="news",
        source="signup_form",
        evidence={"notice_version": "2026-03", "score": 0.5, "page": "/join"},
    )
    answer = record_change(client, writer_headers, ADA, "unsubscribed", topic="offers")
    contact_id: str = answer["contact_id"]
    return contact_id


def receipt_of(client: TestClient, headers: Headers, contact_id: str) -> Json:
    response = client.get(f"/v1/contacts/{contact_id}/receipt", headers=headers)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def verify(receipt: dict[str, Any], signature: Json) -> None:
    """What a third party does: canonicalise `receipt` (RFC 8785), check Ed25519."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["public_key"]))
    key.verify(base64.b64decode(signature["value"]), rfc8785.dumps(receipt))


class TestReceipt:
    def test_lists_current_consents_with_their_evidence(
        self, client: TestClient, reader_headers: Headers, ada: str
    ) -> None:
        receipt = receipt_of(client, reader_headers, ada)["receipt"]

        assert receipt["version"] == "KI-CR-v1.1.0"
        assert receipt["piiPrincipalId"] == ADA
        assert receipt["contactId"] == ada
        for field in (
            "jurisdiction",
            "consentTimestamp",
            "collectionMethod",
            "consentReceiptID",
            "publicKey",
            "language",
            "piiControllers",
            "policyUrl",
            "services",
            "sensitive",
            "spiCat",
        ):
            assert field in receipt
        news, offers = receipt["services"]
        assert news["serviceKey"] == "news"
        (purpose,) = news["purposes"]
        assert purpose["purpose"] == "Monthly product news"
        assert purpose["state"] == "subscribed"
        assert purpose["consentType"] == "EXPLICIT"
        assert purpose["collectionMethod"] == "signup_form"
        assert purpose["noticeVersion"] == "2026-03"
        assert purpose["evidence"] == {
            "notice_version": "2026-03",
            "score": 0.5,
            "page": "/join",
        }
        assert offers["purposes"][0]["state"] == "unsubscribed"
        assert offers["purposes"][0]["consentType"] == "IMPLICIT"
        assert "noticeVersion" not in offers["purposes"][0]

    def test_names_the_controller_from_settings(
        self, client: TestClient, reader_headers: Headers, ada: str, settings: Settings
    ) -> None:
        receipt = receipt_of(client, reader_headers, ada)["receipt"]
        (controller,) = receipt["piiControllers"]
        assert controller["piiControllerUrl"] == settings.base_url

    def test_each_receipt_has_its_own_id(
        self, client: TestClient, reader_headers: Headers, ada: str
    ) -> None:
        first = receipt_of(client, reader_headers, ada)["receipt"]["consentReceiptID"]
        second = receipt_of(client, reader_headers, ada)["receipt"]["consentReceiptID"]
        assert first != second


class TestSignature:
    def test_verifies_with_the_published_key(
        self, client: TestClient, reader_headers: Headers, ada: str, settings: Settings
    ) -> None:
        body = receipt_of(client, reader_headers, ada)
        keys = AuditKeys.from_settings(settings)

        verify(body["receipt"], body["signature"])
        assert body["signature"]["public_key"] == keys.public_key_b64
        assert body["signature"]["key_id"] == keys.key_id
        assert body["receipt"]["publicKey"] == keys.public_key_b64
        assert body["signature"]["algorithm"] == "Ed25519"

    def test_fails_when_any_value_changes(
        self, client: TestClient, reader_headers: Headers, ada: str
    ) -> None:
        body = receipt_of(client, reader_headers, ada)
        receipt = body["receipt"]
        edits: list[tuple[str, Callable[[Json], object]]] = [
            ("state", lambda r: r["services"][1]["purposes"][0].update(state="subscribed")),
            ("principal", lambda r: r.update(piiPrincipalId="eve@example.com")),
            ("evidence", lambda r: r["services"][0]["purposes"][0]["evidence"].update(score=0.6)),
            ("extra", lambda r: r.update(note="x")),
        ]
        for name, edit in edits:
            changed = copy.deepcopy(receipt)
            edit(changed)
            with pytest.raises(InvalidSignature):
                verify(changed, body["signature"])
            assert changed != receipt, name

    def test_fails_when_a_byte_of_the_signed_bytes_changes(
        self, client: TestClient, reader_headers: Headers, ada: str
    ) -> None:
        body = receipt_of(client, reader_headers, ada)
        signed = bytearray(rfc8785.dumps(body["receipt"]))
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(body["signature"]["public_key"]))
        signature = base64.b64decode(body["signature"]["value"])
        key.verify(signature, bytes(signed))
        for index in (0, len(signed) // 2, len(signed) - 1):
            tampered = bytearray(signed)
            tampered[index] ^= 0x01
            with pytest.raises(InvalidSignature):
                key.verify(signature, bytes(tampered))


class TestRefused:
    def test_unknown_or_erased_contact_is_a_404(
        self, client: TestClient, reader_headers: Headers, admin_headers: Headers, ada: str
    ) -> None:
        assert_problem(client.get("/v1/contacts/nobody/receipt", headers=reader_headers), 404)
        assert client.delete(f"/v1/contacts/{ada}", headers=admin_headers).status_code == 200
        assert_problem(client.get(f"/v1/contacts/{ada}/receipt", headers=reader_headers), 404)

    def test_needs_the_read_scope(self, client: TestClient, database: Database, ada: str) -> None:
        headers = issue_key(database, Scope.LINKS, name="links")
        assert_problem(client.get(f"/v1/contacts/{ada}/receipt", headers=headers), 403)
