"""Amazon SES through SNS: the certificate URL rule on its own, the string to sign, and
signed notifications over HTTP (both signature versions), each flipped byte refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from prefcenter.inbound import sns
from prefcenter.inbound.errors import SenderNotAllowed
from tests.inbound.esp import CERT_URL, TOPIC_ARN, SnsSigner, fixture
from tests.inbound.helpers import eligibility, subscribe, written
from tests.support.factories import Headers, assert_problem, make_topic


class TestCertificateUrl:
    @pytest.mark.parametrize(
        "url",
        [
            CERT_URL,
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
            "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
        ],
    )
    def test_sns_certificate_urls_are_allowed(self, url: str) -> None:
        assert sns.check_certificate_url(url) == url

    @pytest.mark.parametrize(
        "url",
        [
            # not HTTPS
            "http://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            # a host that only ends like SNS's, or only starts like it
            "https://evil-sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-west-2.amazonaws.com.evil.example/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-west-2.amazonaws.com@evil.example/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://user@sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://s3.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-west-2.amazonaws.com:8443/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            # another file on the right host
            "https://sns.us-west-2.amazonaws.com/evil.pem",
            "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-zz.pem",
            "https://sns.us-west-2.amazonaws.com/x/../SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem?x=1",
            "",
            None,
            42,
        ],
    )
    def test_anything_else_is_refused_unfetched(self, url: Any) -> None:
        with pytest.raises(SenderNotAllowed):
            sns.check_certificate_url(url)

    def test_a_subscribe_url_must_confirm_this_topic_at_sns(self) -> None:
        good = fixture("sns_subscription_confirmation.json")["SubscribeURL"]
        assert sns.check_subscribe_url(good, topic_arn=TOPIC_ARN) == good
        for bad in (
            good.replace("https://", "http://"),
            good.replace("sns.us-west-2.amazonaws.com", "evil.example"),
            good.replace("ConfirmSubscription", "Unsubscribe"),
            good.replace("?Action", "evil?Action"),
        ):
            with pytest.raises(SenderNotAllowed):
                sns.check_subscribe_url(bad, topic_arn=TOPIC_ARN)
        with pytest.raises(SenderNotAllowed):
            sns.check_subscribe_url(good, topic_arn="arn:aws:sns:us-west-2:123456789012:Other")


def test_string_to_sign_is_the_documented_one() -> None:
    message = fixture("sns_notification.json")
    assert sns.string_to_sign(message) == (
        b"Message\nHello world!\n"
        b"MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n"
        b"Subject\nMy First Message\n"
        b"Timestamp\n2012-05-02T00:54:06.655Z\n"
        b"TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n"
        b"Type\nNotification\n"
    )
    del message["Subject"]
    assert b"Subject" not in sns.string_to_sign(message)


def post(client: TestClient, message: dict[str, Any] | bytes) -> Any:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    # As SNS sends it: JSON as text/plain.
    return client.post(
        "/v1/inbound/ses", content=body, headers={"Content-Type": "text/plain; charset=UTF-8"}
    )


def complaint_for(email: str) -> dict[str, Any]:
    content: dict[str, Any] = fixture("ses_complaint.json")
    content["complaint"]["complainedRecipients"] = [{"emailAddress": email}]
    return content


class TestNotifications:
    @pytest.mark.parametrize("version", ["1", "2"])
    def test_a_signed_complaint_suppresses_the_address(
        self,
        client: TestClient,
        admin_headers: Headers,
        sns: SnsSigner,
        version: str,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "richard@example.com", "newsletter")
        message = sns.notification(fixture("ses_complaint.json"), version=version)
        response = post(client, message)
        assert response.status_code == 200, response.text
        assert response.json()["recorded"] == 1
        reasons = eligibility(client, admin_headers, "newsletter", "richard@example.com")
        assert reasons == ["suppressed"]

    def test_the_certificate_is_fetched_once(
        self, client: TestClient, admin_headers: Headers, sns: SnsSigner
    ) -> None:
        for _ in range(3):
            assert post(client, sns.notification(fixture("ses_delivery.json"))).status_code == 200
        assert sns.fetched == [CERT_URL]

    @pytest.mark.parametrize("field", ["Message", "MessageId", "Timestamp", "Signature", "Type"])
    def test_every_flipped_byte_is_refused_and_changes_nothing(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        sns: SnsSigner,
        field: str,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "richard@example.com", "newsletter")
        message = sns.notification(complaint_for("richard@example.com"))
        before = written(database)
        value: str = message[field]
        for index in range(0, len(value), max(1, len(value) // 12)):
            tampered = dict(message)
            tampered[field] = _flip(value, index)
            response = post(client, tampered)
            assert response.status_code in (400, 401, 403), (field, index, response.text)
        assert written(database) == before
        assert eligibility(client, admin_headers, "newsletter", "richard@example.com") == [
            "subscribed"
        ]

    def test_a_flipped_bit_anywhere_in_the_body_is_refused(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        subscribe(client, admin_headers, "richard@example.com", "newsletter")
        message = sns.notification(complaint_for("richard@example.com"))
        # SNS does not sign `UnsubscribeURL`: a change there leaves the same signed message.
        del message["UnsubscribeURL"]
        body = json.dumps(message).encode()
        before = written(database)
        for index in range(len(body)):
            tampered = bytearray(body)
            tampered[index] ^= 0x01
            response = post(client, bytes(tampered))
            assert response.status_code in (400, 401, 403), (index, response.text)
        assert written(database) == before

    def test_an_old_message_is_refused(
        self, client: TestClient, admin_headers: Headers, database: Database, sns: SnsSigner
    ) -> None:
        old = datetime.now(UTC) - timedelta(days=2)
        message = sns.notification(complaint_for("richard@example.com"), sent_at=old)
        assert_problem(post(client, message), 401, "signature-invalid")

    def test_a_topic_not_configured_is_forbidden_before_any_fetch(
        self, client: TestClient, sns: SnsSigner
    ) -> None:
        message = sns.notification(
            fixture("ses_complaint.json"), topic_arn="arn:aws:sns:us-west-2:999999999999:Evil"
        )
        assert_problem(post(client, message), 403, "sender-not-allowed")
        assert sns.fetched == []

    def test_a_certificate_url_elsewhere_is_forbidden_and_never_fetched(
        self, client: TestClient, sns: SnsSigner
    ) -> None:
        message = sns.notification(fixture("ses_complaint.json"))
        message["SigningCertURL"] = "https://evil.example/SimpleNotificationService-00ff.pem"
        assert_problem(post(client, message), 403, "sender-not-allowed")
        assert sns.fetched == []

    def test_a_made_up_certificate_name_is_fetched_once_not_per_message(
        self, client: TestClient, sns: SnsSigner
    ) -> None:
        made_up = CERT_URL.replace("f3ecfb72", "00000000")
        for _ in range(3):
            message = sns.notification(fixture("ses_complaint.json"))
            message["SigningCertURL"] = made_up
            assert_problem(post(client, message), 401, "signature-invalid")
        assert sns.fetched == [made_up]

    def test_signature_version_must_be_1_or_2(self, client: TestClient, sns: SnsSigner) -> None:
        message = sns.notification(fixture("ses_complaint.json"))
        message["SignatureVersion"] = "3"
        assert_problem(post(client, message), 401, "signature-invalid")

    def test_a_message_signed_by_another_key_is_refused(
        self, client: TestClient, sns: SnsSigner
    ) -> None:
        other = SnsSigner.create()
        message = other.notification(fixture("ses_complaint.json"))
        assert_problem(post(client, message), 401, "signature-invalid")

    def test_not_json_is_a_400(self, client: TestClient) -> None:
        assert_problem(post(client, b"not json"), 400, "payload-invalid")


class TestSubscriptions:
    def test_a_signed_confirmation_visits_the_subscribe_url(
        self, client: TestClient, sns: SnsSigner, confirmed: list[str]
    ) -> None:
        message = fixture("sns_subscription_confirmation.json")
        message["Timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        response = post(client, sns.sign(message))
        assert response.status_code == 200, response.text
        assert confirmed == [message["SubscribeURL"]]

    def test_an_unsigned_confirmation_visits_nothing(
        self, client: TestClient, sns: SnsSigner, confirmed: list[str]
    ) -> None:
        message = sns.sign(fixture("sns_subscription_confirmation.json"))
        message["Timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        assert_problem(post(client, message), 401, "signature-invalid")
        assert confirmed == []

    def test_a_confirmation_pointing_elsewhere_visits_nothing(
        self, client: TestClient, sns: SnsSigner, confirmed: list[str]
    ) -> None:
        message = fixture("sns_subscription_confirmation.json")
        message["Timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        message["SubscribeURL"] = "https://evil.example/?Action=ConfirmSubscription"
        assert_problem(post(client, sns.sign(message)), 403, "sender-not-allowed")
        assert confirmed == []


def _flip(text: str, index: int) -> str:
    """The text with one character changed (to another of base64's alphabet where it is one)."""
    char = text[index]
    replacement = "B" if char == "A" else "A"
    if char == "=":
        replacement = base64.b64encode(b"x").decode()[0]
    return text[:index] + replacement + text[index + 1 :]
