"""The final fit (`trainer train`) on training data bigger than memory.

Like the capped trial (test_external_memory.py), the train step runs in a child process that dies like an
OOM-killed pod the moment its resident anonymous memory grows by more than the cap, against a real MLflow
server. The child first trains a tiny snapshot through both paths, so that what every train step loads once
(MLflow, matplotlib, the HTTP client, xgboost's thread pools) is not counted against the cap.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from mlcontract.cli import parse_size
from mlcontract.errors import StepInputError
from mlcontract.manifests import TrainManifest
from test_external_memory import FAST, OOM_EXIT, WATCHDOG, write_snapshot
from trainer import data, drift, model
from trainer.train import REFERENCE_ARTIFACT, run_train

CAP_MIB = 120  # measured: the in-memory final fit grows by about 186 MiB, the external one by 91-93
CAPPED_TRAIN = WATCHDOG + textwrap.dedent("""
    import json, logging, sys, time
    from trainer.train import run_train

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    warm, big, cap, budget, out, params, name = sys.argv[1:8]
    for warm_budget in (1, 2**40):
        run_train(warm, {"n_estimators": 2}, 1, f"warm-up-{name}", f"{out}-warm-{warm_budget}", log_every=100,
                  memory_budget=warm_budget)
    watch(cap)
    started = time.perf_counter()
    run_train(big, json.loads(params), 1, name, out, log_every=1000, memory_budget=int(budget))
    print(f"peak anonymous memory growth {peak[0]} MiB in {time.perf_counter() - started:.1f} s", flush=True)
