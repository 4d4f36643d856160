"""Sharing with third parties (issue 13), over HTTP on both engines: a sharing topic names its
party and is always opt-in; imports need each row's evidence; an API client cannot lift the
person's no; eligibility, the preference center and receipts answer for sharing apart from
marketing mail."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.consent.rules import ActorKind
from prefcenter.db import Database
from tests.preference_center.test_router import (
    one_click,
    parse_page,
    path_of,
    submit,
    visit,
)
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    error_fields,
    issue_links,
    lookup,
    make_change,
    make_contact,
    make_subscription,
    make_topic,
    record_change,
    subscription_status,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
BOB = "bob@example.com"
CAT = "cat@example.com"
ACME = "Acme Analytics Ltd"
CSV = {"Content-Type": "text/csv"}


def make_sharing(
    client: TestClient, headers: Headers, key: str = "acme", party: str = ACME, **fields: object
) -> Json:
    body: dict[str, object] = {
        "name": f"Share with {party}",
        "kind": "sharing",
        "consent": "opt_in",
        "third_party": party,
        **fields,
    }
    return make_topic(client, headers, key, **body)


@pytest.fixture
def acme(client: TestClient, admin_headers: Headers) -> str:
    return str(make_sharing(client, admin_headers)["key"])


@pytest.fixture
def newsletter(client: TestClient, admin_headers: Headers) -> str:
    return str(make_topic(client, admin_headers, "newsletter", name="Newsletter")["key"])


@pytest.fixture
def eligibility_headers(database: Database) -> Headers:
    return issue_key(database, Scope.ELIGIBILITY, name="partner-sync")


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def eligibility(client: TestClient, headers: Headers, topic: str, *emails: str) -> list[Json]:
    response = client.post(
        "/v1/eligibility", headers=headers, json={"topic": topic, "emails": list(emails)}
    )
    assert response.status_code == 200, response.text
    results: list[Json] = response.json()["results"]
    return results


def answer_of(client: TestClient, headers: Headers, topic: str, email: str) -> tuple[bool, str]:
    (result,) = eligibility(client, headers, topic, email)
    return result["allowed"], result["reason"]


class TestSharingTopic:
    def test_names_its_third_party(self, client: TestClient, admin_headers: Headers) -> None:
        response = client.put(
            "/v1/topics/acme",
            headers=admin_headers,
            json={"name": "Acme", "kind": "sharing", "consent": "opt_in", "third_party": ACME},
        )

        assert response.status_code == 201, response.text
        assert response.json()["third_party"] == ACME
        assert response.json()["kind"] == "sharing"
        listed = client.get("/v1/topics", headers=admin_headers).json()["topics"]
        assert [t["third_party"] for t in listed] == [ACME]

    def test_an_opt_out_default_is_refused(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        response = client.put(
            "/v1/topics/acme",
            headers=admin_headers,
            json={"name": "Acme", "kind": "sharing", "consent": "opt_out", "third_party": ACME},
        )

        problem = assert_problem(response, 422, "invalid-sharing-topic")
        assert error_fields(problem) == ["consent"]
        assert client.get("/v1/topics", headers=admin_headers).json()["topics"] == []

    def test_a_third_party_is_required_and_only_for_sharing(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        unnamed = {"name": "Acme", "kind": "sharing", "consent": "opt_in"}
        problem = assert_problem(
            client.put("/v1/topics/acme", headers=admin_headers, json=unnamed),
            422,
            "invalid-sharing-topic",
        )
        assert error_fields(problem) == ["third_party"]
        blank = {**unnamed, "third_party": "   "}
        assert_problem(client.put("/v1/topics/acme", headers=admin_headers, json=blank), 422)
        mail = {"name": "News", "kind": "marketing", "consent": "opt_in", "third_party": ACME}
        assert_problem(
            client.put("/v1/topics/news", headers=admin_headers, json=mail),
            422,
            "invalid-sharing-topic",
        )

    def test_the_party_is_fixed_once_created(
        self, client: TestClient, admin_headers: Headers, acme: str
    ) -> None:
        other = {"name": "Acme", "kind": "sharing", "consent": "opt_in", "third_party": "Beta"}
        assert_problem(
            client.put(f"/v1/topics/{acme}", headers=admin_headers, json=other),
            409,
            "topic-model-change",
        )
        renamed = make_sharing(client, admin_headers, name="Partner analytics")
        assert renamed["name"] == "Partner analytics"
        assert renamed["third_party"] == ACME

    def test_an_api_key_without_admin_cannot_create_one(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        body = {"name": "Acme", "kind": "sharing", "consent": "opt_in", "third_party": ACME}
        assert_problem(client.put("/v1/topics/acme", headers=writer_headers, json=body), 403)


class TestImport:
    def test_a_subscription_without_its_evidence_is_reported_and_not_applied(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        body = (
            "email,status,evidence\r\n"
            f"{ADA},subscribed,\r\n"
            f"{BOB},subscribed,signup form v3 2026-11-02 ticked 'share with Acme'\r\n"
            f"{CAT},unsubscribed,\r\n"
        ).encode()

        response = client.post(
            "/v1/imports",
            params={"topic": acme, "source": "crm"},
            headers={**admin_headers, **CSV},
            content=body,
        )

        assert response.status_code == 200, response.text
        report = response.json()
        assert report["refused_no_evidence"]["count"] == 1
        assert report["refused_no_evidence"]["sample"][0]["line"] == 2
        assert report["applied"] == {"subscribed": 1, "unsubscribed": 1}
        ada, bob, cat = lookup(client, admin_headers, ADA, BOB, CAT)
        assert subscription_status(ada, acme) is None
        assert subscription_status(bob, acme) == "subscribed"
        assert subscription_status(cat, acme) == "unsubscribed"
        assert answer_of(client, admin_headers, acme, ADA) == (False, "not_subscribed")
        (bob_event,) = [e for e in audit_events(database) if e.to_status == "subscribed"]
        assert bob_event.evidence["row_evidence"].startswith("signup form v3")

    def test_a_file_without_an_evidence_column_subscribes_nobody(
        self, client: TestClient, admin_headers: Headers, acme: str, newsletter: str
    ) -> None:
        body = f"email,status\r\n{ADA},subscribed\r\n".encode()

        def run(topic: str) -> Json:
            response = client.post(
                "/v1/imports",
                params={"topic": topic, "source": "crm"},
                headers={**admin_headers, **CSV},
                content=body,
            )
            assert response.status_code == 200, response.text
            report: Json = response.json()
            return report

        assert run(acme)["refused_no_evidence"]["count"] == 1
        # The same file subscribes to a marketing topic: the file is its evidence there.
        assert run(newsletter)["applied"]["subscribed"] == 1
        (ada,) = lookup(client, admin_headers, ADA)
        assert subscription_status(ada, acme) is None


class TestApiAfterThePersonDeclined:
    def decline_on_the_page(self, client: TestClient, links_headers: Headers, acme: str) -> None:
        url = path_of(issue_links(client, links_headers, ADA)["preferences_url"])
        page = parse_page(visit(client, "GET", url))
        assert page.boxes[acme] is True
        saved = parse_page(submit(client, page, off={acme}))
        assert saved.boxes[acme] is False

    def test_an_api_subscription_after_the_page_is_a_409(
        self,
        client: TestClient,
        writer_headers: Headers,
        links_headers: Headers,
        admin_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="signup_form")
        self.decline_on_the_page(client, links_headers, acme)

        response = client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": ADA, "topic": acme, "status": "subscribed", "source": "crm_sync"},
        )

        assert_problem(response, 409, "recipient-opt-out")
        assert answer_of(client, admin_headers, acme, ADA) == (False, "unsubscribed")

    def test_an_api_subscription_after_one_click_or_support_is_a_409(
        self,
        client: TestClient,
        writer_headers: Headers,
        links_headers: Headers,
        admin_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="signup_form")
            make_subscription(session, BOB, acme, source="signup_form")
        unsubscribe = issue_links(client, links_headers, ADA, topic=acme)["unsubscribe_url"]
        assert one_click(client, path_of(unsubscribe)).status_code == 200
        with database.transaction(write=True) as session:
            make_subscription(
                session,
                BOB,
                acme,
                "unsubscribed",
                actor=ActorKind.ADMIN,
                source="support",
                reason="ticket 123: asked us to stop sharing",
            )

        for email in (ADA, BOB):
            record_change(
                client, writer_headers, email, "subscribed", topic=acme, source="api", expect=409
            )
            assert answer_of(client, admin_headers, acme, email) == (False, "unsubscribed")

    def test_an_admin_with_a_reason_and_evidence_may_lift_it(
        self,
        client: TestClient,
        links_headers: Headers,
        admin_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="signup_form")
        self.decline_on_the_page(client, links_headers, acme)
        record_change(
            client, admin_headers, ADA, "subscribed", topic=acme, source="support", expect=422
        )

        record_change(
            client,
            admin_headers,
            ADA,
            "subscribed",
            topic=acme,
            source="support",
            reason="ticket 9: asked in writing to share again",
            evidence={"letter": "scan-2026-11-30.pdf"},
        )

        assert answer_of(client, admin_headers, acme, ADA) == (True, "subscribed")

    def test_an_opt_out_the_api_itself_recorded_may_be_reversed_by_it(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, "unsubscribed", source="crm_sync")

        record_change(client, writer_headers, ADA, "subscribed", topic=acme, source="crm_sync")

        assert answer_of(client, admin_headers, acme, ADA) == (True, "subscribed")


class TestEligibility:
    def test_answers_may_we_share_from_the_sharing_consent_only(
        self,
        client: TestClient,
        eligibility_headers: Headers,
        database: Database,
        acme: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="signup_form")
            make_subscription(session, BOB, acme, "unsubscribed")
            # Cat opted out of all marketing, then agreed to sharing: marketing is mail,
            # sharing is not, so the one does not decide the other.
            make_change(session, CAT, "unsubscribed", source="complaint")
            make_subscription(session, CAT, acme, source="signup_form")

        results = eligibility(
            client, eligibility_headers, acme, ADA, BOB, CAT, "dan@example.com", "nope"
        )

        assert [(r["allowed"], r["reason"]) for r in results] == [
            (True, "subscribed"),
            (False, "unsubscribed"),
            (True, "subscribed"),
            (False, "not_subscribed"),
            (False, "invalid_email"),
        ]
        stream = client.post(
            f"/v1/eligibility/stream?topic={acme}",
            headers={**eligibility_headers, "Content-Type": "text/plain"},
            content=f"{ADA}\n{BOB}\ndan@example.com\n".encode(),
        )
        assert stream.status_code == 200, stream.text
        assert stream.text.splitlines()[1:] == [
            f"{ADA},true,subscribed",
            f"{BOB},false,unsubscribed",
            "dan@example.com,false,not_subscribed",
        ]
        audience = client.get(f"/v1/topics/{acme}/audience", headers=eligibility_headers)
        assert audience.status_code == 200, audience.text
        assert sorted(line.split(",")[0] for line in audience.text.splitlines()[1:]) == [ADA, CAT]

    def test_an_erased_address_is_never_shared(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        eligibility_headers: Headers,
        acme: str,
    ) -> None:
        answer = record_change(
            client, writer_headers, ADA, "subscribed", topic=acme, source="signup_form"
        )
        erased = client.delete(f"/v1/contacts/{answer['contact_id']}", headers=admin_headers)
        assert erased.status_code in (200, 204), erased.text

        assert answer_of(client, eligibility_headers, acme, ADA) == (False, "suppressed")

    def test_mail_topics_still_follow_the_marketing_opt_out(
        self,
        client: TestClient,
        eligibility_headers: Headers,
        database: Database,
        acme: str,
        newsletter: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, newsletter)
            make_subscription(session, ADA, acme, source="signup_form")
            make_change(session, ADA, "unsubscribed")

        assert answer_of(client, eligibility_headers, newsletter, ADA) == (False, "suppressed")
        assert answer_of(client, eligibility_headers, acme, ADA) == (True, "subscribed")


class TestReceipt:
    def test_lists_every_party_the_person_agreed_to(
        self, client: TestClient, admin_headers: Headers, database: Database, acme: str
    ) -> None:
        make_sharing(client, admin_headers, "beta", "Beta Payments GmbH")
        make_sharing(client, admin_headers, "gamma", "Gamma Ads")
        make_sharing(client, admin_headers, "delta", "Delta Labs", double_opt_in=True)
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="signup_form")
            make_subscription(session, ADA, "beta", source="form")
            make_subscription(session, ADA, "gamma", source="form")
            make_subscription(session, ADA, "gamma", "unsubscribed", source="form")
            make_subscription(session, ADA, "delta", source="form")
            contact_id = make_contact(session, ADA).public_id

        response = client.get(f"/v1/contacts/{contact_id}/receipt", headers=admin_headers)

        assert response.status_code == 200, response.text
        receipt = response.json()["receipt"]
        assert receipt["sharedWith"] == ["Acme Analytics Ltd", "Beta Payments GmbH"]
        purposes = {s["serviceKey"]: s["purposes"][0] for s in receipt["services"]}
        assert purposes[acme]["thirdPartyDisclosure"] is True
        assert purposes[acme]["thirdPartyName"] == ACME
        assert purposes["delta"]["state"] == "pending"


class TestPreferenceCenter:
    def test_shows_sharing_apart_naming_the_party_unticked(
        self,
        client: TestClient,
        links_headers: Headers,
        database: Database,
        acme: str,
        newsletter: str,
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, newsletter)
        url = path_of(issue_links(client, links_headers, ADA)["preferences_url"])

        response = visit(client, "GET", url)

        page = parse_page(response)
        assert page.boxes == {newsletter: True, acme: False}
        assert "Sharing with others" in page.text
        assert f"Shared with {ACME}." in page.text
        # The section comes after the marketing topics, in its own fieldset.
        html = response.text
        assert html.index("Newsletter") < html.index("Sharing with others") < html.index(ACME)
        assert html.count("<fieldset") == 2

    def test_german_page_names_the_section(
        self, client: TestClient, links_headers: Headers, database: Database, acme: str
    ) -> None:
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, acme, source="form")
        url = path_of(issue_links(client, links_headers, ADA)["preferences_url"])

        page = parse_page(visit(client, "GET", url, headers={"Accept-Language": "de"}))

        assert "Weitergabe an andere" in page.text
        assert f"Weitergabe an {ACME}." in page.text

    def test_turning_on_from_the_page_follows_the_mailbox_rule(
        self,
        client: TestClient,
        writer_headers: Headers,
        links_headers: Headers,
        admin_headers: Headers,
        acme: str,
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed", source="api")  # makes Ada
        url = path_of(issue_links(client, links_headers, ADA)["preferences_url"])

        saved = parse_page(submit(client, parse_page(visit(client, "GET", url)), on={acme}))

        # Never declined: on at once (an opt-out from all marketing does not hold it back).
        assert saved.boxes[acme] is True
        assert answer_of(client, admin_headers, acme, ADA) == (True, "subscribed")
        off = parse_page(submit(client, saved, off={acme}))
        assert off.boxes[acme] is False

        again = submit(client, off, on={acme})

        # Declined by the person: turning it back on needs the mailbox (no mail here: refused).
        assert parse_page(again).boxes[acme] is False
        assert "stay off" in parse_page(again).text
        assert answer_of(client, admin_headers, acme, ADA) == (False, "unsubscribed")

    def test_unsubscribe_from_all_neither_grants_nor_keeps_sharing(
        self,
        client: TestClient,
        database: Database,
        links_headers: Headers,
        admin_headers: Headers,
        acme: str,
        newsletter: str,
    ) -> None:
        make_sharing(client, admin_headers, "beta", "Beta Payments GmbH")
        make_sharing(client, admin_headers, "gamma", "Gamma Ads")
        with database.transaction(write=True) as session:
            for topic in (newsletter, acme, "beta"):
                make_subscription(session, ADA, topic, source="form")
        url = path_of(issue_links(client, links_headers, ADA)["preferences_url"])
        page = parse_page(visit(client, "GET", url))

        # Beta unticked (a withdrawal goes through), Gamma ticked (a grant waits for "save").
        after = parse_page(
            submit(client, page, on={"gamma"}, off={"beta"}, action="unsubscribe_all")
        )

        assert after.boxes == {newsletter: False, acme: True, "beta": False, "gamma": False}
        (ada,) = lookup(client, admin_headers, ADA)
        assert ada["suppressed"] is True
        assert subscription_status(ada, acme) == "subscribed"
        assert subscription_status(ada, "beta") == "unsubscribed"
        assert subscription_status(ada, "gamma") is None


class TestOneClick:
    def test_unsubscribing_from_all_marketing_leaves_sharing_as_it_was(
        self,
        client: TestClient,
        database: Database,
        links_headers: Headers,
        admin_headers: Headers,
        acme: str,
        newsletter: str,
    ) -> None:
        make_sharing(client, admin_headers, "beta", "Beta Payments GmbH")
        with database.transaction(write=True) as session:
            make_subscription(session, ADA, newsletter)
            make_subscription(session, ADA, acme, source="form")
        for token_topic in (newsletter, None):
            fields = {"topic": token_topic} if token_topic else {}
            url = issue_links(client, links_headers, ADA, **fields)["unsubscribe_url"]
            assert one_click(client, path_of(url)).status_code == 200

        (ada,) = lookup(client, admin_headers, ADA)
        assert ada["suppressed"] is True
        assert subscription_status(ada, newsletter) == "unsubscribed"
        assert subscription_status(ada, acme) == "subscribed"
        assert subscription_status(ada, "beta") is None
        assert answer_of(client, admin_headers, acme, ADA) == (True, "subscribed")
        assert answer_of(client, admin_headers, "beta", ADA) == (False, "not_subscribed")
