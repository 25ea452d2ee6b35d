"""Reliability: the champion changes only by a fair comparison (issue 10, the decision's cases).

Each case runs the training DAG's decision path as its tasks do, on real parts: the features and trainer
steps in process (extract from a generated SQLite warehouse, build, train, ``build-champion-features``,
evaluate), the Airflow-side tasks' functions (``pin_champion``, ``promotion_decision``, ``record_decision``)
on a real MLflow registry. Each asserts the user's message, the step that decided, and what stayed as it was.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from features.engineering.comparison import build_champion_features
from features.engineering.snapshot import build_features
from features.extract.training import extract
from mlcontract import layout, storage
from mlcontract.manifests import BuildManifest, EvaluateManifest, TrainManifest
from mlcontract.names import CHALLENGER, CHAMPION
from mlcontract.rules import (
    ALREADY_CHAMPION,
    COMPARED,
    FIRST_MODEL,
    INCOMPARABLE_ALLOWED,
    INCOMPARABLE_REFUSED,
    NOT_COMPUTABLE,
    Decision,
)
from mlplatform import preflight, training
from reliability_frame import Platform, registry_state, warehouse_state
from trainer.cli import main as trainer
from trainer.evaluate import run_evaluate

FAST = {"learning_rate": 0.1, "max_depth": 4, "n_estimators": 60, "early_stopping_rounds": 10}
WEAK = {"learning_rate": 0.1, "max_depth": 1, "n_estimators": 1}
DAG = "ml_model_training"


# --- the pipeline's steps, as the DAG runs them ------------------------------------------------------


def build(warehouse_uri: str, root: Path) -> str:
    """extract + build_features: the challenger's build step directory."""
    extract(warehouse_uri, str(root / "extract"))
    build_features(str(root / "extract"), str(root / "build"), str(root.parent / "snapshots"))
    return str(root / "build")


def train(platform: Platform, build_dir: str, model: str, run_id: str, monkeypatch, params=FAST,
          seed=1) -> TrainManifest:
    monkeypatch.setenv("PIPELINE_RUN_ID", run_id)
    out = platform.root / "runs" / model / run_id / "train_model"
    args = ["train", "--features", build_dir, "--params", json.dumps(params), "--seed", str(seed),
            "--model-name", model, "--out", str(out)]
    assert trainer(args) == 0
    return TrainManifest.read(str(out))


def judge(platform: Platform, model: str, build_dir: str, trained: TrainManifest, run_id: str, *,
          threshold: float = 0.7, margin: float = 0.002, allow: bool = False) -> tuple[EvaluateManifest, Decision]:
    """pin_champion → build_champion_features → evaluate → compare_models, as the DAG chains them."""
    run = platform.root / "runs" / model / run_id
    pin = training.pin_champion(platform.settings(model))
    build_champion_features(build_dir, str(run / "champion"), model, pin["version"], pin["snapshot_uri"])
    evaluation = run_evaluate(build_dir, model, trained.model_version, str(run / "evaluate"),
                              champion_features=str(run / "champion"))
    decision = training.promotion_decision(evaluation, threshold=threshold, margin=margin, allow_incomparable=allow,
                                           train=trained)
    json.dumps(decision.model_dump(mode="json"), allow_nan=False)  # what compare_models pushes: strict JSON
    return evaluation, decision


def record(platform: Platform, model: str, decision: Decision, run_id: str) -> dict:
    """The promote or reject task (the branch's choice) and its audit record."""
    action = "promote" if training.route(decision.model_dump(mode="json"), "full") == "promote" else "reject"
    move = training.record_decision(action, decision.model_dump(mode="json"), DAG, run_id,
                                    settings=platform.settings(model))
    # what was recorded: the branch's action, or a reject when `champion` moved since the comparison
    audit = storage.read_json(layout.audit_uri(platform.artifact_root, model, DAG, run_id, move["action"]))
    assert audit["reason"] == move["reason"]
    return move


def crown(platform: Platform, model: str, build_dir: str, monkeypatch, params=FAST) -> TrainManifest:
    """A champion trained on ``build_dir`` (the first model: promoted by the rule, recorded)."""
    champion = train(platform, build_dir, model, "champion-run", monkeypatch, params=params)
    _, decision = judge(platform, model, build_dir, champion, "champion-run", threshold=0.5)
    assert decision.basis == FIRST_MODEL and decision.action == "promote", decision.reason
    record(platform, model, decision, "champion-run")
    return champion


