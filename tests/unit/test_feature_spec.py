"""The feature spec: inference per column type, loading YAML/JSON, errors that name the user's column."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl
import pytest
from features.engineering.spec import (
    FeatureSpec,
    check_spec,
    infer_spec,
    infer_windows,
    load_spec,
    parse_spec,
)
from features.errors import SpecError

D = datetime
N = 400  # events


def events() -> pl.DataFrame:
    start = D(2024, 1, 1)
    return pl.DataFrame({
        "entity_id": [f"c{i % 40}" for i in range(N)],
        "event_ts": [start + timedelta(hours=12 * i) for i in range(N)],
        "amount": [float(i % 17) for i in range(N)],
        "items": [i % 5 for i in range(N)],
        "is_promo": [i % 3 == 0 for i in range(N)],
        "used_coupon": [i % 2 for i in range(N)],  # a boolean stored as 0/1 integers
        "channel": [["web", "app", "store"][i % 3] for i in range(N)],
        "sku": [f"sku{i % 120}" for i in range(N)],  # 120 distinct over 400 rows: high cardinality
        "order_id": [f"o{i}" for i in range(N)],  # unique per row: an id
        "line_no": list(range(N)),  # an integer unique per row: an id too
        "shipped_ts": [start + timedelta(hours=12 * i - 30) for i in range(N)],
        "empty": pl.Series([None] * N, dtype=pl.Float64),
    })


SPINE = pl.DataFrame({
    "entity_id": ["c1", "c2"],
    "snapshot_ts": [D(2024, 8, 1), D(2024, 8, 1)],
    "label": [1, 0],
})
ENTITIES = pl.DataFrame({
    "entity_id": ["c1", "c2"],
    "signup_ts": [D(2023, 1, 1), D(2023, 5, 1)],
    "plan": ["basic", "pro"],
    "seats": [3, 5],
    "vip": [True, False],
    "email": ["a@x", "b@x"],
})


def test_inference_per_column_type():
    spec = infer_spec(events().lazy(), ENTITIES.lazy(), SPINE.lazy())
    kinds = {name: column.kind for name, column in spec.events.items()}
    assert kinds == {
        "amount": "numeric", "items": "numeric", "is_promo": "boolean", "used_coupon": "boolean", "channel": "categorical",
        "sku": "high_cardinality", "order_id": "ignore", "line_no": "ignore", "shipped_ts": "timestamp", "empty": "ignore",
    }
    assert spec.events["amount"].aggregations == ["sum", "mean", "min", "max", "std", "last"]
    assert spec.events["is_promo"].aggregations == ["sum", "mean"]
    assert spec.events["channel"].top_k == 3 and spec.events["channel"].aggregations == ["count", "share"]
    assert spec.events["sku"].aggregations == ["distinct_count"]
    # the entity key, event_ts, snapshot and label never become features
    assert not {"entity_id", "event_ts", "snapshot_ts", "label"} & set(spec.events)
    uses = {name: use.use for name, use in spec.entity_attributes.items()}
    assert uses == {"signup_ts": "days_since", "plan": "one_hot", "seats": "numeric", "vip": "boolean",
                    "email": "one_hot"}
    # about 213 days of history before the snapshot: 7, 30, 90 and 180 days, and the 30-vs-90 ratio
    assert spec.windows_days == [7, 30, 90, 180] and spec.ratios == [(30, 90)]
    assert spec.recency and spec.tenure
    assert parse_spec(spec.to_dict()) == spec  # what the manifest stores round-trips


def test_an_id_like_entity_attribute_is_ignored():
    many = pl.DataFrame({"entity_id": [f"c{i}" for i in range(200)], "email": [f"u{i}@x" for i in range(200)]})
    spec = infer_spec(None, many.lazy(), SPINE.lazy())
    assert spec.entity_attributes["email"].use == "ignore"


def test_a_feature_table_gets_table_columns_and_no_event_features():
    table = SPINE.with_columns(tenure_months=pl.Series([3, 7]), region=pl.Series(["eu", "us"]),
                               active=pl.Series([True, False]), last_login=pl.Series([D(2024, 7, 1)] * 2))
    spec = infer_spec(None, None, table.lazy(), ["tenure_months", "region", "active", "last_login"])
    assert {c: u.use for c, u in spec.table_columns.items()} == {
        "tenure_months": "numeric", "region": "one_hot", "active": "boolean", "last_login": "days_since"}
    assert not spec.uses_events and spec.events == {} and spec.windows_days == []


def test_windows_follow_the_history_before_the_earliest_snapshot():
    first = D(2024, 1, 1)
    assert infer_windows(first, [first + timedelta(days=20)]) == [7, 30]
    assert infer_windows(first, [first + timedelta(days=100)]) == [7, 30, 90]
    snapshots = [first + timedelta(days=d) for d in (400, 200, 370)]
    assert infer_windows(first, snapshots) == [7, 30, 90, 180]  # the earliest one has 200 days
    assert infer_windows(None, []) == [7, 30]


YAML = """
version: 1
windows_days: [30, 7]
ratios: [[7, 30]]
events:
  amount: {kind: numeric, aggregations: [sum, std]}
  channel: {kind: categorical, top_k: 2, aggregations: [count, share]}
