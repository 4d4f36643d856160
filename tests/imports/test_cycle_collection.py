"""collector.spaced_collections: while imports run, the cycle collector runs less often; the
process's own setting is back once the last of them is done."""

from __future__ import annotations

import gc
import io
import threading

from prefcenter.collector import IMPORT_THRESHOLD, spaced_collections
from prefcenter.db import Database
from prefcenter.imports.schemas import BatchReport
from prefcenter.imports.service import ImportRequest, file_sha256, run_import
from tests.imports.test_service import csv_file, topic  # noqa: F401  (a fixture)


def test_an_import_runs_with_spaced_collections_and_leaves_the_setting_as_it_was(
    database: Database,
    topic: str,  # noqa: F811
) -> None:
    before = gc.get_threshold()
    seen: list[int] = []

    def on_batch(_: BatchReport) -> None:
        seen.append(gc.get_threshold()[0])

    binary = io.BytesIO(csv_file("ada@example.com,subscribed"))
    request = ImportRequest(topic=topic, name="crm", actor="cli:test")
    report = run_import(database, binary, request, sha256=file_sha256(binary), on_batch=on_batch)

    assert report.complete
    assert seen == [IMPORT_THRESHOLD]
    assert gc.get_threshold() == before


def test_the_setting_comes_back_when_the_last_of_two_overlapping_imports_ends() -> None:
    before = gc.get_threshold()
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()
    during_second: list[int] = []

    def first() -> None:
        with spaced_collections():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with spaced_collections():
            second_in.set()
            first_out.wait(10)
            during_second.append(gc.get_threshold()[0])

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert during_second == [IMPORT_THRESHOLD]  # the first one's end did not reset it
    assert gc.get_threshold() == before
