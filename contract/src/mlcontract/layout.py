"""Where everything lives under ``ARTIFACT_ROOT``: the one definition of every path.

```
{root}/runs/{dag_id}/{run_id}/{task_id}[/{map_index}]/   a step's outputs, manifest.json last
{root}/runs/{dag_id}/latest-summary.json                 the latest training run's summary
{root}/features/{snapshot_hash}/                         content-addressed feature snapshots
{root}/predictions/{model}/{score_date}/                 published predictions (+ the features scored)
{root}/deployments/{model}/{alias}.json                  what serving runs for an alias
{root}/registry/{model}/alias-moves/{dag_id}/{run_id}/{action}.json   audit record of an alias move
```

The functions take plain strings, so the Airflow side can pass Jinja templates (``{{ run_id }}``) as well
as rendered values.
"""

from __future__ import annotations

from mlcontract.names import CHAMPION
from mlcontract.storage import join_uri

SUMMARY_FILE = "summary.json"


def run_dir(root: str, dag_id: str, run_id: str) -> str:
    return join_uri(root, "runs", dag_id, run_id)


def step_dir(root: str, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
    """A step's output directory; a mapped task instance gets its own sub-directory."""
    uri = join_uri(run_dir(root, dag_id, run_id), task_id)
    return join_uri(uri, str(map_index)) if map_index is not None and map_index >= 0 else uri


def latest_summary_uri(root: str, dag_id: str) -> str:
    return join_uri(root, "runs", dag_id, "latest-summary.json")


def snapshot_root(root: str) -> str:
    return join_uri(root, "features")


def predictions_root(root: str) -> str:
    return join_uri(root, "predictions")


def predictions_dir(root: str, model_name: str, score_date: str) -> str:
    """A score date's published predictions; ``root`` is ``ARTIFACT_ROOT``."""
    return join_uri(predictions_root(root), model_name, score_date)


def deployment_uri(root: str, model_name: str, alias: str = CHAMPION) -> str:
    return join_uri(root, "deployments", model_name, f"{alias}.json")


def audit_uri(root: str, model_name: str, dag_id: str, run_id: str, action: str) -> str:
    """One record per DAG run and action, so a rerun overwrites instead of duplicating."""
    return join_uri(root, "registry", model_name, "alias-moves", dag_id, run_id.replace("/", "_"), f"{action}.json")
