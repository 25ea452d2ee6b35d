"""Issue 10, integrity: labels are what the task allows, every split holds the classes it needs, the raw gate
refuses what the build cannot use, and a step's outputs (local or on an object store) are never half-written:
a re-extract killed half-way cannot poison the content-addressed snapshot cache, a snapshot is verified
before it is reused, and a killed writer's staging is cleaned.

Each case runs the real step code (the features CLI in-process, as the pod runs it, on a real SQLite
warehouse) and asserts the user's one-line message, the step that fails, and that nothing was published.
A kill is a real SIGKILL of a real extract process at the named moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import fsspec
import polars as pl
import pytest
import sqlalchemy as sa
from features.cli import main
from features.engineering.snapshot import build_features
from mlcontract import storage
from mlcontract.manifests import BuildManifest, ExtractManifest, SnapshotManifest

SNAPSHOTS = ["2026-03-28", "2026-04-28", "2026-05-28"]
ENTITIES = 60
SOURCE = ["--events-table", "purchases", "--labels-table", "outcomes", "--entities-table", "", "--entity-key",
          "buyer", "--timestamp-column", "bought_at", "--snapshot-column", "cutoff_ts", "--label-column", "churn"]


def warehouse(root: Path, *, label: str = "churn INTEGER", labels=None, amount: str = "amount REAL",
              amounts=None, events=None) -> str:
    """A SQLite warehouse in the user's own names: purchases(buyer, bought_at, amount) and
    outcomes(buyer, cutoff_ts, churn); by default 60 buyers, 3 snapshot dates, both classes in each."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'wh.db'}"
    if events is None:
        events = [(f"b{i % ENTITIES}", f"2026-0{1 + i % 5}-{1 + i % 27:02d} 10:00:00",
                   amounts(i) if amounts else round(1 + (i * 7919) % 500 / 7, 2)) for i in range(1500)]
    if labels is None:
        labels = [(f"b{i}", day, int((i * 7 + k) % 3 == 0)) for k, day in enumerate(SNAPSHOTS) for i in range(ENTITIES)]
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE purchases (buyer TEXT, bought_at TEXT, {amount})"))
        conn.execute(sa.text(f"CREATE TABLE outcomes (buyer TEXT, cutoff_ts TEXT, {label})"))
        conn.execute(sa.text("INSERT INTO purchases VALUES (:b, :t, :a)"), [dict(zip("bta", e)) for e in events])
        conn.execute(sa.text("INSERT INTO outcomes VALUES (:b, :c, :y)"), [dict(zip("bcy", x)) for x in labels])
    engine.dispose()
    return uri


def step(capsys, monkeypatch, uri: str | None, *argv: str) -> tuple[int, str]:
    """One features step through its CLI (as the pod runs it): exit code and stderr."""
    if uri:
        monkeypatch.setenv("WAREHOUSE_URI", uri)
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def extracted(capsys, monkeypatch, uri: str, out: Path) -> str:
    code, err = step(capsys, monkeypatch, uri, "extract", *SOURCE, "--out", str(out))
    assert code == 0, err
    return str(out)


def failure_line(err: str, dataset: str, column: str) -> str:
    """The gate's line for one failing expectation (the gate's message: a header, then one line each)."""
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith(f"- {dataset}:") and f" on {column}:" in line]
    assert len(lines) == 1, err
    return lines[0]


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*.tmp"))


# --- labels exactly the task's values --------------------------------------------------------------------


def labels_at(values: list) -> list[tuple]:
    return [(f"b{i}", SNAPSHOTS[0], v) for i, v in enumerate(values)]


