"""Great Expectations gates: good data passes; each corruption fails naming expectation and column."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from features import synth
from features.errors import GateFailed
from features.extract.training import extract
from features.gates.features import validate_features
from features.gates.raw import validate_raw
from mlcontract.manifests import BuildManifest, ExtractManifest, GateManifest
from mlcontract.source import TrainingSource

CUTOFF = datetime(2026, 9, 1)


@pytest.fixture(scope="module")
def good_extract(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    uri = f"sqlite:///{root / 'wh.db'}"
    synth.generate(synth.SynthConfig(customers=400), uri)
    extract(uri, str(root / "extract"), cutoff=CUTOFF)
    extract(uri, str(root / "with_entities"), TrainingSource(entities_table="customers"), cutoff=CUTOFF)
    return root


def _copy(src: Path, dst: Path) -> Path:
    """A copy of an extract whose manifest points at the copy."""
    shutil.copytree(src, dst)
    manifest = ExtractManifest.read(str(dst))
    manifest.outputs = {k: v.replace(str(src), str(dst)) for k, v in manifest.outputs.items()}
    manifest.write(str(dst))
    return dst


def _corrupt(path: Path, **columns: pl.Expr) -> None:
    frame = pl.read_parquet(path)
    frame.with_columns(**columns).write_parquet(path)


def _row(i: int, value, otherwise: str) -> pl.Expr:
    return pl.when(pl.int_range(pl.len()) == i).then(value).otherwise(pl.col(otherwise))


def test_good_raw_data_passes(good_extract, tmp_path):
    manifest = validate_raw(str(good_extract / "with_entities"), str(tmp_path / "gate"))
    assert manifest.success is True and manifest.failures == []
    assert (
        manifest.rows["events"] == ExtractManifest.read(str(good_extract / "with_entities")).rows["events"]
    )
    results = json.loads((tmp_path / "gate" / "validation.json").read_text())
    assert set(results) == {"events", "labels", "entities"} and all(r["success"] for r in results.values())
    assert GateManifest.read(str(tmp_path / "gate")).results_uri.endswith("validation.json")


def test_corrupt_raw_data_fails_naming_expectation_and_column(good_extract, tmp_path):
    bad = _copy(good_extract / "extract", tmp_path / "bad")
    part = bad / "events" / "part-00000.parquet"
    _corrupt(part, entity_id=_row(3, None, "entity_id"), amount=_row(5, -1.0, "amount"))
    _corrupt(bad / "labels.parquet", label=_row(2, 2, "label").cast(pl.Int8))
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(bad), str(tmp_path / "gate"))
    message = str(failed.value)
    # the user's column names (the extract's source calls them customer_id and churned), not the canonical ones
    assert "expect_column_values_to_not_be_null on customer_id" in message
    assert "expect_column_values_to_be_between on amount" in message
    assert ("labels: expect_column_values_to_be_in_set on churned: column churned (label) must hold 0/1 or booleans "
            "for task=binary: 1 unexpected value(s), e.g. [2] (rows [2])") in message
    manifest = GateManifest.read(str(tmp_path / "gate"))
    assert manifest.success is False
    assert {(f.dataset, f.expectation, f.column) for f in manifest.failures} == {
        ("events", "expect_column_values_to_not_be_null", "customer_id"),
        ("events", "expect_column_values_to_be_between", "amount"),
        ("labels", "expect_column_values_to_be_in_set", "churned"),
    }
    amount = next(f for f in manifest.failures if f.column == "amount")
    assert amount.observed["unexpected_count"] == 1


def test_empty_labels_fail(good_extract, tmp_path):
    bad = _copy(good_extract / "extract", tmp_path / "bad")
    pl.read_parquet(bad / "labels.parquet").head(0).write_parquet(bad / "labels.parquet")
    with pytest.raises(GateFailed, match="labels: expect_table_row_count_to_be_between on table"):
        validate_raw(str(bad), str(tmp_path / "gate"))


def test_events_after_cutoff_and_duplicate_labels_fail(good_extract, tmp_path):
    bad = _copy(good_extract / "extract", tmp_path / "bad")
    _corrupt(bad / "events" / "part-00000.parquet", event_ts=_row(0, datetime(2026, 9, 2), "event_ts"))
    labels = pl.read_parquet(bad / "labels.parquet")
    pl.concat([labels, labels.head(1)]).write_parquet(bad / "labels.parquet")
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(bad), str(tmp_path / "gate"))
    assert "expect_column_values_to_be_between on event_ts" in str(failed.value)
    assert "expect_compound_columns_to_be_unique on ['customer_id', 'snapshot_ts']" in str(failed.value)


def test_too_few_events_fails(good_extract, tmp_path):
    with pytest.raises(GateFailed, match="events: expect_table_row_count_to_be_between"):
        validate_raw(str(good_extract / "extract"), str(tmp_path / "gate"), min_events=10**9)


# --- gate 2 ------------------------------------------------------------------------------------------

FEATURES = ["events_30d", "days_since_last_event", "support_share_90d", "spend_trend"]
# what the build step declares for such columns: counts and days never negative, a share within [0, 1]
BOUNDS = {"events_30d": (0, None), "days_since_last_event": (0, None), "support_share_90d": (0, 1),
          "spend_trend": (None, None)}


def _snapshot(tmp_path: Path, contents: dict | None = None, **overrides: pl.DataFrame) -> Path:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir(parents=True)
    rows = {}
    for i, split in enumerate(("train", "valid", "test")):
        n = 50 * (3 - i)
        frame = overrides.get(split)
        if frame is None:
            frame = pl.DataFrame(
                {
                    "entity_id": [f"C{j:05d}" for j in range(n)],
                    "snapshot_ts": [datetime(2026, 8, 1 + i)] * n,
                    "label": [j % 4 == 0 for j in range(n)],
                    "events_30d": [float(j % 7) for j in range(n)],
                    "days_since_last_event": [float(j) for j in range(n)],
                    "support_share_90d": [(j % 10) / 10 for j in range(n)],
                    "spend_trend": [(-1.0) ** j for j in range(n)],
                }
            ).with_columns(pl.col("label").cast(pl.Int8))
        frame.write_parquet(snapshot / f"{split}.parquet")
        rows[split] = frame.height
    build = tmp_path / "build"
    BuildManifest(
        outputs={split: str(snapshot / f"{split}.parquet") for split in rows},
        snapshot_uri=str(snapshot),
        snapshot_hash="abc",
        reused=False,
        extract="extract",
        extract_content_hash="def",
        feature_columns=FEATURES,
        feature_bounds=BOUNDS,
        rows=rows,
        label_rate={},
        splits={},
        feature_config={},
        **(contents or {}),
    ).write(str(build))
    return build


def test_good_features_pass(tmp_path):
    manifest = validate_features(str(_snapshot(tmp_path)), str(tmp_path / "gate"))
    assert manifest.success is True
    assert manifest.rows == {"train": 150, "valid": 100, "test": 50}
    assert manifest.feature_columns == FEATURES


def _valid_with(**changes) -> pl.DataFrame:
    n = 100
    base = pl.DataFrame(
        {
            "entity_id": [f"C{j:05d}" for j in range(n)],
            "snapshot_ts": [datetime(2026, 8, 2)] * n,
            "label": pl.Series([j % 4 == 0 for j in range(n)]).cast(pl.Int8),
            "events_30d": [float(j % 7) for j in range(n)],
            "days_since_last_event": [float(j) for j in range(n)],
            "support_share_90d": [(j % 10) / 10 for j in range(n)],
            "spend_trend": [1.0] * n,
        }
    )
    return base.with_columns(**changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"spend_trend": _row(4, float("inf"), "spend_trend")},
            "expect_column_values_to_be_between on spend_trend",
        ),
        ({"events_30d": _row(1, None, "events_30d")}, "expect_column_values_to_not_be_null on events_30d"),
        (
            {"days_since_last_event": _row(1, float("nan"), "days_since_last_event")},
            "expect_column_values_to_not_be_null on days_since_last_event",
        ),
        ({"events_30d": _row(1, -2.0, "events_30d")}, "expect_column_values_to_be_between on events_30d"),
        (
            {"support_share_90d": _row(1, 1.5, "support_share_90d")},
            "expect_column_values_to_be_between on support_share_90d",
        ),
        ({"label": _row(0, 3, "label").cast(pl.Int8)}, "expect_column_values_to_be_in_set on label"),
    ],
)
def test_bad_features_fail_naming_expectation_and_column(tmp_path, changes, expected):
    build = _snapshot(tmp_path, valid=_valid_with(**changes))
    with pytest.raises(GateFailed) as failed:
        validate_features(str(build), str(tmp_path / "gate"))
    assert f"valid: {expected}" in str(failed.value)
    assert GateManifest.read(str(tmp_path / "gate")).success is False


def test_empty_split_and_missing_feature_fail(tmp_path):
    build = _snapshot(tmp_path, test=_valid_with().head(0).drop("spend_trend"))
    with pytest.raises(GateFailed) as failed:
        validate_features(str(build), str(tmp_path / "gate"))
    assert "test: expect_table_row_count_to_be_between on table" in str(failed.value)
    assert "test: expect_table_columns_to_match_set on ['entity_id', 'snapshot_ts', 'label'" in str(
        failed.value
    )


# --- one bad row among a million good ones ----------------------------------------------------------

MILLION = 1_000_000
BAD_ROW = 654_321


@pytest.fixture(scope="module")
def million_extract(tmp_path_factory) -> Path:
    """A good extract of 1 M events and 1 M label rows, written directly in the canonical layout."""
    root = tmp_path_factory.mktemp("million")
    (root / "events").mkdir()
    i = pl.int_range(MILLION)
    pl.select(
        entity_id=pl.format("C{}", i % 50_000),
        event_ts=pl.datetime(2026, 1, 1) + pl.duration(seconds=i * 10),
        amount=(i % 997).cast(pl.Float64),
    ).write_parquet(root / "events" / "part-00000.parquet")
    pl.select(
        entity_id=pl.format("C{}", i),
        snapshot_ts=pl.when(i % 2 == 0).then(pl.datetime(2026, 8, 1)).otherwise(pl.datetime(2026, 8, 15)),
        label=(i % 4 == 0).cast(pl.Int8),
    ).write_parquet(root / "labels.parquet")
    outputs = {"events": str(root / "events"), "labels": str(root / "labels.parquet")}
    ExtractManifest(
        outputs=outputs, rows={"events": MILLION, "labels": MILLION}, parts=1, content_hash="-",
        cutoff=CUTOFF.isoformat(), source={}, snapshots=["2026-08-01T00:00:00", "2026-08-15T00:00:00"],
    ).write(str(root))
    return root


def test_million_good_rows_pass(million_extract, tmp_path):
    manifest = validate_raw(str(million_extract), str(tmp_path / "gate"))
    assert manifest.success is True and manifest.rows == {"events": MILLION, "labels": MILLION}


@pytest.mark.parametrize(
    ("file", "changes", "failure"),
    [
        (
            "events/part-00000.parquet",
            {"entity_id": None},
            ("events", "expect_column_values_to_not_be_null", "entity_id"),
        ),
        (
            "events/part-00000.parquet",
            {"amount": -0.01},
            ("events", "expect_column_values_to_be_between", "amount"),
        ),
        (
            "events/part-00000.parquet",
            {"event_ts": CUTOFF},
            ("events", "expect_column_values_to_be_between", "event_ts"),
        ),
        ("labels.parquet", {"label": 2}, ("labels", "expect_column_values_to_be_in_set", "label")),
    ],
    ids=["null entity_id", "negative amount", "event at cutoff", "label 2"],
)
def test_one_bad_raw_row_in_a_million_fails(million_extract, tmp_path, file, changes, failure):
    bad = _copy(million_extract, tmp_path / "bad")
    frame = pl.read_parquet(bad / file)
    frame.with_columns(
        **{c: _row(BAD_ROW, v, c).cast(frame.schema[c]) for c, v in changes.items()}
    ).write_parquet(bad / file)
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(bad), str(tmp_path / "gate"))
    # a rule that says what it means (the label's) puts that first, then the count
    assert re.search(f"{failure[0]}: {failure[1]} on {failure[2]}: (.*: )?1 unexpected value", str(failed.value))
    (found,) = GateManifest.read(str(tmp_path / "gate")).failures
    assert (found.dataset, found.expectation, found.column) == failure
    assert found.observed["unexpected_count"] == 1 and found.observed["rows"] == [BAD_ROW]


def test_one_duplicate_label_key_in_a_million_fails(million_extract, tmp_path):
    bad = _copy(million_extract, tmp_path / "bad")
    labels = pl.read_parquet(bad / "labels.parquet")
    copy_of = labels.row(BAD_ROW - 2, named=True)  # same snapshot date (rows alternate between two)
    labels.with_columns(
        entity_id=_row(BAD_ROW, pl.lit(copy_of["entity_id"]), "entity_id"),
        snapshot_ts=_row(BAD_ROW, copy_of["snapshot_ts"], "snapshot_ts"),
    ).write_parquet(bad / "labels.parquet")
    with pytest.raises(
        GateFailed, match=r"labels: expect_compound_columns_to_be_unique on \['entity_id', 'snapshot_ts'\]"
    ):
        validate_raw(str(bad), str(tmp_path / "gate"))
    (found,) = GateManifest.read(str(tmp_path / "gate")).failures
    assert found.observed["unexpected_count"] == 2  # both copies, as GX counts them
    assert found.observed["rows"] == [BAD_ROW - 2, BAD_ROW]


@pytest.mark.parametrize(
    ("value", "failure"),
    [
        (float("inf"), ("expect_column_values_to_be_between", "spend_trend")),
        (None, ("expect_column_values_to_not_be_null", "spend_trend")),
        (float("nan"), ("expect_column_values_to_not_be_null", "spend_trend")),
    ],
    ids=["inf", "null", "nan"],
)
def test_one_bad_feature_in_a_million_fails(tmp_path, value, failure):
    i = pl.int_range(MILLION)
    valid = pl.select(
        entity_id=pl.format("C{}", i),
        snapshot_ts=pl.lit(datetime(2026, 8, 2)) + pl.duration(days=i * 0),
        label=(i % 4 == 0).cast(pl.Int8),
        events_30d=(i % 7).cast(pl.Float64),
        days_since_last_event=i.cast(pl.Float64),
        support_share_90d=(i % 10) / 10,
        spend_trend=pl.lit(1.0) + i * 0,
    )
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = _snapshot(tmp_path / "good", valid=valid)
    assert validate_features(str(good), str(tmp_path / "good_gate")).rows["valid"] == MILLION
    build = _snapshot(
        tmp_path / "bad",
        valid=valid.with_columns(spend_trend=_row(BAD_ROW, value, "spend_trend").cast(pl.Float64)),
    )
    with pytest.raises(GateFailed) as failed:
        validate_features(str(build), str(tmp_path / "gate"))
    assert f"valid: {failure[0]} on {failure[1]}: 1 unexpected value(s)" in str(failed.value)
    (found,) = GateManifest.read(str(tmp_path / "gate")).failures
    assert (found.dataset, found.expectation, found.column) == ("valid", *failure)
    assert found.observed["unexpected_count"] == 1 and found.observed["rows"] == [BAD_ROW]


def test_null_allowance_is_gx_mostly(tmp_path):
    one_null = _valid_with(events_30d=_row(1, None, "events_30d"))  # 1 of 100 rows
    build = _snapshot(tmp_path, valid=one_null)
    assert validate_features(str(build), str(tmp_path / "ok"), max_null_fraction=0.01).success is True
    with pytest.raises(GateFailed, match="valid: expect_column_values_to_not_be_null on events_30d"):
        validate_features(str(build), str(tmp_path / "strict"), max_null_fraction=0.005)


def test_stored_results_name_the_real_expectation_column_and_count(good_extract, tmp_path):
    bad = _copy(good_extract / "extract", tmp_path / "bad")
    _corrupt(bad / "labels.parquet", label=_row(2, 2, "label").cast(pl.Int8))
    with pytest.raises(GateFailed):
        validate_raw(str(bad), str(tmp_path / "gate"))
    results = json.loads((tmp_path / "gate" / "validation.json").read_text())
    assert results["events"]["success"] is True and results["labels"]["success"] is False
    events = {(r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column")): r
              for r in results["events"]["results"]}
    amount = events[("expect_column_values_to_be_between", "amount")]
    assert amount["success"] is True and amount["expectation_config"]["kwargs"]["max_value"] == 1.0e6
    assert amount["result"]["unexpected_count"] == 0
    labels = {r["expectation_config"]["type"]: r for r in results["labels"]["results"]}
    label = labels["expect_column_values_to_be_in_set"]
    assert label["success"] is False
    assert label["expectation_config"]["kwargs"] == {"column": "label", "value_set": [0, 1]}
    assert label["expectation_config"]["meta"] == {"source_column": "churned"}  # what the warehouse calls it
    assert label["result"]["unexpected_count"] == 1 and label["result"]["partial_unexpected_list"] == [2]
    rows = pl.read_parquet(bad / "labels.parquet").height
    assert label["result"]["element_count"] == rows
    assert labels["expect_table_row_count_to_be_between"]["result"]["observed_value"] == rows
    assert results["labels"]["statistics"]["unsuccessful_expectations"] == 1


def test_stored_null_failure_names_the_column_and_count(good_extract, tmp_path):
    bad = _copy(good_extract / "extract", tmp_path / "bad")
    part = bad / "events" / "part-00000.parquet"
    _corrupt(part, entity_id=pl.when(pl.int_range(pl.len()).is_in([1, 4, 9])).then(None).otherwise(pl.col("entity_id")))
    with pytest.raises(GateFailed, match="expect_column_values_to_not_be_null on customer_id: 3 unexpected"):
        validate_raw(str(bad), str(tmp_path / "gate"))
    events = json.loads((tmp_path / "gate" / "validation.json").read_text())["events"]
    (failed,) = [r for r in events["results"] if not r["success"]]
    assert failed["expectation_config"]["type"] == "expect_column_values_to_not_be_null"
    assert failed["expectation_config"]["kwargs"] == {"column": "entity_id"}
    assert failed["result"]["unexpected_count"] == 3
    assert failed["result"]["partial_unexpected_index_list"] == [1, 4, 9]


# --- the rules follow the build's task and split, in the user's column names -----------------------------

ONE_CUTOFF = datetime(2026, 3, 1)


def _user_extract(tmp_path: Path, label: str, *, labels: list[tuple], events: list[tuple] | None = None) -> Path:
    """An extract (the real one, from SQLite) of events `purchases(buyer, bought_at, amount)` and labels
    `outcomes(buyer, cutoff_ts, <label>)`: the user's own names for entity, timestamp, snapshot and label."""
    import sqlalchemy as sa

    tmp_path.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'wh.db'}"
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE purchases (buyer TEXT, bought_at TEXT, amount REAL)"))
        conn.execute(sa.text(f"CREATE TABLE outcomes (buyer TEXT, cutoff_ts TEXT, {label})"))
        rows = events or [(f"b{i}", "2026-02-01 10:00:00", 5.0) for i in range(len(labels))]
        conn.execute(sa.text("INSERT INTO purchases VALUES (:b, :t, :a)"), [{"b": b, "t": t, "a": a} for b, t, a in rows])
        conn.execute(sa.text("INSERT INTO outcomes VALUES (:b, :c, :y)"), [{"b": b, "c": c, "y": y} for b, c, y in labels])
    engine.dispose()
    source = TrainingSource(events_table="purchases", labels_table="outcomes", entity_key="buyer",
                            timestamp_column="bought_at", snapshot_column="cutoff_ts", label_column=label.split()[0])
    extract(uri, str(tmp_path / "extract"), source)
    return tmp_path / "extract"


