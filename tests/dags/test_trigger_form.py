"""The trigger forms as Airflow's UI reads them: valid with their defaults, optional fields optional, sections.

The UI (airflow/ui FlexibleForm) marks a field required when its schema has a ``type`` without "null", and
refuses the form while a required field is ``null`` or ``""``; an emptied field is sent as ``null``. The browser
tier (tests/ui) checks the same in Chromium; these checks are the fast ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_IDS = ["ml_model_training", "batch_prediction", "model_monitoring"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def form_required(schema: dict) -> bool:
    """The UI's rule (isParamRequired): typed and not nullable."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def form_fields(dagbag, dag_id: str) -> dict:
    return {name: dagbag.dags[dag_id].params.get_param(name) for name in dagbag.dags[dag_id].params}


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_form_is_valid_with_its_defaults(dagbag, dag_id):
    missing = [name for name, param in form_fields(dagbag, dag_id).items()
               if form_required(param.schema) and param.value in (None, "")]
    assert missing == [], f"{dag_id}: the form would mark these required fields empty: {missing}"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_field_is_in_a_section_and_an_emptied_optional_field_validates(dagbag, dag_id):
    from airflow.sdk.definitions.param import ParamsDict

    fields = form_fields(dagbag, dag_id)
    assert [name for name, param in fields.items() if not param.schema.get("section")] == []
    optional = [name for name, param in fields.items() if not form_required(param.schema)]
    assert optional  # every DAG has some
    params = ParamsDict(dict(dagbag.dags[dag_id].params.items()))
    params.update({name: None for name in optional})  # what the form sends for emptied fields
    params.validate()


def test_training_sections_read_like_the_pipeline(dagbag):
    sections = list(dict.fromkeys(p.schema["section"] for p in form_fields(dagbag, "ml_model_training").values()))
    assert sections == ["Source", "Features", "Training", "Promotion", "Deployment"]


@pytest.mark.parametrize(("dag_id", "bad"), [
    ("ml_model_training", {"entity_key": "customer id"}), ("ml_model_training", {"n_trials": -1}),
    ("ml_model_training", {"events_table": "my events"}), ("ml_model_training", {"cutoff": "2026-13"}),
    ("ml_model_training", {"entities_table": "a b"}), ("ml_model_training", {"snapshot_column": "as of"}),
    ("batch_prediction", {"score_date": "tomorrow"}), ("batch_prediction", {"signup_column": "signed up"}),
    ("model_monitoring", {"drift_ignore_features": "a; b"}), ("model_monitoring", {"labels_table": "x y"}),
    ("ml_model_training", {"memory_budget": "lots"}), ("ml_model_training", {"memory_budget": "6 GB RAM"}),
])
def test_optional_fields_are_still_validated_when_given(dagbag, dag_id, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dict(dagbag.dags[dag_id].params.items()))
    with pytest.raises(ParamValidationError):
        params.update(bad)


def rendered(dagbag, dag_id: str, task_id: str, **conf) -> list[str]:
    dag = dagbag.dags[dag_id]
    values = {name: dag.params[name] for name in dag.params} | conf
    # the upstream tasks' pushed values: the best trial's dict, else a pinned string
    ti = SimpleNamespace(xcom_pull=lambda task_ids, **_: {"params": {}} if task_ids == "select_best_trial" else "pulled")
    context = {"params": values, "ti": ti, "dag": dag, "run_id": "manual"}
    return [jinja2.Environment().from_string(a).render(context) for a in dag.get_task(task_id).arguments]


@pytest.mark.parametrize(("dag_id", "task_id", "emptied"), [
    ("ml_model_training", "extract", ["cutoff", "snapshot_column", "entities_table", "events_query", "labels_query",
                                      "features_table", "features_query"]),
    ("batch_prediction", "extract_scoring", ["entities_table", "signup_column", "events_query", "features_table"]),
    ("model_monitoring", "extract_labels", ["snapshot_column", "labels_query", "features_table"]),
    ("model_monitoring", "monitor", ["drift_ignore_features"]),
    ("ml_model_training", "train_model", ["memory_budget"]),
])
def test_null_and_empty_render_the_same_arguments(dagbag, dag_id, task_id, emptied):
    """The form sends null for an emptied field, the API and older confs send '': the step sees '' for both."""
    as_null = rendered(dagbag, dag_id, task_id, **dict.fromkeys(emptied))
    assert as_null == rendered(dagbag, dag_id, task_id, **dict.fromkeys(emptied, ""))
    assert "None" not in as_null


def test_a_feature_table_and_a_query_together_are_refused_by_extract(dagbag, tmp_path):
    """Both given: extract receives both and refuses the pair with a message, before reading anything."""
    arguments = rendered(dagbag, "ml_model_training", "extract", source_kind="feature_table",
                         features_table="account_features", features_query="select * from account_features")
    env = {"WAREHOUSE_URI": f"sqlite:///{tmp_path}/w.db", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "features", *arguments, "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "argument --features-query: not allowed with argument --features-table" in result.stderr


def test_the_memory_budget_reaches_the_final_fit_as_given(dagbag):
    """The trials get it from the plan step (tests/dags/test_training_memory_budget.py); empty is the
    deployment's budget: the trainer reads an empty --memory-budget as its default."""
    arguments = rendered(dagbag, "ml_model_training", "train_model", memory_budget="6GiB")
    assert arguments[arguments.index("--memory-budget") + 1] == "6GiB"
    emptied = rendered(dagbag, "ml_model_training", "train_model")
    assert emptied[emptied.index("--memory-budget") + 1] == ""
    assert dagbag.dags["ml_model_training"].params.get_param("memory_budget").schema["section"] == "Training"
