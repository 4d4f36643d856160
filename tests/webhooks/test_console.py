"""The console's "Webhooks" page, on both engines: each endpoint with its newest deliveries
(status, attempts, last error) and a replay button that needs the session's CSRF token;
and `prefcenter webhooks list|create|rotate|replay`."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter import cli
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.admin.console import form_token, sign_in_with_key
from tests.support.factories import Headers
from tests.webhooks.helpers import change, create_endpoint, deliveries, make_sender, run
from tests.webhooks.receiver import Inbox, Receiver, receiver


class TestPage:
    def test_endpoints_with_their_deliveries_and_a_replay_that_needs_the_token(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        inbox = Inbox(answer=lambda _: (503, {}))
        with receiver(inbox) as hooks:
            endpoint = create_endpoint(client, admin, hooks.url + "?<b>x</b>")
            change(client, writer, "ada@example.com", "subscribed")
            run(make_sender(database, settings))
        sign_in_with_key(client, admin)

        page = client.get("/admin/webhooks")
        assert page.status_code == 200
        text = page.text
        assert endpoint["id"] in text
        assert "<b>x</b>" not in text  # the URL is escaped
        assert html.escape(hooks.url + "?<b>x</b>") in text
        assert "consent.changed" in text
        assert "HTTP 503" in text
        assert re.search(r"<td>pending</td>\s*<td>1</td>", text)
        assert endpoint["secret"] not in text
        assert 'href="/admin/webhooks" aria-current="page"' in text

        path = f"/admin/webhooks/{endpoint['id']}/replay"
        refused = client.post(path, data={"after_seq": "0"}, follow_redirects=False)
        assert refused.status_code == 403
        assert len(deliveries(database)) == 1
        token = form_token(text)
        bad = client.post(path, data={"csrf_token": token, "after_seq": "x"})
        assert bad.status_code == 422
        done = client.post(
            path, data={"csrf_token": token, "after_seq": "0"}, follow_redirects=False
        )
        assert done.status_code == 303
        assert "queued=1" in done.headers["location"]
        assert [r.status for r in deliveries(database)] == ["cancelled", "queued"]
        assert "1 deliveries queued" in client.get(done.headers["location"]).text
        events = client.get("/v1/audit", headers=admin).json()["events"]
        replayed = [e for e in events if e["outcome"] == "replayed"]
        assert replayed[0]["source"] == "console"

    def test_signed_out_is_sent_to_sign_in(self, client: TestClient) -> None:
        answer = client.get("/admin/webhooks", follow_redirects=False)
        assert answer.status_code == 303


class TestCli:
    @pytest.fixture(autouse=True)
    def environment(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", settings.signing_keys)
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", settings.audit_key)
        monkeypatch.setenv("PREFCENTER_MAIL_URL", "off")
        monkeypatch.setenv("PREFCENTER_WEBHOOKS_ALLOW_PRIVATE", "true")

    def test_create_list_rotate_replay(
        self,
        client: TestClient,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        runner = CliRunner()
        created = runner.invoke(
            cli.cli, ["webhooks", "create", hooks.url, "--event", "consent.changed"]
        )
        assert created.exit_code == 0, created.output
        secret = created.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_")
        listed = runner.invoke(cli.cli, ["webhooks", "list"])
        assert listed.exit_code == 0
        endpoint_id = re.search(r"ep_[a-z0-9]+", listed.stdout)
        assert endpoint_id is not None
        assert secret not in listed.stdout

        change(client, writer, "ada@example.com", "subscribed")
        run(make_sender(database, settings))
        hooks.inbox.received()[0].verified_by(secret)

        rotated = runner.invoke(cli.cli, ["webhooks", "rotate", endpoint_id.group(0)])
        assert rotated.exit_code == 0, rotated.output
        new = rotated.stdout.strip().splitlines()[-1]
        assert new.startswith("whsec_")
        assert new != secret

        replayed = runner.invoke(
            cli.cli, ["webhooks", "replay", endpoint_id.group(0), "--after-seq", "0"]
        )
        assert replayed.exit_code == 0, replayed.output
        assert "queued 1" in replayed.output
        run(make_sender(database, settings))
        again = hooks.inbox.received()[1]
        assert again.verified_by(new) == again.verified_by(secret)
        assert again.webhook_id == hooks.inbox.received()[0].webhook_id

    def test_refusals_exit_non_zero(self) -> None:
        runner = CliRunner()
        bad = runner.invoke(cli.cli, ["webhooks", "create", "ftp://x", "--event", "nope"])
        assert bad.exit_code == 2
        url = runner.invoke(cli.cli, ["webhooks", "create", "https://u:pw@example.com/x"])
        assert url.exit_code == 1
        assert "password" in url.output
        unknown = runner.invoke(cli.cli, ["webhooks", "rotate", "ep_nope"])
        assert unknown.exit_code == 1
