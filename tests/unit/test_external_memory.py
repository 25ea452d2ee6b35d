"""Training data bigger than memory: xgboost external memory over the snapshot's parquet row groups.

The capped test runs `trainer trial` in a child process that watches its own resident anonymous memory
(what an OOM killer counts; the external-memory cache is file-backed) and dies like an OOM-killed pod the
moment it grows by more than the cap: the in-memory fit dies under that cap, the external-memory fit chosen
by the same budget finishes and reaches the same validation AUC as the uncapped in-memory fit.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlcontract import storage
from mlcontract.cli import parse_size
from mlcontract.errors import StepInputError
from mlcontract.manifests import BuildManifest, SnapshotManifest, TrialManifest
from trainer import data, model
from trainer.cli import main

FAST = {"learning_rate": 0.3, "max_depth": 4, "n_estimators": 20, "early_stopping_rounds": 10}
OOM_EXIT = 137  # what a pod killed for memory exits with
CAP_MIB = 120  # measured: the in-memory fit grows by about 165 MiB, the external-memory fit by 86
# A capped child calls ``watch(cap)`` once warm: from then on, the moment its resident anonymous memory has
# grown by more than ``cap`` MiB ("none": never) it exits as an OOM-killed pod would; ``peak[0]``: the growth.
WATCHDOG = textwrap.dedent("""
    import os, threading, time

    peak = [0]

    def anon_mib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) >> 10 for line in status if line.startswith("RssAnon"))

    def watch(cap):
        base = anon_mib()

        def watchdog():
            while True:
                peak[0] = max(peak[0], anon_mib() - base)
                if cap != "none" and peak[0] > int(cap):
                    print(f"over the {cap} MiB cap", flush=True)
                    os._exit(137)
                time.sleep(0.002)

        threading.Thread(target=watchdog, daemon=True).start()
""")
# The child warms up what every fit needs once (thread pools, allocators) on a tiny snapshot, so that the
# cap is measured against the data-dependent memory only; then the watchdog enforces the cap on RssAnon.
CAPPED_CHILD = WATCHDOG + textwrap.dedent("""
    import sys
    from trainer import data, model
    from trainer.cli import main

    warm = data.read_snapshot(sys.argv[1])
    for budget in (0, None):
        model.fit_snapshot(warm, {"n_estimators": 2}, 1, memory_budget=budget, batch_rows=1000, log_every=100)
    watch(sys.argv[2])
    code = main(sys.argv[3:])
    print(f"peak anonymous memory growth {peak[0]} MiB", flush=True)
    sys.exit(code)
""")


def write_snapshot(root: Path, rows: int, features: int, seed: int = 0, row_group: int = 5000) -> str:
    """A build step dir and its snapshot (train ``rows``, valid and test a quarter each), in row groups of
    ``row_group`` rows like the build step's streamed writes; returns the build dir."""
    rng = np.random.default_rng(seed)
    columns = [f"f{i:03d}" for i in range(features)]
    snapshot_uri = (root / "features" / f"snap-{seed}").as_uri()
    sizes = {"train": rows, "valid": rows // 4, "test": rows // 4}
    for day, (name, n) in enumerate(sizes.items(), start=1):
        x = rng.normal(size=(n, features))
        logit = 1.2 * x[:, 0] - 0.9 * x[:, 1] + 0.7 * x[:, 2] * x[:, 3] + 0.6 * (x[:, 4] > 0.5)
        x[rng.random(n) < 0.05, 5] = np.nan  # missing values stay missing on both paths
        frame = pl.DataFrame({
            "entity_id": [f"c{i}" for i in range(n)],
            "snapshot_ts": [datetime(2024, 1, day)] * n,
            "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
            **{column: x[:, i] for i, column in enumerate(columns)},
        }).with_columns(pl.col("f005").fill_nan(None))
        path = storage.local_path(storage.join_uri(snapshot_uri, f"{name}.parquet"))
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path, row_group_size=row_group)
    splits = {"train": ["2024-01-01"], "valid": ["2024-01-02"], "test": ["2024-01-03"]}
    SnapshotManifest(
        snapshot_hash=f"snap-{seed}", feature_columns=columns, rows=sizes, label_rate={}, splits=splits,
        feature_config={}, categories={}, code_version="test",
    ).write(snapshot_uri)
    build_dir = str(root / f"build-{seed}")
    BuildManifest(
        outputs={"snapshot": snapshot_uri}, snapshot_uri=snapshot_uri, snapshot_hash=f"snap-{seed}", reused=False,
        extract=str(root / "extract"), extract_content_hash="abc", feature_columns=columns, rows=sizes,
        label_rate={}, splits=splits, feature_config={},
    ).write(build_dir)
    return build_dir


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("extmem")
    return {"big": write_snapshot(root, 60_000, 100, seed=1), "warm": write_snapshot(root, 2_000, 100, seed=2),
            "small": write_snapshot(root, 4_000, 10, seed=3, row_group=700)}