def test_fractional_binary_labels_are_refused_not_rounded(tmp_path, capsys, monkeypatch):
    """Case 3: labels 0.7 and 1.9 — the raw gate names the column and the values; build refuses them too."""
    uri = warehouse(tmp_path, label="churn REAL", labels=labels_at([0, 1, 0.7, 1, 0, 1.9] * 10))
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "g"))
    assert code == 1 and err.startswith("features validate-raw: validate-raw gate failed")
    line = failure_line(err, "labels", "churn")
    assert "column churn (label) must hold 0/1 or booleans for task=binary: 20 unexpected value(s)" in line
    assert "0.7" in line and "1.9" in line
    code, err = step(capsys, monkeypatch, None, "build", "--extract", extract_dir, "--snapshot-root",
                     str(tmp_path / "features"), "--out", str(tmp_path / "b"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("features build: labels: column churn (label): a binary task needs 0/1 (or true/false) "
                          "labels exactly, found 20 other value(s) such as [0.7, 1.9]")
    assert not (tmp_path / "features").exists() and not BuildManifest.exists(str(tmp_path / "b"))


def test_yes_is_a_bad_label_value_not_a_null(tmp_path, capsys, monkeypatch):
    """Case 3: 'yes' in a TEXT label column is shown as the value it is; '1.0' is not a TEXT 0/1 either."""
    uri = warehouse(tmp_path, label="churn TEXT", labels=labels_at(["1", "0", "yes", "0", "1.0", "0"] * 10))
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "g"))
    assert code == 1
    line = failure_line(err, "labels", "churn")
    assert "expect_column_values_to_be_in_set on churn" in line and "20 unexpected value(s)" in line
    assert "'yes'" in line and "'1.0'" in line
    assert "not_be_null" not in err


def test_multiclass_labels_must_be_classes_not_measurements(tmp_path, capsys, monkeypatch):
    """Multiclass likewise: 2.5 is not a class (1.0 is class 1); refused by the gate and by build."""
    uri = warehouse(tmp_path, label="churn REAL", labels=labels_at([1.0, 2.0, 2.5, 3.0] * 15))
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    argv = ["--extract", extract_dir, "--task", "multiclass", "--split", "entity"]
    code, err = step(capsys, monkeypatch, None, "validate-raw", *argv, "--out", str(tmp_path / "g"))
    assert code == 1
    line = failure_line(err, "labels", "churn")
    assert "column churn (label) must hold class labels (text, booleans or whole numbers) for task=multiclass" in line
    assert "15 unexpected value(s), e.g. [2.5" in line
    code, err = step(capsys, monkeypatch, None, "build", *argv, "--snapshot-root", str(tmp_path / "f"),
                     "--out", str(tmp_path / "b"))
    assert code == 1 and "column churn (label): a multiclass task needs class labels" in err and "[2.5]" in err


# --- every split holds the classes its task needs -------------------------------------------------------------


def test_single_class_test_split_is_refused_at_build(tmp_path, capsys, monkeypatch):
    """Case 4: the latest snapshot (the time split's test) holds churn = 0 only: build names the split and the
    class counts before any training; nothing is published (the decision never sees a NaN metric)."""
    labels = [(f"b{i}", day, int(k < 2 and (i * 7 + k) % 3 == 0)) for k, day in enumerate(SNAPSHOTS)
              for i in range(ENTITIES)]
    uri = warehouse(tmp_path, labels=labels)
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "g"))
    assert code == 0, err  # the labels as a whole are fine: it is the split that is not
    code, err = step(capsys, monkeypatch, None, "build", "--extract", extract_dir, "--snapshot-root",
                     str(tmp_path / "features"), "--out", str(tmp_path / "b"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"features build: labels: column churn (label): the test split (snapshot {SNAPSHOTS[2]}) holds one class "
        "only (missing 1): a binary task needs both classes in test. Class counts: train {'0': 40, '1': 20}; "
        "valid {'0': 40, '1': 20}; test {'0': 60, '1': 0}."
    )
    assert not (tmp_path / "features").exists() and not BuildManifest.exists(str(tmp_path / "b"))


# --- raw-gate gaps -------------------------------------------------------------------------------------------------


def test_text_amount_is_refused_by_the_raw_gate(tmp_path, capsys, monkeypatch):
    """A text-typed `amount` (here SQLite REAL holding 'n/a') is refused by the gate, naming the column."""
    uri = warehouse(tmp_path, amounts=lambda i: "n/a" if i % 9 == 0 else i / 3)
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "g"))
    assert code == 1
    assert ("events: expect_column_values_to_be_in_type_list on amount: column amount must hold numbers (its "
            "declared range is 0..1e+06), not String") in failure_line(err, "events", "amount")