""")


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train-extmem")
    return {"big": write_snapshot(root, 60_000, 100, seed=11), "warm": write_snapshot(root, 2_000, 100, seed=12)}


def capped_train(snapshots, tmp_path: Path, mlflow_server: str, name: str, cap: str, budget: int):
    """`run_train` on the big snapshot in a child under ``cap`` MiB (or "none"), registering model ``name``:
    (exit code, output, manifest)."""
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "2", "POLARS_MAX_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "train-external"}
    done = subprocess.run(
        [sys.executable, "-c", CAPPED_TRAIN, snapshots["warm"], snapshots["big"], cap, str(budget), str(out),
         json.dumps(FAST), name],
        check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    manifest = TrainManifest.read(str(out)) if done.returncode == 0 else None
    return done.returncode, done.stdout + done.stderr, manifest


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the cap reads /proc (Linux)")
def test_the_final_fit_trains_under_a_cap_the_in_memory_fit_exceeds(snapshots, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    cap = parse_size(f"{CAP_MIB}MiB")
    assert model.data_plan(data.read_snapshot(snapshots["big"]), cap).external

    with pytest.MonkeyPatch.context() as mp:  # the reference: in memory, uncapped, in this process
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "train-external")
        started = time.perf_counter()
        in_memory = run_train(snapshots["big"], FAST, 1, "in-memory", str(tmp_path / "in-memory"),
                              memory_budget=2**40)
        print(f"in memory, uncapped: {time.perf_counter() - started:.1f} s")
    code, output, _ = capped_train(snapshots, tmp_path, mlflow_server, "in-memory-capped", str(CAP_MIB), 2**40)
    assert code == OOM_EXIT, f"the in-memory fit stayed under {CAP_MIB} MiB: the cap proves nothing\n{output}"
    code, output, external = capped_train(snapshots, tmp_path, mlflow_server, "external", str(CAP_MIB), cap)
    assert code == 0, output
    print(next(line for line in output.splitlines() if line.startswith("peak")))
    assert "final fit: training data external memory" in output

    assert external.metrics["valid_auc"] == pytest.approx(in_memory.metrics["valid_auc"], abs=0.002)
    for metric, tolerance in {"test_auc": 0.002, "test_pr_auc": 0.005, "test_log_loss": 0.005,
                              "test_brier": 0.002, "test_accuracy": 0.01}.items():
        assert external.metrics[metric] == pytest.approx(in_memory.metrics[metric], abs=tolerance), metric
    assert external.metrics["test_rows"] == in_memory.metrics["test_rows"] == 15_000

    client = MlflowClient(mlflow_server)
    runs = {m.model_name: client.get_run(m.mlflow_run_id) for m in (in_memory, external)}
    assert runs["external"].data.params["external_memory"] == "True"
    assert runs["external"].data.params["memory_budget_bytes"] == str(cap)
    assert runs["in-memory"].data.params["external_memory"] == "False"
    assert runs["external"].data.params["rows_train"] == runs["in-memory"].data.params["rows_train"] == "60000"

    # The drift reference: the same features and rows; cut points from a sample of the train rows, so
    # near the whole split's, and the shares over all of them near a tenth each as the in-memory ones.
    references = {name: client.download_artifacts(run.info.run_id, REFERENCE_ARTIFACT, str(tmp_path / name))
                  for name, run in runs.items()}
    ref = {name: json.loads(Path(path).read_text()) for name, path in references.items()}
    assert ref["external"]["feature_columns"] == ref["in-memory"]["feature_columns"]
    for feature, entry in ref["external"]["features"].items():
        expected = ref["in-memory"]["features"][feature]
        assert entry["rows"] == expected["rows"] == 60_000
        assert np.allclose(entry["cuts"], expected["cuts"], atol=0.05), feature  # N(0, 1) values
        assert np.allclose(entry["proportions"], expected["proportions"], atol=0.01), feature
    assert ref["external"]["score"]["rows"] == ref["in-memory"]["score"]["rows"] == 15_000


def test_streamed_reference_equals_the_whole_split_one_when_the_sample_is_every_row(snapshots):
    snapshot = data.load_snapshot(snapshots["warm"], splits=("train",))
    columns = snapshot.feature_columns[:5]
    whole = {c: drift.distribution(snapshot["train"].frame[c].to_numpy()) for c in columns}
    sample = data.split_sample(snapshot, "train", 10**6, 3, columns, 700)
    assert sample.height == 2_000
    batches = ({c: f[c].to_numpy() for c in columns} for f in data.split_frames(snapshot, "train", 700, columns))
    assert drift.streamed_distributions({c: sample[c].to_numpy() for c in columns}, batches) == whole


def test_a_train_sample_is_seeded_uniform_and_bounded(snapshots):
    snapshot = data.read_snapshot(snapshots["warm"])
    first = data.split_sample(snapshot, "train", 300, 5, ["f000", "f001"], 700)
    assert first.height == 300 and first.columns == ["f000", "f001"]
    assert first.equals(data.split_sample(snapshot, "train", 300, 5, ["f000", "f001"], 450))  # batching: same
    assert not first.equals(data.split_sample(snapshot, "train", 300, 6, ["f000", "f001"], 700))
    head = data.split_head(snapshot, "train", 5)
    whole = data.load_snapshot(snapshots["warm"], splits=("train",))["train"].frame
    assert head.equals(whole.select(snapshot.feature_columns).head(5))


def test_the_deployment_budget_is_the_default_and_named_when_bad(monkeypatch):
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "6GiB")
    assert model.default_memory_budget() == 6 * 2**30
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "")
    assert model.default_memory_budget() == int(model.memory_limit() * model.DEFAULT_BUDGET_SHARE)
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "lots")
    with pytest.raises(StepInputError, match="TRAINER_MEMORY_BUDGET: 'lots' is not a size"):
        model.default_memory_budget()


def test_an_empty_memory_budget_is_the_deployments(snapshots, tmp_path, mlflow_server, monkeypatch, capsys):
    """What the DAG passes when the run's memory_budget Param is empty: `--memory-budget ''` is
    TRAINER_MEMORY_BUDGET (the deployment's), for the final fit as for a trial."""
    from trainer.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "train-external")
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "1KiB")
    common = ["--features", snapshots["warm"], "--params", json.dumps(FAST), "--seed", "5", "--memory-budget", ""]
    assert main(["train", *common, "--model-name", "empty-budget", "--out", str(tmp_path / "train")]) == 0
    assert "final fit: training data external memory" in capsys.readouterr().out
    assert main(["trial", *common, "--out", str(tmp_path / "trial")]) == 0
    assert "training data external memory" in capsys.readouterr().out


def test_an_explicit_memory_budget_reaches_the_final_fit(snapshots, tmp_path, mlflow_server, monkeypatch, capsys):
    """`trainer train --memory-budget SIZE` (the run's memory_budget Param) decides over the deployment's."""
    from trainer.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "train-external")
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "1TiB")
    argv = ["train", "--features", snapshots["warm"], "--params", json.dumps(FAST), "--seed", "9",
            "--model-name", "explicit-budget", "--memory-budget", "1KiB", "--out", str(tmp_path / "train")]
    assert main(argv) == 0
    assert "final fit: training data external memory" in capsys.readouterr().out
