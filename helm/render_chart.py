"""Render the mlplatform chart offline with Helm's own engine (helm-python-sdk, no helm binary).

    python helm/render_chart.py                 # -> build/render/chart-default.yaml, chart-kind.yaml
    python helm/render_chart.py --out DIR

The official Airflow chart is a dependency that `helm dependency build helm/mlplatform` downloads
into helm/mlplatform/charts/. Without it (no network here, nothing vendored) the chart is rendered
with `airflow.enabled=false`: our own templates only. With it, the full release is rendered.
The tests (tests/k8s/conftest.py) use the same functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parent / "mlplatform"
KIND_VALUES = CHART_DIR / "values-kind.yaml"
RELEASE_NAME = "mlplatform"
NAMESPACE = "mlplatform"


def subchart_present(chart_dir: Path = CHART_DIR) -> bool:
    """True when `helm dependency build` has put the official Airflow chart under charts/."""
    return all(dep["status"] == "ok" for dep in helm.dependency_list(chart_dir))


def load_values(*files: Path) -> dict[str, Any]:
    """Merge values files left to right, like repeated `helm -f` (maps merge, the rest is
    replaced; nulls are kept so that Helm deletes those keys when it coalesces)."""
    merged: dict[str, Any] = {}
    for file in files:
        _deep_merge(merged, yaml.safe_load(Path(file).read_text()) or {})
    return merged


def coalesce(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """The values a release would use: chart defaults overlaid with `values`, Helm's own rules
    (maps merge, a null deletes a default key)."""
    with helm.Chart.load(chart_dir) as chart:
        return chart.merge_values(values)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def render_manifests(
    values: dict[str, Any] | None = None,
    *,
    with_airflow: bool | None = None,
    chart_dir: Path = CHART_DIR,
    release: str = RELEASE_NAME,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Render to {template path: YAML text}, NOTES.txt left out.

    `with_airflow=None` enables the Airflow subchart only when it is present; pass True to render
    our Airflow-dependent templates (the pools hook) even without it. Raises helm.HelmError on a
    schema violation or a `fail` in templates/check-values.yaml.
    """
    values = dict(values or {})
    if with_airflow is None:
        with_airflow = subchart_present(chart_dir)
    values["airflow"] = {**values.get("airflow", {}), "enabled": with_airflow}
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values=values, name=release, namespace=namespace, is_install=True)
    return {path: text for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")}


def render_objects(values: dict[str, Any] | None = None, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Render and parse: (template path, Kubernetes object) for every document."""
    return [
        (path, doc)
        for path, text in render_manifests(values, **kwargs).items()
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def to_yaml(manifests: dict[str, str], header: str) -> str:
    parts = [f"# {line}".rstrip() for line in header.splitlines()]
    for path, text in manifests.items():
        if text.strip():
            parts.append(f"---\n# Source: {path}\n{text.strip()}")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("build/render"), help="output directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with_airflow = subchart_present()
    note = (
        "Airflow subchart: rendered (helm/mlplatform/charts/ present)"
        if with_airflow
        else "Airflow subchart: NOT rendered (airflow.enabled=false; run `helm dependency build helm/mlplatform`)"
    )
    for name, values in (("chart-default.yaml", {}), ("chart-kind.yaml", load_values(KIND_VALUES))):
        header = f"helm template {RELEASE_NAME} helm/mlplatform -n {NAMESPACE}"
        header += " -f helm/mlplatform/values-kind.yaml" if "kind" in name else ""
        target = args.out / name
        target.write_text(to_yaml(render_manifests(values, with_airflow=with_airflow), f"{header}\n{note}"))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
