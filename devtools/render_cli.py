"""``make render``: every pod the DAGs would launch, as YAML under build/render/pods/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    from airflow.dag_processing.dagbag import DagBag
    from mlplatform.settings import REPO_ROOT

    from devtools.render import pod_to_dict, render_pods

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO_ROOT / "build" / "render" / "pods"))
    args = parser.parse_args(argv)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = ["# Pods the DAGs launch", "",
             "| DAG | step | image | node selector | tolerations | GPUs | service account | secrets (by reference) |",
             "|---|---|---|---|---|---|---|---|"]
    for dag_id, dag in sorted(bag.dags.items()):
        for task_id, pod in render_pods(dag).items():
            path = out / f"{dag_id}.{task_id}.yaml"
            path.write_text(yaml.safe_dump(pod_to_dict(pod), sort_keys=False))
            print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
            index.append(_index_row(dag_id, task_id, pod))
    (out / "INDEX.md").write_text("\n".join(index) + "\n")
    return 0


def _index_row(dag_id: str, task_id: str, pod) -> str:
    """Where a step runs and with what rights, in one line."""
    container = pod.spec.containers[0]
    limits = (container.resources.limits or {}) if container.resources else {}
    secrets = sorted(
        f"{e.name}←{e.value_from.secret_key_ref.name}/{e.value_from.secret_key_ref.key}"
        for e in container.env or [] if e.value_from is not None and e.value_from.secret_key_ref is not None
    )
    selector = ", ".join(f"{k}={v}" for k, v in (pod.spec.node_selector or {}).items()) or "any node"
    tolerations = ", ".join(t.key for t in pod.spec.tolerations or []) or "-"
    return (f"| {dag_id} | {task_id} | `{container.image}` | {selector} | {tolerations} | "
            f"{limits.get('nvidia.com/gpu', 0)} | {pod.spec.service_account_name} | {', '.join(secrets) or '-'} |")


if __name__ == "__main__":
    sys.exit(main())