def capped_trial(snapshots: dict[str, str], tmp_path: Path, name: str, cap: str, budget: str):
    """`trainer trial` on the big snapshot in a child under ``cap`` MiB (or "none"): (exit code, output, manifest)."""
    out = tmp_path / name
    argv = ["trial", "--features", snapshots["big"], "--params", json.dumps(FAST), "--seed", "1", "--out",
            str(out), "--memory-budget", budget, "--log-every", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "POLARS_MAX_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-c", CAPPED_CHILD, snapshots["warm"], cap, *argv], check=False, env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )
    manifest = TrialManifest.read(str(out)) if done.returncode == 0 else None
    return done.returncode, done.stdout + done.stderr, manifest


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the cap reads /proc (Linux)")
def test_external_memory_trains_under_a_cap_the_in_memory_fit_exceeds(snapshots, tmp_path):
    snapshot = data.read_snapshot(snapshots["big"])
    cap = parse_size(f"{CAP_MIB}MiB")
    plan = model.data_plan(snapshot, cap)
    assert plan.external and plan.estimated_bytes > cap, plan.describe()

    code, output, reference = capped_trial(snapshots, tmp_path, "in-memory", "none", "100GiB")
    assert code == 0, output
    print(output.splitlines()[-1])
    assert "training data in memory" in output
    code, output, _ = capped_trial(snapshots, tmp_path, "in-memory-capped", str(CAP_MIB), "100GiB")
    assert code == OOM_EXIT, f"the in-memory fit stayed under {CAP_MIB} MiB: the cap proves nothing\n{output}"
    code, output, external = capped_trial(snapshots, tmp_path, "external-capped", str(CAP_MIB), f"{CAP_MIB}MiB")
    assert code == 0, output
    print(output.splitlines()[-1])
    assert "training data external memory" in output
    assert external.valid_auc == pytest.approx(reference.valid_auc, abs=0.002)
    assert external.rows == reference.rows == {"train": 60_000, "valid": 15_000}


def test_batches_hold_the_same_values_as_the_whole_split(snapshots):
    snapshot = data.load_snapshot(snapshots["small"], splits=("train",))
    columns = snapshot.feature_columns
    batches = list(data.split_batches(snapshot, "train", 500))
    assert max(len(y) for _, y in batches) == 500 and len(batches) > 4000 // 700  # row groups of 700, cut at 500
    assert np.array_equal(np.concatenate([x for x, _ in batches]), snapshot["train"].features(columns), equal_nan=True)
    assert np.array_equal(np.concatenate([y for _, y in batches]), snapshot["train"].label)


def test_in_process_fits_agree_and_the_budget_decides(snapshots):
    snapshot = data.read_snapshot(snapshots["small"])
    external = model.fit_snapshot(snapshot, FAST, 7, memory_budget=1, batch_rows=600)
    in_memory = model.fit_snapshot(snapshot, FAST, 7, memory_budget=2**40)
    assert external.external_memory and not in_memory.external_memory
    assert external.valid_metric == pytest.approx(in_memory.valid_metric, abs=0.002)
    assert not model.data_plan(snapshot).external  # the default budget: half this machine's memory
    assert model.default_memory_budget() == int(model.memory_limit() * model.DEFAULT_BUDGET_SHARE) > 0


def test_memory_budget_option_and_its_environment_default(snapshots, tmp_path, monkeypatch, capsys):
    argv = ["trial", "--features", snapshots["small"], "--params", json.dumps(FAST), "--seed", "1"]
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "1KiB")
    assert main([*argv, "--out", str(tmp_path / "env")]) == 0
    assert "training data external memory" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "cli"), "--memory-budget", "1GiB"]) == 0
    assert "training data in memory" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "bad"), "--memory-budget", "lots"])
    assert exit_info.value.code == 2
    assert "--memory-budget: 'lots' is not a size" in capsys.readouterr().err
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "lots")  # a bad deployment value: one line, naming it
    assert main([*argv, "--out", str(tmp_path / "bad-env")]) == 1
    assert "trainer trial: TRAINER_MEMORY_BUDGET: 'lots' is not a size" in capsys.readouterr().err


def test_a_split_without_a_feature_column_is_one_line(snapshots, tmp_path):
    snapshot = data.read_snapshot(snapshots["small"])
    broken = tmp_path / "train.parquet"
    storage.read_parquet(snapshot.split_uri("train")).drop("f003").write_parquet(broken)
    renamed = data.Snapshot(snapshot.features_dir, snapshot.build.model_copy(update={"snapshot_uri": tmp_path.as_uri()}))
    with pytest.raises(StepInputError, match=r"train.parquet: missing columns \['f003'\]"):
        next(data.split_batches(renamed, "train", 100))


def test_the_deployment_budget_reaches_trainer_pods_only(monkeypatch):
    from mlplatform.settings import Settings
    from mlplatform.steps import FEATURES, TRAINER_CPU, TRAINER_GPU, pod_kwargs

    def budget_env(family) -> list[str]:
        return [v.value for v in pod_kwargs(family, Settings())["env_vars"] if v.name == "TRAINER_MEMORY_BUDGET"]

    assert budget_env(TRAINER_GPU) == []  # unset: the trainer's own default
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "6GiB")
    assert budget_env(TRAINER_GPU) == budget_env(TRAINER_CPU) == ["6GiB"]
    assert budget_env(FEATURES) == []
    monkeypatch.setenv("TRAINER_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match=r"TRAINER_MEMORY_BUDGET\n.*'lots' is not a size"):
        Settings()
