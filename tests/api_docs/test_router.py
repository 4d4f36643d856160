"""`/docs`: switched off by `PREFCENTER_API_DOCS`, and when on, built from files the service
serves itself under a CSP that lets no other script run. `/redoc` is never served (ReDoc loads
its logo from its vendor's CDN)."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prefcenter.api_docs.router import ASSETS
from prefcenter.app import create_app
from prefcenter.settings import Settings
from tests.support.factories import assert_problem
from tests.support.harness import make_settings

POSTGRES_URL = "postgresql+psycopg://docs@127.0.0.1:1/unused"  # never connected to


class References(HTMLParser):
    """Every URL a page loads (`src`, `href`), and the text of any inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self.urls += [v for k, v in attrs if k.startswith("data-") and v and "/" in v]
        self._in_inline_script = tag == "script" and not found.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts.append(data)


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    parser.close()
    return parser


def client_for(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def docs_on(tmp_path: Path) -> Iterator[TestClient]:
    yield from client_for(make_settings(f"sqlite:///{tmp_path / 'docs.db'}", api_docs=True))


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


class TestSwitchedOff:
    @pytest.mark.parametrize(
        "path", ["/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/docs/oauth2-redirect"]
    )
    def test_the_documentation_is_404(self, tmp_path: Path, path: str) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'docs.db'}", api_docs=False)
        for client in client_for(settings):
            assert_problem(client.get(path), 404)

    def test_the_openapi_document_is_still_served(self, tmp_path: Path) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'docs.db'}", api_docs=False)
        for client in client_for(settings):
            answer = client.get("/openapi.json")
            assert answer.status_code == 200
            assert answer.json()["info"]["title"] == "prefcenter"

    def test_off_by_default_with_postgresql_on_with_sqlite(self, tmp_path: Path) -> None:
        assert make_settings(POSTGRES_URL).api_docs_enabled is False
        assert make_settings(f"sqlite:///{tmp_path / 'docs.db'}").api_docs_enabled is True
        assert make_settings(POSTGRES_URL, api_docs=True).api_docs_enabled is True
        for client in client_for(make_settings(POSTGRES_URL)):
            assert_problem(client.get("/docs"), 404)

    def test_read_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFCENTER_API_DOCS", "false")
        assert Settings(_env_file=None, database_url="sqlite:///x.db").api_docs_enabled is False


class TestSwitchedOn:
    def test_the_page_loads_only_files_from_this_origin(self, docs_on: TestClient) -> None:
        answer = docs_on.get("/docs")

        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        found = references(answer.text)
        assert found.urls, answer.text
        assert [u for u in found.urls if not u.startswith("/") or u.startswith("//")] == []
        assert "https://" not in answer.text
        assert "cdn" not in answer.text
        # No inline script: the CSP below could not let one run.
        assert found.inline_scripts == []

    def test_every_file_the_page_loads_is_served(self, docs_on: TestClient) -> None:
        for url in references(docs_on.get("/docs").text).urls:
            answer = docs_on.get(url)
            assert answer.status_code == 200, url
            if url.startswith("/docs/assets/"):
                source, media_type = ASSETS[url.removeprefix("/docs/assets/")]
                assert answer.headers["content-type"].startswith(media_type)
                assert answer.headers["x-content-type-options"] == "nosniff"
                assert answer.content == source.read_bytes()

    def test_redoc_is_not_offered(self, docs_on: TestClient) -> None:
        assert_problem(docs_on.get("/redoc"), 404)

    def test_swagger_ui_is_the_real_bundle(self, docs_on: TestClient) -> None:
        bundle = docs_on.get("/docs/assets/swagger-ui-bundle.js")

        assert bundle.status_code == 200
        assert "SwaggerUIBundle" in bundle.text
        assert len(bundle.content) > 500_000

    def test_a_strict_csp_lets_only_this_origins_scripts_run(self, docs_on: TestClient) -> None:
        answer = docs_on.get("/docs")

        csp = csp_directives(answer.headers["content-security-policy"])
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"]
        assert csp["style-src"] == ["'self'"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert csp["base-uri"] == ["'none'"]
        assert csp["form-action"] == ["'none'"]
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"

    @pytest.mark.parametrize(
        "name", ["router.py", "..%2Frouter.py", "__init__.py", "swagger-ui.css.map", "x" * 65]
    )
    def test_nothing_but_the_listed_files_is_served(self, docs_on: TestClient, name: str) -> None:
        answer = docs_on.get(f"/docs/assets/{name}")

        assert answer.status_code in (404, 422), answer.text
        assert "import" not in answer.text
