"""The import report: what a file did, row counts by outcome, samples, and which batches
landed. The same document answers `POST /v1/imports` and `prefcenter import --json`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from prefcenter.imports.formats import ImportFormat

# Rows named per outcome in a report: enough to find the pattern, few enough to stay small.
SAMPLE_SIZE = 20


class BatchStatus(StrEnum):
    COMMITTED = "committed"
    FAILED = "failed"  # rolled back: none of its rows were applied
    DRY_RUN = "dry_run"  # decided, then nothing written


class SampleRow(BaseModel):
    line: int = Field(description="The file's line (the header is line 1).")
    email: str = Field(description="The address, masked (`a•••@example.com`).")
    detail: str | None = Field(default=None, description="Why, for a broken row.")


class CountWithSample(BaseModel):
    count: int = 0
    sample: list[SampleRow] = Field(
        default_factory=list, description=f"The first {SAMPLE_SIZE} such rows."
    )

    def add(self, line: int, email: str, detail: str | None = None) -> None:
        self.count += 1
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(SampleRow(line=line, email=email, detail=detail))


class AppliedCounts(BaseModel):
    subscribed: int = 0
    unsubscribed: int = 0


class BatchReport(BaseModel):
    number: int = Field(description="1, 2, … in file order.")
    first_line: int
    last_line: int
    rows: int = Field(description="Rows of the batch that were read as rows (broken ones too).")
    applied: int = Field(description="Rows of the batch that changed a subscription.")
    status: BatchStatus
    error: str | None = Field(default=None, description="Why a failed batch was rolled back.")


class ImportReport(BaseModel):
    topic: str
    source: str = Field(description="The import's name (`--source`), kept in every event.")
    format: ImportFormat
    file_name: str | None
    sha256: str = Field(description="Checksum of the file, kept in every event's evidence.")
    dry_run: bool
    complete: bool = Field(
        description="Every batch committed. After a failed batch the import stops: the rows "
        "after it were not read. Running the same file again is safe (applied rows come back "
        "`unchanged`)."
    )
    rows: int = Field(description="Rows read, broken ones included; blank lines not counted.")
    applied: AppliedCounts = Field(default_factory=AppliedCounts)
    unchanged: int = 0
    superseded: CountWithSample = Field(
        default_factory=CountWithSample,
        description="Older than the contact's current state: not applied.",
    )
    refused_reversal: CountWithSample = Field(
        default_factory=CountWithSample,
        description="`subscribed` rows for addresses that opted out (of the topic or of all "
        "marketing, whoever recorded it): never applied by an import.",
    )
    refused_erased: CountWithSample = Field(
        default_factory=CountWithSample, description="Rows for erased people: never applied."
    )
    refused_no_evidence: CountWithSample = Field(
        default_factory=CountWithSample,
        description="`subscribed` rows of a sharing topic without their own `evidence` cell: "
        "never applied (data goes to a third party only with proof of the person's consent).",
    )
    invalid: CountWithSample = Field(
        default_factory=CountWithSample,
        description="Broken rows (bad address, unknown status, bad time), with the reason.",
    )
    duplicates: int = Field(
        default=0,
        description="Rows whose address came earlier in the same batch. Every row is decided "
        "in file order against the state the rows before it left, so the last row wins "
        "unless it is older or would reverse an opt-out.",
    )
    failed_rows: int = Field(
        default=0, description="Rows of failed batches: read, decided, then rolled back."
    )
    batches: list[BatchReport] = Field(default_factory=list)
