"""Render the mlplatform chart offline with Helm's own engine (helm-python-sdk, no helm binary).

    python helm/render_chart.py                 # -> build/render/chart-default.yaml, chart-kind.yaml
    python helm/render_chart.py --out DIR

    python helm/render_chart.py --deps          # only put the official chart under charts/

The official Airflow chart is a dependency that `helm dependency build helm/mlplatform` downloads
into helm/mlplatform/charts/. Where the chart repository cannot be reached, `--deps` (`make
chart-deps`) copies the same archive from $AIRFLOW_CHART_TGZ or ../shared/charts/ beside the
repository: exactly what `helm dependency build` would have written. The tests
(tests/k8s/conftest.py) use the same functions and insist on the subchart.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parent / "mlplatform"
KIND_VALUES = CHART_DIR / "values-kind.yaml"
RELEASE_NAME = "mlplatform"
NAMESPACE = "mlplatform"


REPO_ROOT = CHART_DIR.parents[1]
# Where an archive of the pinned official chart may lie when the chart repository is out of reach.
AIRFLOW_CHART_ENV = "AIRFLOW_CHART_TGZ"


class SubchartMissingError(RuntimeError):
    """The pinned official Airflow chart is neither under charts/ nor where it can be copied from."""


def subchart_present(chart_dir: Path = CHART_DIR) -> bool:
    """True when `helm dependency build` has put the official Airflow chart under charts/."""
    return all(dep["status"] == "ok" for dep in helm.dependency_list(chart_dir))


def airflow_dependency(chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """The `airflow` entry of Chart.yaml's dependencies (name, version, repository)."""
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    return next(dep for dep in meta["dependencies"] if dep["name"] == "airflow")


def install_subchart(chart_dir: Path = CHART_DIR) -> Path:
    """Put the pinned official chart under charts/ as `helm dependency build` would: the archive
    airflow-<version>.tgz from $AIRFLOW_CHART_TGZ, else ../shared/charts/ beside the repository.
    Returns the archive under charts/; raises SubchartMissingError naming where it looked."""
    version = airflow_dependency(chart_dir)["version"]
    archive = f"airflow-{version}.tgz"
    target = chart_dir / "charts" / archive
    if subchart_present(chart_dir):
        return next((chart_dir / "charts").glob("airflow-*.tgz"), target)
    candidates = [Path(os.environ[AIRFLOW_CHART_ENV])] if os.environ.get(AIRFLOW_CHART_ENV) else []
    candidates.append(REPO_ROOT.parent / "shared" / "charts" / archive)
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        raise SubchartMissingError(
            f"the official Airflow chart {version} is not in {chart_dir / 'charts'} and no {archive} at "
            f"{' or '.join(str(c) for c in candidates)}: run `helm dependency build {chart_dir}` "
            f"(needs https://airflow.apache.org) or set {AIRFLOW_CHART_ENV} to the archive"
        )
    target.parent.mkdir(exist_ok=True)
    for stale in target.parent.glob("airflow-*.tgz"):
        stale.unlink()  # another version would make the dependency "wrong version"
    shutil.copyfile(source, target)
    if not subchart_present(chart_dir):
        target.unlink()
        raise SubchartMissingError(f"{source} is not the official Airflow chart {version}")
    return target


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
        for doc in yaml.load_all(text, Loader=yaml.CSafeLoader)
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
    parser.add_argument("--deps", action="store_true", help="only put the official chart under charts/")
    args = parser.parse_args()
    try:
        archive = install_subchart()
    except SubchartMissingError as err:
        raise SystemExit(f"render_chart: {err}") from None
    if args.deps:
        print(f"official Airflow chart: {archive}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with_airflow = True
    note = f"Airflow subchart: {archive.name}"
    for name, values in (("chart-default.yaml", {}), ("chart-kind.yaml", load_values(KIND_VALUES))):
        header = f"helm template {RELEASE_NAME} helm/mlplatform -n {NAMESPACE}"
        header += " -f helm/mlplatform/values-kind.yaml" if "kind" in name else ""
        target = args.out / name
        target.write_text(to_yaml(render_manifests(values, with_airflow=with_airflow), f"{header}\n{note}"))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