def _one_cutoff(values: list) -> list[tuple]:
    return [(f"b{i}", ONE_CUTOFF.isoformat(sep=" "), v) for i, v in enumerate(values)]


def test_one_snapshot_date_fails_a_time_split_only(tmp_path):
    extracted = _user_extract(tmp_path, "churn INTEGER", labels=_one_cutoff([0, 1] * 10))
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(extracted), str(tmp_path / "time"), split="time")
    assert ("labels: expect_column_unique_value_count_to_be_between on cutoff_ts: column cutoff_ts (snapshot) has 1 "
            "distinct value(s); a time split needs >= 3 (use split=entity or auto)") in str(failed.value)
    assert "snapshot_ts" not in str(failed.value)
    (found,) = GateManifest.read(str(tmp_path / "time")).failures
    assert found.column == "cutoff_ts" and found.observed == 1
    for split in ("auto", "entity"):
        assert validate_raw(str(extracted), str(tmp_path / split), split=split).success is True


def test_binary_labels_that_are_not_0_or_1_are_shown_as_values_not_nulls(tmp_path):
    extracted = _user_extract(tmp_path / "a", "churn REAL", labels=_one_cutoff([0, 1, 0.7, 1, 0, 1.9] * 3))
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(extracted), str(tmp_path / "a" / "gate"))
    (found,) = GateManifest.read(str(tmp_path / "a" / "gate")).failures
    assert (found.expectation, found.column) == ("expect_column_values_to_be_in_set", "churn")
    assert set(found.observed["examples"]) == {0.7, 1.9} and found.observed["unexpected_count"] == 6
    assert "column churn (label) must hold 0/1 or booleans for task=binary: 6 unexpected value(s)" in str(failed.value)
    text = _user_extract(tmp_path / "b", "churn TEXT", labels=_one_cutoff(["1", "0", "yes", "0"] * 3))
    with pytest.raises(GateFailed, match=r"on churn: .* 3 unexpected value\(s\), e\.g\. \['yes', 'yes', 'yes'\]"):
        validate_raw(str(text), str(tmp_path / "b" / "gate"))
    flags = _user_extract(tmp_path / "c", "churn BOOLEAN", labels=_one_cutoff([True, False, False, False] * 3))
    assert validate_raw(str(flags), str(tmp_path / "c" / "gate")).success is True


