"""Guard tests: the contract's HTTP surface is served, or listed as not built yet (and then
really absent); only `db.py` commits; every error a route documents is a problem document."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match

from prefcenter.app import create_app
from prefcenter.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA_NAME
from tests.support.harness import make_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
# CI checks the repository out beside `shared/`; a checkout without it uses the copy kept in
# `docs/`, which `test_committed_copy_is_the_contract` keeps identical.
SHARED_CONTRACT = REPO_ROOT.parent / "shared" / "docs" / "contract.md"
COMMITTED_CONTRACT = REPO_ROOT / "docs" / "contract.md"
SOURCE = REPO_ROOT / "src" / "prefcenter"

Endpoint = tuple[str, str]  # (method, path), path parameters written `{}`

# What issue 2 (the consent ledger) serves; `GET /v1/topics/{key}` is the issue's, not the
# contract's.
ISSUE_2: set[Endpoint] = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("PUT", "/v1/topics/{}"),
    ("GET", "/v1/topics"),
    ("GET", "/v1/topics/{}"),
    ("POST", "/v1/consents"),
    ("POST", "/v1/contacts/lookup"),
    ("GET", "/v1/contacts/{}"),
}
# In the contract, built by a later issue. Each must be absent until it lands: then delete
# its line here.
NOT_YET: set[Endpoint] = set()
# Paths the contract names without a method.
PATHS_NOT_YET: set[str] = set()
API_PREFIX = "/v1"  # "JSON API under `/v1`": a prefix, not a resource

_METHOD = r"(?:GET|HEAD|POST|PUT|PATCH|DELETE)"
# `PUT /v1/topics/{key}`, `GET`/`HEAD /u/{token}`, `GET|PATCH /v1/webhooks/{id}`,
# `GET /v1/changes?after=<cursor>&limit=N`, `POST /v1/webhooks/{id}/replay {"after_seq": n}`
_ENDPOINT = re.compile(rf"`({_METHOD}(?:(?:`/`|\|){_METHOD})*) (/[^`\s]*)(?: [^`]*)?`")
_METHOD_SEPARATOR = re.compile(r"`/`|\|")
# Where the contract names a method of someone else's server: a webhook delivery's `POST url`.
_FOREIGN = re.compile(rf"`{_METHOD} url`")
_BARE_PATH = re.compile(r"`(/[^`\s]+)`")
_PARAMETER = re.compile(r"\{[^}/]*\}")


def contract_text() -> str:
    path = SHARED_CONTRACT if SHARED_CONTRACT.is_file() else COMMITTED_CONTRACT
    return path.read_text(encoding="utf-8")


def normalise(path: str) -> str:
    """The path as the wire sees it: no query, parameters unnamed."""
    return _PARAMETER.sub("{}", path.split("?", 1)[0])


def contract_endpoints(text: str) -> set[Endpoint]:
    return {
        (method, normalise(path))
        for methods, path in _ENDPOINT.findall(text)
        for method in _METHOD_SEPARATOR.split(methods)
    }


def contract_bare_paths(text: str) -> set[str]:
    """Paths named without a method (`/admin`), other than those of endpoints."""
    endpoint_paths = {path for _, path in contract_endpoints(text)}
    return {normalise(path) for path in _BARE_PATH.findall(text)} - endpoint_paths


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    # The document does not depend on the database; engines connect lazily, so this one never does.
    app = create_app(make_settings("postgresql+psycopg://openapi@127.0.0.1:1/unused"))
    return app.openapi()


def served_endpoints(openapi: dict[str, Any]) -> set[Endpoint]:
    return {
        (method.upper(), normalise(path))
        for path, operations in openapi["paths"].items()
        for method in operations
    }


def operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, path_item in openapi["paths"].items()
        for method, operation in path_item.items()
    ]


class TestContractSurface:
    def test_committed_copy_is_the_contract(self) -> None:
        if not SHARED_CONTRACT.is_file():
            pytest.skip(f"{SHARED_CONTRACT} is not checked out beside the repository")
        assert COMMITTED_CONTRACT.read_bytes() == SHARED_CONTRACT.read_bytes(), (
            f"copy {SHARED_CONTRACT} to {COMMITTED_CONTRACT}"
        )

    def test_endpoints_are_found_in_the_contract(self) -> None:
        found = contract_endpoints(contract_text())

        assert ISSUE_2 - {("GET", "/v1/topics/{}")} <= found
        assert ("GET", "/u/{}") in found
        assert ("HEAD", "/u/{}") in found
        assert ("POST", "/v1/eligibility/stream") in found

    def test_no_method_escapes_the_parser(self) -> None:
        text = contract_text()
        parsed = sum(
            len(_METHOD_SEPARATOR.split(methods)) for methods, _ in _ENDPOINT.findall(text)
        )
        foreign = len(_FOREIGN.findall(text))

        assert parsed + foreign == len(re.findall(rf"\b{_METHOD}\b", text))

    def test_every_endpoint_is_served_or_not_yet_built(self, openapi: dict[str, Any]) -> None:
        unaccounted = contract_endpoints(contract_text()) - served_endpoints(openapi) - NOT_YET

        assert not unaccounted, "in the contract, neither served nor listed in NOT_YET"

    def test_issue_2_endpoints_are_served(self, openapi: dict[str, Any]) -> None:
        assert not ISSUE_2 - served_endpoints(openapi)

    def test_not_yet_endpoints_are_absent(self, openapi: dict[str, Any]) -> None:
        landed = NOT_YET & served_endpoints(openapi)

        assert not landed, "served now: delete these from NOT_YET"

    def test_not_yet_endpoints_are_in_the_contract(self) -> None:
        assert not NOT_YET - contract_endpoints(contract_text())

    def test_bare_paths_are_served_or_not_yet_built(self) -> None:
        app = create_app(make_settings("postgresql+psycopg://openapi@127.0.0.1:1/unused"))
        paths = contract_bare_paths(contract_text()) - {API_PREFIX}
        assert "/openapi.json" in paths

        def served(path: str) -> bool:
            scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
            return any(route.matches(scope)[0] is not Match.NONE for route in app.router.routes)

        assert {path for path in paths if not served(path)} == PATHS_NOT_YET


class TestTransactionBoundary:
    # The one transaction boundary, for requests and for the migration lock alike.
    COMMITTERS = {"db.py"}

    def test_only_the_transaction_boundary_commits(self) -> None:
        offenders = []
        for path in sorted(SOURCE.rglob("*.py")):
            if path.relative_to(SOURCE).as_posix() in self.COMMITTERS:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            offenders += [
                f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr == "commit"
            ]

        assert not offenders, "commit outside db.py: services never commit"

    def test_guard_sees_a_commit(self) -> None:
        tree = ast.parse("def f(session):\n    session.commit()\n")

        assert any(isinstance(n, ast.Attribute) and n.attr == "commit" for n in ast.walk(tree))


class TestErrorDocumentation:
    def test_problem_schema_is_rfc_9457(self, openapi: dict[str, Any]) -> None:
        problem = openapi["components"]["schemas"][PROBLEM_SCHEMA_NAME]

        assert set(problem["required"]) == {"type", "title", "status", "detail"}
        assert problem["additionalProperties"] is True

    def test_error_responses_are_problem_documents(self, openapi: dict[str, Any]) -> None:
        problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        wrong = []
        for name, operation in operations(openapi):
            # Recipients get a page for a bad link; any other error is a problem document.
            is_page = set(operation["responses"].get("200", {}).get("content", {})) == {"text/html"}
            wrong += [
                f"{name} {status}"
                for status, response in operation["responses"].items()
                if int(status) >= 400
                and response.get("content") != problem
                and not (is_page and set(response.get("content", {})) == {"text/html"})
            ]

        assert not wrong

    def test_framework_validation_error_shape_is_not_documented(
        self, openapi: dict[str, Any]
    ) -> None:
        assert "HTTPValidationError" not in openapi["components"]["schemas"]

    def test_each_operation_documents_the_errors_it_can_answer(
        self, openapi: dict[str, Any]
    ) -> None:
        missing = {}
        for name, operation in operations(openapi):
            expected = set()
            if operation.get("security"):
                expected |= {"401", "503"}  # the key is looked up in the database
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                expected |= {"400", "413", "422"}  # malformed JSON, too large, invalid
            elif content:
                # Streamed bodies (one address per line) have no size limit and answer a
                # broken line in its row; what they can refuse is the request itself.
                expected |= {"422"}
            if operation.get("parameters"):
                expected.add("422")
            if lacking := expected - set(operation["responses"]):
                missing[name] = sorted(lacking)

        assert not missing
