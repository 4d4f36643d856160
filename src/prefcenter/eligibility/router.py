"""HTTP: `/v1/eligibility` and `/v1/eligibility/stream`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["eligibility"])