def test_multiclass_needs_two_to_a_sane_number_of_classes(tmp_path):
    classes = _user_extract(tmp_path / "a", "tier TEXT", labels=_one_cutoff(["gold", "silver", "bronze"] * 5))
    assert validate_raw(str(classes), str(tmp_path / "a" / "gate"), task="multiclass").success is True
    # a binary gate on the same labels names the bad values
    with pytest.raises(GateFailed, match="column tier \\(label\\) must hold 0/1 or booleans for task=binary"):
        validate_raw(str(classes), str(tmp_path / "a" / "binary"))
    ids = _user_extract(tmp_path / "b", "tier TEXT", labels=_one_cutoff([f"id{i}" for i in range(201)]))
    with pytest.raises(GateFailed, match="on tier: column tier \\(label\\) has 201 distinct value\\(s\\); "
                                         "task=multiclass needs 2..200 classes"):
        validate_raw(str(ids), str(tmp_path / "b" / "gate"), task="multiclass")


def test_regression_needs_finite_varying_numbers(tmp_path):
    amounts = _user_extract(tmp_path / "a", "spend REAL", labels=_one_cutoff([0.7, 12.5, 1.9, 3.0]))
    assert validate_raw(str(amounts), str(tmp_path / "a" / "gate"), task="regression").success is True
    words = _user_extract(tmp_path / "b", "spend TEXT", labels=_one_cutoff(["high", "low"]))
    with pytest.raises(GateFailed, match="on spend: column spend \\(label\\) must hold numbers for task=regression, "
                                         "not String"):
        validate_raw(str(words), str(tmp_path / "b" / "gate"), task="regression")
    constant = _user_extract(tmp_path / "c", "spend REAL", labels=_one_cutoff([2.0, 2.0, 2.0]))
    with pytest.raises(GateFailed, match="column spend \\(label\\) is constant"):
        validate_raw(str(constant), str(tmp_path / "c" / "gate"), task="regression")