@pytest.fixture(scope="module")
def base_build(platform, synth_warehouse) -> str:
    return build(synth_warehouse, platform.root / "base")


@pytest.fixture(scope="module")
def renamed_category(platform, synth_warehouse) -> tuple[str, str]:
    """The warehouse a month later: channel 'phone' is now 'kiosk' (a new category value, an old one gone)."""
    path = platform.root / "renamed.db"
    shutil.copy(sa.make_url(synth_warehouse).database, path)
    uri = f"sqlite:///{path}"
    engine = sa.create_engine(uri)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE events SET channel = 'kiosk' WHERE channel = 'phone'"))
    engine.dispose()
    before = warehouse_state(uri)
    build_dir = build(uri, platform.root / "renamed")
    assert warehouse_state(uri) == before  # the extract only reads
    return uri, build_dir


# --- a fair comparison, always ---------------------------------------------------------------------------


def test_a_new_category_value_is_a_comparison_not_a_first_model(platform, base_build, renamed_category,
                                                                 monkeypatch):
    """Issue 10 #2: the champion knows 'phone', the new data has 'kiosk' instead. Before: champion "not
    comparable", promoted as if none existed. Now: rebuilt with its own vocabulary and compared."""
    model = "rel-category"
    champion = crown(platform, model, base_build, monkeypatch)
    _, build_dir = renamed_category
    challenger = train(platform, build_dir, model, "run-2", monkeypatch)
    assert set(champion.feature_columns) - set(challenger.feature_columns), "the champion needs columns it lacks"

    evaluation, decision = judge(platform, model, build_dir, challenger, "run-2")
    assert evaluation.champion.version == champion.model_version and evaluation.champion.comparable
    assert evaluation.champion.features == "own snapshot"
    assert evaluation.champion.metrics["rows"] == evaluation.challenger.metrics["rows"] == evaluation.test_rows
    assert decision.basis == COMPARED and "first model" not in decision.reason
    assert f"champion v{champion.model_version}" in decision.reason


def test_a_weak_challenger_with_a_low_threshold_is_compared_and_rejected(platform, base_build, renamed_category,
                                                                        monkeypatch):
    """Issue 10 #2, the 0.5934-AUC case: promotion_threshold 0.55 and a challenger far weaker than the
    champion. Before: promoted over a champion declared "not comparable". Now: rejected, champion unchanged."""
    model = "rel-weak"
    champion = crown(platform, model, base_build, monkeypatch)
    _, build_dir = renamed_category
    weak = train(platform, build_dir, model, "run-weak", monkeypatch, params=WEAK)
    before = registry_state(platform, model)

    evaluation, decision = judge(platform, model, build_dir, weak, "run-weak", threshold=0.55)
    assert 0.55 <= evaluation.challenger.metrics["auc"] < evaluation.champion.metrics["auc"]
    assert decision.action == "reject" and decision.basis == COMPARED
    assert "does not beat champion" in decision.reason
    move = record(platform, model, decision, "run-weak")
    assert move["action"] == "reject" and move["compared_with"] == champion.model_version
    after = registry_state(platform, model)
    assert after == before and after["aliases"][CHAMPION] == champion.model_version


def test_a_champion_whose_snapshot_is_gone_refuses_promotion_unless_allowed(platform, synth_warehouse,
                                                                           monkeypatch):
    """Truly impossible: the champion's training snapshot was deleted. Refused by default, with the reason;
    promoted only with allow_incomparable_promotion, and the audit record says which."""
    model = "rel-gone"
    own = build(synth_warehouse, platform.root / "gone")
    champion = crown(platform, model, own, monkeypatch)
    challenger_build = build(synth_warehouse, platform.root / "gone-2")
    # the challenger's snapshot is the same content-addressed one: give it another seed's fit, then delete
    challenger = train(platform, challenger_build, model, "run-gone", monkeypatch, seed=2)
    snapshot_uri = BuildManifest.read(own).snapshot_uri
    # a champion trained elsewhere, on a snapshot this store no longer has
    platform.client().set_model_version_tag(model, champion.model_version, "snapshot_uri", snapshot_uri + "-deleted")
    before = registry_state(platform, model)

    _, refused = judge(platform, model, challenger_build, challenger, "run-gone")
    assert refused.action == "reject" and refused.basis == INCOMPARABLE_REFUSED
    assert "training snapshot" in refused.reason and "is gone" in refused.reason
    assert "allow_incomparable_promotion" in refused.reason and "first model" not in refused.reason
    record(platform, model, refused, "run-gone")
    assert registry_state(platform, model) == before

    _, allowed = judge(platform, model, challenger_build, challenger, "run-gone-allowed", allow=True)
    assert allowed.action == "promote" and allowed.basis == INCOMPARABLE_ALLOWED
    move = record(platform, model, allowed, "run-gone-allowed")
    assert move["basis"] == INCOMPARABLE_ALLOWED and "allow_incomparable_promotion is set" in move["reason"]
    assert registry_state(platform, model)["aliases"][CHAMPION] == challenger.model_version


