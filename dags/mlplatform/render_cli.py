"""``make render``: every pod the DAGs would launch, as YAML under build/render/pods/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> int:
    from airflow.dag_processing.dagbag import DagBag

    from mlplatform.render import pod_to_dict, render_pods
    from mlplatform.settings import REPO_ROOT

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO_ROOT / "build" / "render" / "pods"))
    args = parser.parse_args(argv)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for dag_id, dag in sorted(bag.dags.items()):
        for task_id, pod in render_pods(dag).items():
            path = out / f"{dag_id}.{task_id}.yaml"
            path.write_text(yaml.safe_dump(pod_to_dict(pod), sort_keys=False))
            print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