def test_no_event_before_any_snapshot_is_flagged(tmp_path):
    late = [(f"b{i}", "2026-04-01 10:00:00", 5.0) for i in range(4)]
    extracted = _user_extract(tmp_path, "churn INTEGER", labels=_one_cutoff([0, 1, 0, 1]), events=late)
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(extracted), str(tmp_path / "gate"))
    assert ("events: expect_column_min_to_be_between on bought_at: no event of column bought_at (timestamp) is "
            "before any snapshot (the latest is 2026-03-01 in column cutoff_ts (snapshot)): every feature would be "
            "empty") in str(failed.value)


def test_features_gate_labels_follow_the_task_in_the_users_names(tmp_path):
    churned = {"columns": {"entity_id": "customer_id", "label": "churned"}}
    one_class = _valid_with(label=pl.lit(0, pl.Int8))
    with pytest.raises(GateFailed) as failed:
        validate_features(str(_snapshot(tmp_path / "a", churned, valid=one_class)), str(tmp_path / "a" / "gate"))
    assert ("valid: expect_column_stdev_to_be_between on churned: column churned (label) has one class only in valid: "
            "an AUC needs both") in str(failed.value)
    # multiclass: class indexes of the manifest's classes
    tiers = {"task": "multiclass", "classes": ["bronze", "gold", "silver"], "columns": {"label": "tier"}}
    valid = _valid_with(label=(pl.int_range(pl.len()) % 3).cast(pl.Int8))
    ok = _snapshot(tmp_path / "b", tiers, **{s: valid for s in ("train", "valid", "test")})
    assert validate_features(str(ok), str(tmp_path / "b" / "gate")).success is True
    bad = _snapshot(tmp_path / "c", tiers, train=valid, valid=valid, test=_valid_with(label=pl.lit(3, pl.Int8)))
    with pytest.raises(GateFailed, match=r"test: expect_column_values_to_be_in_set on tier: column tier \(label\) must "
                                         r"be a class index 0\.\.2 of the build's classes"):
        validate_features(str(bad), str(tmp_path / "c" / "gate"))
    # regression: any finite number, no rate rule
    spend = {"task": "regression", "columns": {"label": "spend"}}
    amounts = _valid_with(label=pl.int_range(pl.len()).cast(pl.Float64) * 1.5)
    ok = _snapshot(tmp_path / "d", spend, **{s: amounts for s in ("train", "valid", "test")})
    assert validate_features(str(ok), str(tmp_path / "d" / "gate")).success is True
    bad = _snapshot(tmp_path / "e", spend, train=amounts, valid=amounts.with_columns(label=_row(3, float("inf"), "label")),
                    test=amounts)
    with pytest.raises(GateFailed, match=r"valid: expect_column_values_to_be_between on spend: column spend \(label\) "
                                         r"must be finite: 1 unexpected value"):
        validate_features(str(bad), str(tmp_path / "e" / "gate"))


