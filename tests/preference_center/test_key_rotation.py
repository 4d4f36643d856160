"""Signing key rotation: a key added in front signs new links while the old ones keep working
on `/u`, `/p` and `/c`; a key retired (PREFCENTER_RETIRED_SIGNING_KEYS) gets its links the
"expired" page, never an error; a key nobody knows gets the "does not work" page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import ConfigError
from tests.preference_center.test_router import ONE_CLICK, act, visit
from tests.support.factories import issue_links, make_topic, record_change, row_counts, token_of
from tests.support.harness import issue_key, make_settings

OLD = "k202510:old-signing-secret-0123456789abcdefghijkl"
NEW = "k202611:new-signing-secret-0123456789abcdefghijkl"
ADA = "ada@example.com"
EXPIRED_TEXT = "This link is too old and no longer works. Nothing was changed."
DOES_NOT_WORK_TEXT = "The link may have been shortened or changed on the way."


@dataclass(frozen=True, slots=True)
class Links:
    unsubscribe: str
    manage: str
    confirm: str

    def paths(self) -> tuple[str, str, str]:
        return (
            f"/u/{token_of(self.unsubscribe)}",
            f"/p/{token_of(self.manage)}",
            f"/c/{token_of(self.confirm)}",
        )


def kid_of(url: str) -> str:
    return token_of(url).split(".")[1]


@contextmanager
def service(database_url: str, **overrides: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url, **overrides))) as client:
        yield client


def mail_links(client: TestClient, headers: dict[str, str], address: str) -> Links:
    """An unsubscribe and a preference link, and a pending double opt-in's confirmation."""
    issued = issue_links(client, headers, address, topic="newsletter")
    pending = record_change(client, headers, address, "subscribed", topic="digest")
    return Links(issued["unsubscribe_url"], issued["preferences_url"], pending["confirm_url"])


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(make_settings(database_url))
    yield database
    database.dispose()


@pytest.fixture
def headers(database: Database) -> dict[str, str]:
    return issue_key(database, Scope.ADMIN, name="crm")


@pytest.fixture
def old_links(database_url: str, headers: dict[str, str]) -> Links:
    """Links mailed while OLD was the only key."""
    with service(database_url, signing_keys=OLD) as client:
        make_topic(client, headers, "newsletter")
        make_topic(client, headers, "digest", double_opt_in=True)
        record_change(client, headers, ADA, "subscribed", topic="newsletter")
        links = mail_links(client, headers, ADA)
    assert {kid_of(url) for url in (links.unsubscribe, links.manage, links.confirm)} == {"k202510"}
    return links


class TestAddingAKey:
    def test_new_links_are_signed_with_the_key_in_front(
        self, database_url: str, headers: dict[str, str], old_links: Links
    ) -> None:
        with service(database_url, signing_keys=f"{NEW},{OLD}") as client:
            links = mail_links(client, headers, "bob@example.com")

        assert {kid_of(url) for url in (links.unsubscribe, links.manage, links.confirm)} == {
            "k202611"
        }

    def test_old_links_keep_working_on_every_page(
        self, database_url: str, headers: dict[str, str], old_links: Links
    ) -> None:
        with service(database_url, signing_keys=f"{NEW},{OLD}") as client:
            for path in old_links.paths():
                assert visit(client, "GET", path).status_code == 200, path
            assert act(client, f"/c/{token_of(old_links.confirm)}").status_code == 200
            assert visit(client, "POST", old_links.paths()[0], content=ONE_CLICK).status_code in (
                200,
                204,
            )

    def test_a_key_added_at_the_end_verifies_but_does_not_sign(
        self, database_url: str, headers: dict[str, str], old_links: Links
    ) -> None:
        with service(database_url, signing_keys=f"{OLD},{NEW}") as client:
            links = mail_links(client, headers, "cy@example.com")
        assert kid_of(links.unsubscribe) == "k202510"


class TestRetiringAKey:
    def test_its_links_get_the_expired_page_and_change_nothing(
        self, database_url: str, database: Database, old_links: Links
    ) -> None:
        before = row_counts(database)
        with service(database_url, signing_keys=NEW, retired_signing_keys="k202510") as client:
            for path in old_links.paths():
                for response in (
                    visit(client, "GET", path),
                    visit(client, "HEAD", path),
                    act(client, path),
                ):
                    assert response.status_code == 400, path
                    if response.request.method != "HEAD":
                        assert EXPIRED_TEXT in response.text, path
            one_click = visit(client, "POST", old_links.paths()[0], content=ONE_CLICK)
            assert one_click.status_code == 400
            assert EXPIRED_TEXT in one_click.text

        assert row_counts(database) == before

    def test_links_of_the_key_in_use_still_work(
        self, database_url: str, headers: dict[str, str], old_links: Links
    ) -> None:
        with service(database_url, signing_keys=f"{NEW},{OLD}") as client:
            links = mail_links(client, headers, "bob@example.com")
        with service(database_url, signing_keys=NEW, retired_signing_keys="k202510") as client:
            for path in links.paths():
                assert visit(client, "GET", path).status_code == 200, path

    def test_a_key_removed_without_retiring_it_gets_the_does_not_work_page(
        self, database_url: str, old_links: Links
    ) -> None:
        with service(database_url, signing_keys=NEW) as client:
            for path in old_links.paths()[:2]:
                response = visit(client, "GET", path)
                assert response.status_code == 400
                assert DOES_NOT_WORK_TEXT in response.text
                assert EXPIRED_TEXT not in response.text

    def test_the_expired_page_is_translated(self, database_url: str, old_links: Links) -> None:
        with service(database_url, signing_keys=NEW, retired_signing_keys="k202510") as client:
            response = visit(client, "GET", old_links.paths()[1], headers={"Accept-Language": "de"})
        assert response.status_code == 400
        assert EXPIRED_TEXT not in response.text
        assert 'lang="de"' in response.text


class TestRetiredKeySetting:
    def test_only_key_ids_are_taken(self) -> None:
        settings = make_settings("sqlite:///x.db", retired_signing_keys=OLD)
        with pytest.raises(ConfigError, match="key ids only"):
            settings.signing_key_ring()

    def test_a_key_cannot_be_in_use_and_retired(self) -> None:
        settings = make_settings(
            "sqlite:///x.db", signing_keys=f"{NEW},{OLD}", retired_signing_keys="k202510"
        )
        with pytest.raises(ConfigError, match="k202510"):
            settings.signing_key_ring()

    def test_several_ids_are_read(self) -> None:
        settings = make_settings("sqlite:///x.db", retired_signing_keys=" k1, k2 ,")
        assert settings.retired_signing_key_ids == frozenset({"k1", "k2"})
        assert settings.signing_key_ring()[0].kid == "t1"