# --- a metric that cannot be computed ----------------------------------------------------------------


def single_class_test_split(build_dir: str, root: Path) -> str:
    """A copy of a build whose test split holds one class only (what the integrity gate now refuses at build;
    here the decision must hold on its own)."""
    import polars as pl

    manifest = BuildManifest.read(build_dir)
    snapshot = root / "one-class-snapshot"
    shutil.copytree(storage.local_path(manifest.snapshot_uri), snapshot)
    test = pl.read_parquet(snapshot / "test.parquet")
    test.with_columns(pl.lit(0, dtype=test["label"].dtype).alias("label")).write_parquet(snapshot / "test.parquet")
    out = root / "one-class-build"
    manifest.model_copy(update={
        "snapshot_uri": snapshot.as_uri(), "snapshot_hash": "one-class",
        "outputs": {name: (snapshot / f"{name}.parquet").as_uri() for name in ("train", "valid", "test")},
    }).write(str(out))
    return str(out)


def test_a_single_class_test_split_rejects_with_a_reason_and_leaves_challenger(platform, base_build, monkeypatch):
    """Issue 10 #4: NaN AUC. Before: the XCom push failed, no reject record, `challenger` on the failed
    version. Now: rejected with the reason, strict-JSON decision, reject recorded, `challenger` unchanged."""
    model = "rel-nan"
    champion = crown(platform, model, base_build, monkeypatch)
    previous = train(platform, base_build, model, "run-ok", monkeypatch, seed=3)
    assert registry_state(platform, model)["aliases"][CHALLENGER] == previous.model_version
    one_class = single_class_test_split(base_build, platform.root / "nan")

    failed = train(platform, one_class, model, "run-nan", monkeypatch)
    assert failed.challenger_alias_set is False and failed.metrics["test_auc"] is None
    evaluation, decision = judge(platform, model, one_class, failed, "run-nan")
    assert evaluation.challenger.comparable is False and evaluation.challenger.metrics["auc"] is None
    assert decision.action == "reject" and decision.basis == NOT_COMPUTABLE
    assert "test auc cannot be computed" in decision.reason and "one class only" in decision.reason
    move = record(platform, model, decision, "run-nan")
    assert move["action"] == "reject"
    aliases = registry_state(platform, model)["aliases"]
    assert aliases[CHALLENGER] == previous.model_version and aliases[CHAMPION] == champion.model_version
    tag = json.loads(platform.client().get_model_version(model, failed.model_version).tags["promotion"])
    assert tag["action"] == "reject" and "cannot be computed" in tag["reason"]


# --- compare-and-set, re-triggers ----------------------------------------------------------------------


def test_two_concurrent_runs_do_not_both_promote(platform, base_build, renamed_category, monkeypatch):
    """Both runs compared their challenger with champion v1; the first promotes, the second finds `champion`
    moved and records a reject with the reason instead of replacing a champion it was never compared with."""
    model = "rel-race"
    champion = crown(platform, model, base_build, monkeypatch, params=WEAK)  # a one-split stump: easy to beat
    _, build_dir = renamed_category
    first = train(platform, build_dir, model, "run-a", monkeypatch, seed=11)
    second = train(platform, build_dir, model, "run-b", monkeypatch, seed=12)
    _, decision_a = judge(platform, model, build_dir, first, "run-a", threshold=0.5)
    _, decision_b = judge(platform, model, build_dir, second, "run-b", threshold=0.5)
    assert decision_a.action == decision_b.action == "promote", (decision_a.reason, decision_b.reason)
    assert decision_a.incumbent.version == decision_b.incumbent.version == champion.model_version
    moved_a = record(platform, model, decision_a, "run-a")
    assert moved_a["action"] == "promote" and moved_a["compared_with"] == champion.model_version
    moved_b = record(platform, model, decision_b, "run-b")
    assert moved_b["action"] == "reject" and moved_b["basis"] == "champion moved"
    assert f"moved from v{champion.model_version} to v{first.model_version}" in moved_b["reason"]
    aliases = registry_state(platform, model)["aliases"]
    assert aliases[CHAMPION] == first.model_version and aliases["previous-champion"] == champion.model_version