def test_features_gate_needs_every_class_in_train_and_two_elsewhere_for_multiclass(tmp_path):
    tiers = {"task": "multiclass", "classes": ["bronze", "gold", "silver"], "columns": {"label": "tier"}}
    every = _valid_with(label=(pl.int_range(pl.len()) % 3).cast(pl.Int8))
    two = _valid_with(label=(pl.int_range(pl.len()) % 2).cast(pl.Int8))
    bad = _snapshot(tmp_path, tiers, train=two, valid=two, test=_valid_with(label=pl.lit(1, pl.Int8)))
    with pytest.raises(GateFailed) as failed:
        validate_features(str(bad), str(tmp_path / "gate"))
    assert ("train: expect_column_unique_value_count_to_be_between on tier: column tier (label) has 2 of the 3 "
            "classes in train; task=multiclass needs every class there") in str(failed.value)
    assert "test: expect_column_unique_value_count_to_be_between on tier: column tier (label) has 1 of the 3 " \
           "classes in test; task=multiclass needs at least two there" in str(failed.value)
    assert "valid:" not in str(failed.value)
    ok = _snapshot(tmp_path / "ok", tiers, train=every, valid=two, test=two)
    assert validate_features(str(ok), str(tmp_path / "ok" / "gate")).success is True


def test_raw_gate_refuses_text_1_0_and_fractional_classes(tmp_path):
    text = _user_extract(tmp_path / "a", "churn TEXT", labels=_one_cutoff(["1", "0", "1.0", "0"] * 3))
    with pytest.raises(GateFailed, match=r"on churn: .* 3 unexpected value\(s\), e\.g\. \['1\.0', '1\.0', '1\.0'\]"):
        validate_raw(str(text), str(tmp_path / "a" / "gate"))
    fractions = _user_extract(tmp_path / "b", "tier REAL", labels=_one_cutoff([1.0, 2.0, 2.5] * 3))
    with pytest.raises(GateFailed, match=r"column tier \(label\) must hold class labels .* 3 unexpected value\(s\), "
                                         r"e\.g\. \[2\.5"):
        validate_raw(str(fractions), str(tmp_path / "b" / "gate"), task="multiclass")
    whole = _user_extract(tmp_path / "c", "tier REAL", labels=_one_cutoff([1.0, 2.0, 3.0] * 3))
    assert validate_raw(str(whole), str(tmp_path / "c" / "gate"), task="multiclass").success is True
