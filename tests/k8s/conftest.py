"""Render the mlplatform chart with Helm's real engine (helm-python-sdk; no helm binary, no cluster).

The rendering itself lives in helm/render_chart.py (also behind `make render`). Without the
official Airflow chart under helm/mlplatform/charts/ (it needs `helm dependency build`, i.e. the
network) the chart renders with `airflow.enabled=false`: our templates only. Tests that need the
Airflow-dependent templates (the pools hook) render with `with_airflow=True`, which works without
the subchart because offline rendering does not resolve dependencies.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # k8s_schema


def _load_render_chart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_chart", REPO_ROOT / "helm" / "render_chart.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_chart = _load_render_chart()

Objects = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="session")
def chart() -> ModuleType:
    """helm/render_chart.py: CHART_DIR, KIND_VALUES, render_manifests, render_objects, load_values."""
    return render_chart


@pytest.fixture(scope="session")
def kind_values_file() -> dict[str, Any]:
    """values-kind.yaml as written (what `helm -f` passes; its nulls delete default keys)."""
    return render_chart.load_values(render_chart.KIND_VALUES)


@pytest.fixture(scope="session")
def kind_values(kind_values_file: dict[str, Any]) -> dict[str, Any]:
    """values.yaml + values-kind.yaml as Helm coalesces them (for assertions, not for rendering:
    coalesced values have lost the nulls, so rendering them would merge the defaults back)."""
    return render_chart.coalesce(kind_values_file)


@pytest.fixture(scope="session")
def default_objects() -> Objects:
    return render_chart.render_objects({})


@pytest.fixture(scope="session")
def kind_objects(kind_values_file: dict[str, Any]) -> Objects:
    return render_chart.render_objects(kind_values_file)


@pytest.fixture(scope="session")
def kind_objects_with_airflow(kind_values_file: dict[str, Any]) -> Objects:
    """Kind values with airflow.enabled=true: adds our Airflow-dependent templates."""
    return render_chart.render_objects(kind_values_file, with_airflow=True)


@pytest.fixture()
def render() -> Callable[..., Objects]:
    """render(values, with_airflow=None) -> [(template, object)]; raises helm errors."""
    return render_chart.render_objects
