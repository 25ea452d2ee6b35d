"""Small queries over rendered chart objects, shared by the chart test modules."""

from __future__ import annotations

from typing import Any

Objects = list[tuple[str, dict[str, Any]]]
RELEASE = "mlplatform"


def find(objects: Objects, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for _, o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pipeline_settings(objects: Objects) -> dict[str, str]:
    """The data of the pipeline-settings ConfigMap (env of every Airflow container)."""
    return one(objects, "ConfigMap", f"{RELEASE}-pipeline-settings")["data"]
