"""The batch's answer is written without a model per change (consent.batch._batch_json): byte
for byte what `ConsentBatchOut(...).model_dump_json()` writes, whatever the text."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic_core import PydanticSerializationError

from prefcenter.consent.batch import _batch_json
from prefcenter.consent.batch_schemas import ChangeProblem, ConsentBatchOut
from prefcenter.consent.rules import Outcome, Status
from tests.support.factories import Headers, consent_body

# Text that JSON writers are known to disagree on: escapes, controls, non-ASCII, separators.
AWKWARD = [
    'q"uote',
    "back\\slash",
    "tab\tnew\nline\r",
    "\x00\x01\x1f\x7f",
    "ünï €",
    "\u2028\u2029",
    "</script>",
    "\U0001f600",
]


def _answer(text: str, *, topic: str | None, link: str | None) -> dict[str, Any]:
    return {
        "contact_id": f"c-{text}",
        "email": f"{text}@example.com",
        "topic": topic,
        "status": Status.PENDING.value,
        "changed": True,
        "outcome": Outcome.APPLIED.value,
        "event_id": f"e-{text}",
        "confirm_url": link,
    }


def test_answers_and_problems_are_written_as_the_model_writes_them() -> None:
    results: list[dict[str, Any] | ChangeProblem] = []
    for number, text in enumerate(AWKWARD):
        results.append(_answer(text, topic=None if number % 2 else "news", link=text or None))
        results.append(
            ChangeProblem(problem={"type": text, "status": 422, "errors": [{"field": text}]})
        )

    assert (
        _batch_json(results)
        == ConsentBatchOut.model_validate({"results": results}).model_dump_json()
    )


def test_answers_without_problems_are_written_as_the_model_writes_them() -> None:
    results: list[dict[str, Any] | ChangeProblem] = [
        _answer(text, topic="news", link=None) for text in AWKWARD
    ]

    assert (
        _batch_json(results)
        == ConsentBatchOut.model_validate({"results": results}).model_dump_json()
    )


def test_text_that_is_not_utf8_fails_as_the_model_fails() -> None:
    results: list[dict[str, Any] | ChangeProblem] = [
        _answer("fine", topic=None, link=None),
        ChangeProblem(problem={"type": "x", "status": 422}),
        _answer("lone \udc80 surrogate", topic=None, link=None),
    ]

    with pytest.raises(PydanticSerializationError) as ours:
        _batch_json(results)
    with pytest.raises(PydanticSerializationError) as models:
        ConsentBatchOut.model_validate({"results": results}).model_dump_json()
    assert str(ours.value) == str(models.value)


def test_the_answer_is_the_models_json(
    client: TestClient, writer_headers: Headers, newsletter: str
) -> None:
    changes = [
        consent_body("ada@example.com", "subscribed", topic=newsletter),
        consent_body("not an address", "subscribed", topic=newsletter),
        consent_body("Bob@Example.com", "unsubscribed"),
        consent_body("cy@example.com", "subscribed", topic="no-such-topic"),
    ]

    response = client.post("/v1/consents/batch", headers=writer_headers, json={"changes": changes})

    assert response.status_code == 200, response.text
    assert response.text == ConsentBatchOut.model_validate_json(response.text).model_dump_json()