def test_a_column_the_spec_treats_as_numeric_must_be_numeric(tmp_path, capsys, monkeypatch):
    events = [(f"b{i % ENTITIES}", f"2026-0{1 + i % 5}-{1 + i % 27:02d} 10:00:00", str(i % 4)) for i in range(600)]
    uri = warehouse(tmp_path, amount="basket TEXT", events=events)
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    spec = '{"version": 1, "events": {"basket": {"kind": "numeric", "aggregations": ["sum"]}}}'
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--feature-spec", spec,
                     "--out", str(tmp_path / "g"))
    assert code == 1
    assert ("column basket must hold numbers: the feature spec's events treat it as numeric, but it is String"
            in failure_line(err, "events", "basket"))
    # without the spec the build infers a category from it: the gate has nothing to refuse
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "h"))
    assert code == 0, err


def test_no_event_before_any_snapshot_is_refused(tmp_path, capsys, monkeypatch):
    late = [(f"b{i}", "2026-06-01 10:00:00", 5.0) for i in range(ENTITIES)]
    uri = warehouse(tmp_path, events=late)
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    code, err = step(capsys, monkeypatch, None, "validate-raw", "--extract", extract_dir, "--out", str(tmp_path / "g"))
    assert code == 1
    assert (f"column bought_at (timestamp) is before any snapshot (the latest is {SNAPSHOTS[-1]} in column "
            "cutoff_ts (snapshot)): every feature would be empty") in failure_line(err, "events", "bought_at")


# --- atomic steps, verified cache, staging cleanup -------------------------------------------------------------

KILL_AFTER = """
import os, signal, sys
from mlcontract import storage
from features.cli import main

moment = sys.argv[1]
if moment == "events-replaced":  # right after the new events/ directory is in place
    commit = storage.StagedDirectory.commit
    def commit_then_die(self):
        done = commit(self)
        if self.final_uri.endswith("/events"):
            os.kill(os.getpid(), signal.SIGKILL)
        return done
    storage.StagedDirectory.commit = commit_then_die
else:  # while the events are being written: after their first part
    write = storage.write_parquet
    def write_then_die(uri, frame):
        write(uri, frame)
        os.kill(os.getpid(), signal.SIGKILL)
    storage.write_parquet = write_then_die
sys.exit(main(sys.argv[2:]))
"""