entity_attributes:
  plan: {use: one_hot, top_k: 5}
"""


def test_yaml_json_and_files_load_the_same_spec(tmp_path):
    from_yaml = load_spec(YAML)
    assert from_yaml.windows_days == [7, 30]
    assert from_yaml.events["channel"].top_k == 2
    as_json = json.dumps(from_yaml.to_dict())
    assert load_spec(as_json) == from_yaml
    (tmp_path / "spec.yaml").write_text(YAML)
    (tmp_path / "spec.json").write_text(as_json)
    assert load_spec(str(tmp_path / "spec.yaml")) == from_yaml == load_spec(str(tmp_path / "spec.json"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("events: {channel: {kind: categorical, aggregations: [mean]}}", "events.channel: aggregation(s) ['mean']"),
        ("events: {channel: {kind: categorical, top_k: 0}}", "events.channel.top_k"),
        ("events: {amount: {kind: numeric, top_k: 3}}", "top_k applies to categorical"),
        ("events: {amount: {kind: numbers}}", "events.amount.kind"),
        ("windows_days: [7, 30]\nratios: [[30, 90]]", "both windows must be in windows_days"),
        ("version: 2", "version"),
        ("colour: blue", "colour: Extra inputs are not permitted"),
        ("[1, 2]", "must be a mapping"),
        ("events: {a: [", "neither valid YAML nor JSON"),
        ("missing-spec.yaml", "does not exist"),
    ],
)
def test_a_bad_spec_is_a_clear_error(text, expected):
    with pytest.raises(SpecError, match="feature spec") as error:
        load_spec(text)
    assert expected in str(error.value)


COLUMNS = {"entity_id": "customer_id", "event_ts": "purchased_at", "snapshot_ts": "cutoff", "label": "churned"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"events": {"quantity": {"kind": "numeric"}}}, "events.quantity: column 'quantity' is not in the events"),
        ({"events": {"channel": {"kind": "numeric"}}}, "column 'channel' is String, but a numeric column must be a number"),
        ({"events": {"amount": {"kind": "timestamp"}}}, "a timestamp column must be a timestamp or date"),
        ({"events": {"amount": {"kind": "boolean"}}}, "a boolean column must be a boolean"),
        ({"events": {"customer_id": {"kind": "high_cardinality"}}}, "'customer_id' is the entity key"),
        ({"events": {"purchased_at": {"kind": "timestamp"}}}, "'purchased_at' is the event timestamp"),
        ({"entity_attributes": {"churned": {"use": "numeric"}}}, "'churned' is the label"),
        ({"entity_attributes": {"plan": {"use": "days_since"}}}, "entity_attributes.plan: column 'plan' is String"),
        ({"entity_attributes": {"tier": {"use": "one_hot"}}}, "column 'tier' is not in the entities table"),
        ({"table_columns": {"x": {"use": "numeric"}}}, "the extract has no feature table"),
    ],
)
def test_a_spec_that_does_not_fit_the_data_names_the_users_column(spec, expected):
    with pytest.raises(SpecError) as error:
        check_spec(FeatureSpec.model_validate(spec), events().schema,
                   ENTITIES.schema, None, COLUMNS)
    assert expected in str(error.value)


def test_a_feature_table_spec_with_event_features_is_refused():
    with pytest.raises(SpecError, match="no events"):
        check_spec(FeatureSpec(), None, None, pl.Schema({"x": pl.Float64}))
