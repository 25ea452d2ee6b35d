"""Render the mlplatform chart with Helm's real engine (helm-python-sdk; no helm binary, no cluster).

The rendering itself lives in helm/render_chart.py (also behind `make render`). The release is
rendered with the official Airflow chart it pins (helm/mlplatform/charts/airflow-<version>.tgz):
the `subchart` fixture puts it there as `helm dependency build` would, from $AIRFLOW_CHART_TGZ or
../shared/charts/ beside the repository (`make chart-deps` does the same), and fails every chart
test when it cannot: a render without the subchart would test another release than users install.
"""

from __future__ import annotations

import importlib.util
import json
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
def subchart() -> Path:
    """The pinned official Airflow chart under helm/mlplatform/charts/ (copied there if needed)."""
    try:
        return render_chart.install_subchart()
    except render_chart.SubchartMissingError as err:
        pytest.fail(f"chart tests need the official Airflow chart: {err}", pytrace=False)


@pytest.fixture(scope="session")
def chart(subchart: Path) -> ModuleType:
    """helm/render_chart.py: CHART_DIR, KIND_VALUES, render_manifests, render_objects, load_values."""
    return render_chart


@pytest.fixture(scope="session")
def kind_values_file(subchart: Path) -> dict[str, Any]:
    """values-kind.yaml as written (what `helm -f` passes; its nulls delete default keys)."""
    return render_chart.load_values(render_chart.KIND_VALUES)


@pytest.fixture(scope="session")
def kind_values(kind_values_file: dict[str, Any]) -> dict[str, Any]:
    """values.yaml + values-kind.yaml as Helm coalesces them (for assertions, not for rendering:
    coalesced values have lost the nulls, so rendering them would merge the defaults back)."""
    return render_chart.coalesce(kind_values_file)


@pytest.fixture(scope="session")
def default_objects(subchart: Path) -> Objects:
    """The production defaults (values.yaml), the official chart included."""
    return _render_once({})


@pytest.fixture(scope="session")
def kind_objects(kind_values_file: dict[str, Any]) -> Objects:
    """values-kind.yaml, the official chart included (what kind/kind-test.sh installs)."""
    return _render_once(kind_values_file)


@pytest.fixture(scope="session")
def kind_objects_without_airflow(kind_values_file: dict[str, Any]) -> Objects:
    """values-kind.yaml with airflow.enabled=false: our templates alone."""
    return _render_once(kind_values_file, with_airflow=False)


_renders: dict[str, Objects] = {}


def _render_once(values: dict[str, Any] | None = None, *, with_airflow: bool = True) -> Objects:
    # The official chart takes seconds to render: tests that render the same values share one
    # render (nothing mutates the objects). Errors are not cached: each caller sees its own.
    key = json.dumps([values or {}, with_airflow], sort_keys=True)
    if key not in _renders:
        _renders[key] = render_chart.render_objects(values, with_airflow=with_airflow)
    return _renders[key]


@pytest.fixture(scope="session")
def render(subchart: Path) -> Callable[..., Objects]:
    """render(values, with_airflow=True) -> [(template, object)]; raises helm errors."""
    return _render_once