def killed_extract(uri: str, out: Path, moment: str) -> None:
    """A real extract process, SIGKILLed at ``moment``."""
    env = {**os.environ, "WAREHOUSE_URI": uri}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AFTER), moment, "extract", *SOURCE,
                           "--batch-rows", "500", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_killed_reextract_cannot_poison_the_snapshot_cache(tmp_path, capsys, monkeypatch):
    """Case 5: a re-extract of changed data killed right after `events/` was replaced. The build refuses (no
    manifest: the step did not finish) and, were the old manifest still there, it would refuse too (the files
    are not those it describes); the snapshot under the old address is untouched and no other is written."""
    uri = warehouse(tmp_path / "wh")
    extract_dir = tmp_path / "extract"
    features = tmp_path / "features"
    extracted(capsys, monkeypatch, uri, extract_dir)
    old_manifest = (extract_dir / "manifest.json").read_bytes()
    code, err = step(capsys, monkeypatch, None, "build", "--extract", str(extract_dir), "--snapshot-root",
                     str(features), "--out", str(tmp_path / "b1"))
    assert code == 0, err
    built = tree(features)

    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE purchases SET amount = amount * 3 + 1"))
    engine.dispose()
    killed_extract(uri, extract_dir, "events-replaced")
    assert not ExtractManifest.exists(str(extract_dir))  # the old manifest went first
    code, err = step(capsys, monkeypatch, None, "build", "--extract", str(extract_dir), "--snapshot-root",
                     str(features), "--out", str(tmp_path / "b2"))
    assert code == 1 and err == (f"features build: no manifest at {extract_dir}/manifest.json: the step that writes "
                                 "it has not finished\n")

    # the old manifest beside the new events (a writer that did not invalidate it, or files changed later)
    (extract_dir / "manifest.json").write_bytes(old_manifest)
    code, err = step(capsys, monkeypatch, None, "build", "--extract", str(extract_dir), "--snapshot-root",
                     str(features), "--out", str(tmp_path / "b3"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"features build: extract {extract_dir}: its files are not those its manifest describes")
    assert err.rstrip().endswith("rerun extract")
    assert tree(features) == built  # the cache: same addresses, same bytes
    assert not BuildManifest.exists(str(tmp_path / "b3"))

    # a full re-extract then builds a new address; the old one is still what it was
    extracted(capsys, monkeypatch, uri, extract_dir)
    code, err = step(capsys, monkeypatch, None, "build", "--extract", str(extract_dir), "--snapshot-root",
                     str(features), "--out", str(tmp_path / "b4"))
    assert code == 0, err
    first, second = BuildManifest.read(str(tmp_path / "b1")), BuildManifest.read(str(tmp_path / "b4"))
    assert first.snapshot_hash != second.snapshot_hash and not second.reused
    assert {k: v for k, v in tree(features).items() if k.startswith(first.snapshot_hash)} == built


def test_a_snapshot_is_verified_before_it_is_reused(tmp_path, capsys, monkeypatch):
    """A snapshot at the right address whose files changed (or that records other extract content) is rebuilt,
    not reused: the reuse serves exactly what a fresh build gives."""
    uri = warehouse(tmp_path / "wh")
    extract_dir = extracted(capsys, monkeypatch, uri, tmp_path / "extract")
    first = build_features(extract_dir, str(tmp_path / "b1"), str(tmp_path / "features"))
    snapshot = Path(first.snapshot_uri)
    recorded = SnapshotManifest.read(first.snapshot_uri)
    assert recorded.extract_content_hash == ExtractManifest.read(extract_dir).content_hash and recorded.content_hash
    fresh = tree(snapshot)
    assert build_features(extract_dir, str(tmp_path / "b2"), str(tmp_path / "features")).reused

    test = pl.read_parquet(snapshot / "test.parquet")
    test.with_columns(pl.lit(1, pl.Int8).alias("label")).write_parquet(snapshot / "test.parquet")
    again = build_features(extract_dir, str(tmp_path / "b3"), str(tmp_path / "features"))
    assert not again.reused and again.snapshot_hash == first.snapshot_hash
    rebuilt = tree(snapshot)
    assert {k: v for k, v in rebuilt.items() if k != "manifest.json"} == {
        k: v for k, v in fresh.items() if k != "manifest.json"}

    # a snapshot written under this address from other extract content (the poisoned cache of issue 10)
    poisoned = SnapshotManifest.read(first.snapshot_uri).model_copy(update={"extract_content_hash": "0" * 64})
    poisoned.write(first.snapshot_uri)
    assert not build_features(extract_dir, str(tmp_path / "b4"), str(tmp_path / "features")).reused
    assert SnapshotManifest.read(first.snapshot_uri).extract_content_hash == recorded.extract_content_hash
    assert leftovers(tmp_path / "features") == []


def test_a_killed_extracts_staging_is_cleaned_by_the_next_try(tmp_path, capsys, monkeypatch):
    """Killed while writing its events, an extract leaves staging behind; the next try removes it."""
    uri = warehouse(tmp_path / "wh")
    extract_dir = tmp_path / "extract"
    killed_extract(uri, extract_dir, "writing-events")
    assert leftovers(extract_dir) and not ExtractManifest.exists(str(extract_dir))
    extracted(capsys, monkeypatch, uri, extract_dir)
    assert leftovers(extract_dir) == []
    assert build_features(str(extract_dir), str(tmp_path / "b"), str(tmp_path / "features")).rows["test"] > 0


def test_shared_staging_is_cleaned_once_stale(tmp_path):
    """In a shared directory (the snapshot root) a killed writer's staging is removed once it is stale; a
    young one may be a concurrent writer's and stays."""
    target = str(tmp_path / "features" / "abc")
    code = textwrap.dedent(f"""
        import os, signal
        from mlcontract import storage
        staged = storage.StagedDirectory({target!r})
        storage.write_bytes(storage.join_uri(staged.uri, "train.parquet"), b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -signal.SIGKILL
    (left,) = leftovers(tmp_path / "features")
    with storage.StagedDirectory(target) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "train.parquet"), b"whole")
    assert leftovers(tmp_path / "features") == [left]  # young: left alone
    old = time.time() - storage.STALE_STAGING_SECONDS - 60
    for path in [tmp_path / "features" / left, *(tmp_path / "features" / left).rglob("*")]:
        os.utime(path, (old, old))
    with storage.StagedDirectory(target) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "train.parquet"), b"again")
    assert leftovers(tmp_path / "features") == []
    assert (tmp_path / "features" / "abc" / "train.parquet").read_bytes() == b"again"


def test_object_store_directory_is_never_deleted_before_the_new_one_is_complete(monkeypatch):
    """On an object store (fsspec's in-memory store: the same non-local code path as S3) the previous output stays
    whole while the new one is written and when its writer fails; on commit the old manifest goes first, the
    stale files go, and the new manifest comes last."""
    final = f"memory://integrity-{uuid.uuid4().hex}/features/abc"
    with storage.StagedDirectory(final) as staged:
        for name in ("train.parquet", "test.parquet", "manifest.json"):
            storage.write_bytes(storage.join_uri(staged.uri, name), f"old {name}".encode())
    fs, path = storage.filesystem(final)
    old = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(path)}
    assert set(old) == {"train.parquet", "test.parquet", "manifest.json"}

    with pytest.raises(RuntimeError), storage.StagedDirectory(final) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "train.parquet"), b"new train")
        assert {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(path)} == old  # still the old output
        raise RuntimeError("the writer fails half-way")
    assert {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(path)} == old
    assert [p for p in fs.find(path.rsplit("/", 1)[0]) if ".tmp" in p] == []

    operations: list[tuple[str, str]] = []
    memory = type(fs)
    for name in ("cp_file", "rm_file"):
        original = getattr(memory, name)

        def logged(self, *args, _original=original, _name=name, **kwargs):
            target = str(args[1] if _name == "cp_file" else args[0])
            if target.startswith(f"{path}/"):  # the final directory's objects, not the staging's
                operations.append((_name, target.rsplit("/", 1)[-1]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(memory, name, logged)
    with storage.StagedDirectory(final) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "train.parquet"), b"new train")
        storage.write_bytes(storage.join_uri(staged.uri, "manifest.json"), b"new manifest")
    ops = operations
    assert ops[0] == ("rm_file", "manifest.json")  # the old directory stops being trusted first
    assert ops.index(("rm_file", "test.parquet")) < ops.index(("cp_file", "manifest.json")) == len(ops) - 1
    assert {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(path)} == {
        "train.parquet": b"new train", "manifest.json": b"new manifest"}
    assert [p for p in fsspec.filesystem("memory").find(path.rsplit("/", 1)[0]) if ".tmp" in p] == []
