"""docs/grafana-dashboard.json and the metrics table in docs/operations.md name exactly the
metrics the service exposes: a renamed metric cannot leave a dashboard panel empty."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.support.harness import issue_key

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC = re.compile(r"\bprefcenter_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def exposed(client: TestClient, database: Database) -> set[str]:
    headers = issue_key(database, Scope.METRICS)
    client.get("/metrics", headers=headers)  # so that /metrics itself has a latency
    text = client.get("/metrics", headers=headers).text
    names: set[str] = set()
    # From each family's type: a labelled metric has no sample before its first count.
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


def test_every_dashboard_query_names_an_exposed_metric(
    client: TestClient, database: Database
) -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    names = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}

    assert len(names) >= 12
    assert names <= exposed(client, database)


def test_the_operations_table_lists_every_metric(client: TestClient, database: Database) -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(prefcenter_[a-z_]+)`", section, re.MULTILINE))
    families = {HISTOGRAM_SERIES.sub("", name) for name in exposed(client, database)}

    assert documented == families
