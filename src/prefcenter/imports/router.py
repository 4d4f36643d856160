"""HTTP: `POST /v1/imports` — a CSV file in the body, the import report back."""

from __future__ import annotations

import hashlib
import tempfile
from typing import IO, Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request

from prefcenter.apikeys.auth import Admin
from prefcenter.audit.context import RequestContextDep
from prefcenter.consent.schemas import SourceName
from prefcenter.imports.errors import UnsupportedImportMediaType
from prefcenter.imports.formats import ImportFormat
from prefcenter.imports.schemas import ImportReport
from prefcenter.imports.service import (
    DEFAULT_BATCH_SIZE,
    ImportRequest,
    find_import_topic,
    run_import,
)
from prefcenter.problems import PayloadTooLarge, problem_responses
from prefcenter.request_sessions import database_of
from prefcenter.topics.schemas import TopicKey

router = APIRouter(prefix="/v1", tags=["imports"], responses=problem_responses(401, 403, 503))

# The body is spooled to a temporary file (memory up to the first MiB, disk after it), never
# held whole; this bounds the disk an import can take. 1M rows of a Mailchimp export are
# about 250 MB.
MAX_IMPORT_BYTES = 2 * 1024**3
_SPOOL_IN_MEMORY = 1024 * 1024
_CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})
_TEXT_BODY: dict[str, Any] = {"schema": {"type": "string"}}
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file: plain CSV `email,status[,occurred_at]`, a Mailchimp audience "
        "export or a SendGrid suppression export. UTF-8 (a BOM is fine), header row first.",
        "content": {"text/csv": _TEXT_BODY},
    }
}
_IMPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    415: {
        "description": "The body is not `text/csv`",
        "content": problem_responses(422)[422]["content"],
    },
    **problem_responses(413, 422),
}


def _check_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type not in _CSV_TYPES:
        raise UnsupportedImportMediaType(f"Send the file as `text/csv`, not {media_type!r}.")


async def _spool(request: Request, spool: IO[bytes]) -> str:
    """Copy the body into `spool` as it arrives; its SHA-256."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"An import file may be at most {MAX_IMPORT_BYTES} bytes.")
        digest.update(chunk)
        await anyio.to_thread.run_sync(spool.write, chunk)
    spool.seek(0)
    return digest.hexdigest()


@router.post(
    "/imports",
    summary="Import consent from a CSV file; never reverses an opt-out; answers a report",
    description="Rows are applied in batches, each all-or-nothing in a transaction of its own; "
    "the report says which batches committed. Sending the same file again changes nothing "
    "that already landed (such rows come back `unchanged`), so a retry needs no "
    "Idempotency-Key.",
    responses=_IMPORT_RESPONSES,
    openapi_extra=_IMPORT_BODY,
)
async def import_file(
    topic: Annotated[TopicKey, Query(description="The topic every row applies to.")],
    source: Annotated[
        SourceName, Query(description="The import's name, kept in every event's evidence.")
    ],
    caller: Admin,
    context: RequestContextDep,
    request: Request,
    import_format: Annotated[
        ImportFormat,
        Query(alias="format", description="The file's layout; `auto` sniffs the header."),
    ] = ImportFormat.AUTO,
    file_name: Annotated[
        str | None,
        Query(
            max_length=255,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="The file's name, for the evidence; Mailchimp's export names "
            "(`unsubscribed_…`, `cleaned_…`) also say which contacts a file lists.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, Query(description="Decide every row and report, but write nothing.")
    ] = False,
) -> ImportReport:
    _check_media_type(request.headers.get("content-type"))
    database = database_of(request)
    job = ImportRequest(
        topic=topic,
        name=source,
        actor=caller.actor,
        format=import_format,
        file_name=file_name,
        batch_size=DEFAULT_BATCH_SIZE,
        dry_run=dry_run,
        context=context.as_evidence(),
    )
    # Checked before the body is read: an unknown topic should not cost an upload.
    async with database.session_slots:
        await anyio.to_thread.run_sync(find_import_topic, database, topic)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        sha256 = await _spool(request, spool)
        # One session slot for the whole import: it holds one connection at a time.
        async with database.session_slots:
            return await anyio.to_thread.run_sync(
                lambda: run_import(database, spool, job, sha256=sha256)
            )
