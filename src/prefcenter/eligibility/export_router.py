"""HTTP: `/v1/suppressions`, `/v1/topics/{key}/audience`, `/v1/changes`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["eligibility"])
