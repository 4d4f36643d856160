"""What goes in and out of `POST /v1/consents/batch`: changes as for `/v1/consents`, each
checked on its own so that one bad change gets its own problem instead of refusing the batch."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut

MAX_CONSENT_BATCH = 1000


def _as_given(value: Any) -> Any:
    """Checks nothing: each change is validated on its own by the service (its problem goes in
    its slot), while the OpenAPI document shows it as a `ConsentChangeIn`."""
    return value


_ChangeBody = Annotated[
    dict[str, Any], BeforeValidator(_as_given, json_schema_input_type=ConsentChangeIn)
]


class ConsentBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: list[_ChangeBody] = Field(
        min_length=1,
        description=f"Up to {MAX_CONSENT_BATCH:,} bodies as for POST /v1/consents, applied in "
        "this order; more is a 413.",
    )


class ChangeProblem(BaseModel):
    """A change of the batch that was refused, with its problem document; nothing of it was
    written."""

    problem: dict[str, Any] = Field(description="RFC 9457 problem document of this change.")


class ConsentBatchOut(BaseModel):
    results: list[ConsentChangeOut | ChangeProblem] = Field(
        description="In request order: the change's answer as POST /v1/consents gives it, or "
        "its problem (`validation`, `unknown-topic`, `address-erased`, `recipient-opt-out`, "
        "`reason-required`, `evidence-required`)."
    )