def test_a_retrigger_of_the_same_data_reuses_the_registered_version(platform, base_build, monkeypatch, capsys):
    """Same snapshot, seed, params and code in a new run: the version is reused and the run says so."""
    model = "rel-retrigger"
    champion = crown(platform, model, base_build, monkeypatch)
    before = registry_state(platform, model)
    capsys.readouterr()
    again = train(platform, base_build, model, "run-again", monkeypatch)
    assert again.model_version == champion.model_version and again.reused_from == f"{DAG}/champion-run"
    log = capsys.readouterr().out
    assert "is an identical fit" in log and "reusing it instead of registering an identical version" in log
    assert registry_state(platform, model) == before  # no second, identical version
    _, decision = judge(platform, model, base_build, again, "run-again")
    assert decision.action == "reject" and decision.basis == ALREADY_CHAMPION
    assert "reused: an identical fit" in decision.reason and f"{DAG}/champion-run" in decision.reason
    record(platform, model, decision, "run-again")
    assert registry_state(platform, model) == before


# --- fail early and clearly ----------------------------------------------------------------------------


def test_preflight_finds_an_unreachable_mlflow_in_seconds(platform, synth_warehouse):
    """Weaker spot: an unreachable MLflow was found at the final fit, after the trials and minutes of retries."""
    from mlplatform.settings import Settings
    from support import free_port

    password = "canary-Pa55word"
    settings = Settings(MLFLOW_TRACKING_URI=f"http://ml:{password}@127.0.0.1:{free_port()}",
                        ARTIFACT_ROOT=platform.artifact_root, MLPLATFORM_HOME=str(platform.root))
    started = time.monotonic()
    with pytest.raises(preflight.PreflightFailed) as failed:
        preflight.preflight(settings, timeout=3, warehouse_uri=synth_warehouse)
    assert time.monotonic() - started < 10
    message = str(failed.value)
    assert message.startswith("MLflow at http://") and "is unreachable" in message
    assert "\n" not in message and password not in message
    assert "warehouse" not in message and "artifact store" not in message  # those answered


def test_preflight_names_every_service_that_fails_in_one_line(platform, tmp_path):
    from mlplatform.settings import Settings

    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    settings = Settings(MLFLOW_TRACKING_URI=platform.tracking_uri, ARTIFACT_ROOT=blocked.as_uri() + "/artifacts",
                        MLPLATFORM_HOME=str(tmp_path))
    with pytest.raises(preflight.PreflightFailed) as failed:
        preflight.preflight(settings, timeout=5, warehouse_uri=f"sqlite:///{tmp_path / 'no-such.db'}")
    message = str(failed.value)
    assert "\n" not in message
    assert "no-such.db: no such SQLite file" in message and "artifact store" in message
    assert not (tmp_path / "no-such.db").exists()  # checking did not create an empty warehouse
    passed = preflight.preflight(platform.settings("m"), timeout=5, warehouse_uri="")
    assert passed[1] == "warehouse: credentials only in the step pods; the extract step is its check"


def test_preflight_bounds_a_service_that_does_not_answer():
    def hangs() -> str:
        time.sleep(30)
        return "never"

    started = time.monotonic()
    with pytest.raises(preflight.PreflightFailed, match="MLflow: no answer within 1 s"):
        preflight.run_checks({"MLflow": hangs, "artifact store": lambda: "ok"}, timeout=1)
    assert time.monotonic() - started < 5


KILLED_STEP = """
import sys, time, mlflow
from trainer import tracking
tracking.use_experiment()
with tracking.runs_fail_when_terminated():
    with mlflow.start_run() as run:
        print(run.info.run_id, flush=True)
        time.sleep(120)
"""


def test_a_killed_step_ends_its_mlflow_run_as_failed(platform):
    """Weaker spot: MLflow runs of killed steps stayed RUNNING forever. SIGTERM (pod deleted, on_kill) now
    ends the run FAILED and the step exits 143; the registry is untouched."""
    before = registry_state(platform, "rel-killed")
    step = subprocess.Popen([sys.executable, "-c", KILLED_STEP], stdout=subprocess.PIPE, text=True)
    run_id = step.stdout.readline().strip()
    assert run_id, "the step did not start its run"
    step.send_signal(signal.SIGTERM)
    assert step.wait(timeout=60) == 128 + signal.SIGTERM
    assert platform.client().get_run(run_id).info.status == "FAILED"
    assert registry_state(platform, "rel-killed") == before
