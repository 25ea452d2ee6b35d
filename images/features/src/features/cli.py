"""``python -m features <command>``: the feature image's steps (see docs/steps.md).

Each command reads its inputs from URIs (the warehouse URI only from env ``WAREHOUSE_URI``), writes its
outputs under ``--out`` (default: env ``STEP_OUTPUT_URI``) with ``manifest.json`` last, logs progress to
stdout, and exits 1 with one line naming what is wrong when the input is bad.
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import date

from mlcontract.cli import Commands, iso_date, optional_timestamp, run
from mlcontract.env import StepEnvironment
from mlcontract.errors import StepInputError
from mlcontract.manifests import Manifest, SeedManifest
from mlcontract.names import AUTO_SPLIT, BINARY, DEFAULT_PREDICTIONS_TABLE, SPLIT_METHODS, TASKS


def cmd_seed(args: argparse.Namespace, env: StepEnvironment) -> SeedManifest:
    from features import synth, synth_shapes

    given = {k: v for k, v in vars(args).items() if v is not None}  # unset options: the shape's defaults

    def configure(cls):
        return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})

    if args.shape == "demo":
        if args.cutoffs is not None:
            raise StepInputError("--cutoffs is for the other shapes; the demo shape takes --snapshots")
        report = synth.generate(configure(synth.SynthConfig), env.warehouse(args.warehouse_uri))
        print(f"oracle AUC {report.oracle_auc:.4f} (label rate {report.label_rate:.3f})")
    else:
        report = synth_shapes.generate(configure(synth_shapes.ShapeConfig), env.warehouse(args.warehouse_uri))
        print(f"shape {report.shape}: tables {report.rows}; oracle on the test rows {report.oracle_test}")
    manifest = SeedManifest(report=report.to_json(), seconds=report.seconds)
    out = args.out or env.step_output_uri
    if out:  # seeding also runs outside a pipeline step, where there is nowhere to write
        manifest.write(out)
    return manifest


def cmd_extract(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from mlcontract.source import TrainingSource

    from features.extract.training import extract

    # only what was given: the source model knows the defaults of events and of a feature table
    relations = _given_relations(args, "events", "labels", "features")
    if args.entities_table is None and not (args.features_table or args.features_query):
        args.entities_table = "customers"  # the command's default, with events
    source = TrainingSource(
        **relations,
        **_given(args, "entities_table", "snapshot_column"),
        entity_key=args.entity_key,
        timestamp_column=args.timestamp_column,
        label_column=args.label_column,
    )
    return extract(env.warehouse(), env.output(args.out), source, cutoff=args.cutoff, batch_rows=args.batch_rows)


def cmd_extract_labels(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from mlcontract.source import LabelSource

    from features.extract.labels import extract_labels

    source = LabelSource(
        labels_table=None if args.labels_query else args.labels_table,
        labels_query=args.labels_query,
        entity_key=args.entity_key,
        snapshot_column=args.snapshot_column or None,
        label_column=args.label_column,
    )
    return extract_labels(
        env.warehouse(), env.output(args.out), args.score_date, source, batch_rows=args.batch_rows, task=args.task
    )


def cmd_validate_raw(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.engineering.spec import load_spec
    from features.gates.raw import validate_raw

    return validate_raw(
        args.extract, env.output(args.out),
        min_events=args.min_events, max_amount=args.max_amount, min_snapshots=args.min_snapshots,
        task=args.task, split=args.split, spec=load_spec(args.feature_spec) if args.feature_spec.strip() else None,
    )


def cmd_build(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.engineering.snapshot import build_features
    from features.engineering.spec import load_spec

    spec = load_spec(args.feature_spec) if args.feature_spec.strip() else None
    return build_features(args.extract, env.output(args.out), args.snapshot_root, spec,
                          task=args.task, split=args.split, split_seed=args.split_seed)


def cmd_validate_features(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.gates.features import validate_features

    return validate_features(args.features, env.output(args.out), max_null_fraction=args.max_null_fraction)


def cmd_extract_scoring(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from mlcontract.source import ScoringSource

    from features.extract.scoring import extract_scoring

    if args.as_of is None:
        raise StepInputError("--as-of is required: the date to score (events strictly before it are used)")
    source = ScoringSource(
        **_given_relations(args, "events", "features"),
        **_given(args, "entities_table", "signup_column", "snapshot_column", "label_column"),
        entity_key=args.entity_key,
        timestamp_column=args.timestamp_column,
    )
    return extract_scoring(env.warehouse(), env.output(args.out), args.as_of, source, batch_rows=args.batch_rows)


def cmd_build_scoring(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.engineering.scoring import build_scoring

    return build_scoring(args.extract, env.output(args.out), args.reference_snapshot)


def cmd_build_champion_features(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.engineering.comparison import build_champion_features

    return build_champion_features(
        args.features, env.output(args.out), args.model_name, args.champion_version, args.reference_snapshot
    )


def cmd_validate_predictions(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.gates.predictions import validate_predictions

    return validate_predictions(args.predictions, args.spine, env.output(args.out))


def cmd_publish_predictions(args: argparse.Namespace, env: StepEnvironment) -> Manifest:
    from features.publish import publish_predictions

    return publish_predictions(
        args.predictions, env.output(args.out), env.warehouse(), env.artifacts(args.artifact_root), args.table
    )


def _given(args: argparse.Namespace, *names: str) -> dict[str, str | None]:
    """The options given on the command line ('' stands for none)."""
    return {name: getattr(args, name) or None for name in names if getattr(args, name) is not None}


def _given_relations(args: argparse.Namespace, *kinds: str) -> dict[str, str | None]:
    """The table or query given for each relation; a query replaces the default table."""
    given: dict[str, str | None] = {}
    for kind in kinds:
        table, query = getattr(args, f"{kind}_table"), getattr(args, f"{kind}_query")
        if query:
            given.update({f"{kind}_table": None, f"{kind}_query": query})
        elif table is not None:
            given[f"{kind}_table"] = table
    return given


def _feature_table(command: argparse.ArgumentParser, *, relations: str) -> None:
    group = command.add_mutually_exclusive_group()
    group.add_argument("--features-table", help=f"a ready-made feature table, instead of {relations}")
    group.add_argument("--features-query", help="SQL query returning the feature table (instead of a table)")


def _source_columns(command: argparse.ArgumentParser, *names: str) -> None:
    defaults = {"entity-key": "customer_id", "timestamp-column": "event_ts", "snapshot-column": "snapshot_ts",
                "label-column": "churned"}
    for name in names:
        command.add_argument(f"--{name}", default=defaults[name])


def _relation(command: argparse.ArgumentParser, kind: str, table: str | None) -> None:
    group = command.add_mutually_exclusive_group()
    group.add_argument(f"--{kind}-table", default=table)
    group.add_argument(f"--{kind}-query", help=f"SQL query returning the {kind} (instead of a table)")


def commands() -> Commands:
    env = StepEnvironment()
    cli = Commands("features", __doc__.split("\n\n")[0])

    def add(name: str, handler, help: str) -> argparse.ArgumentParser:
        return cli.add(name, lambda args: handler(args, env), help)

    seed = add("seed", cmd_seed, "seed the synthetic warehouse (replaces its tables)")
    seed.add_argument("--warehouse-uri", help="SQLAlchemy URI (default: env WAREHOUSE_URI)")
    seed.add_argument(
        "--shape",
        choices=("demo", "retail", "feature-table", "multiclass", "regression"),
        default="demo",
        help="demo: customers/events/churn_labels; the others: their own tables (see features.synth_shapes)",
    )
    seed.add_argument("--customers", type=int, default=10_000, help="entities (customers, clients, accounts...)")
    seed.add_argument("--events-per-customer", type=float, default=40.0)
    seed.add_argument("--days", type=int, help="days of history (default: demo 240, other shapes 365)")
    seed.add_argument("--snapshots", type=int, default=6, help="demo: label snapshot dates")
    seed.add_argument("--snapshot-interval-days", type=int, default=14, help="demo: days between snapshots")
    seed.add_argument("--cutoffs", type=int, help="other shapes: monthly label dates (default: the shape's)")
    seed.add_argument("--label-horizon-days", type=int, help="time after the last label date (default: demo 30, others 60)")
    seed.add_argument("--drift", type=float, default=0.0, help="0..1: shift of the most recent events")
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--end-date", type=iso_date, default=date(2026, 10, 1))

    extract = add("extract", cmd_extract, "warehouse (env WAREHOUSE_URI) -> canonical parquet, streamed")
    _relation(extract, "events", None)  # default: table events
    _relation(extract, "labels", None)  # default: table churn_labels
    _feature_table(extract, relations="events, labels and entities")
    extract.add_argument("--entities-table", help="static attributes (default: customers with events); '' for none")
    _source_columns(extract, "entity-key", "timestamp-column", "label-column")
    extract.add_argument(
        "--snapshot-column", help="the labels' snapshot date (default: snapshot_ts); optional for a feature table"
    )
    extract.add_argument("--cutoff", type=optional_timestamp, help="ISO date/datetime: events before, snapshots up to")
    extract.add_argument("--batch-rows", type=int, default=500_000)

    raw = add("validate-raw", cmd_validate_raw, "gate 1: Great Expectations on the raw extract")
    raw.add_argument("--extract", required=True, help="the extract step's output directory")
    raw.add_argument("--min-events", type=int, default=1)
    raw.add_argument("--max-amount", type=float, default=1.0e6, help="declared range of `amount`: [0, this]")
    raw.add_argument("--min-snapshots", type=int, help="default: what --split needs (time 3, entity or auto 1)")
    raw.add_argument("--task", choices=TASKS, default=BINARY, help="the build's --task: decides the label rules")
    raw.add_argument("--split", choices=SPLIT_METHODS, default=AUTO_SPLIT, help="the build's --split")
    raw.add_argument("--feature-spec", default="", help="the build's --feature-spec: its numeric columns must be numbers")

    build = add("build", cmd_build, "point-in-time features + train/valid/test split (content-addressed)")
    build.add_argument("--extract", required=True, help="the extract step's output directory")
    build.add_argument("--snapshot-root", required=True, help="e.g. {ARTIFACT_ROOT}/features")
    build.add_argument("--feature-spec", default="", help="feature spec: a YAML/JSON file or inline text; '' infers it")
    build.add_argument("--task", choices=TASKS, default=BINARY, help="how the label is read and stored")
    build.add_argument("--split", choices=SPLIT_METHODS, default=AUTO_SPLIT,
                       help="time (by snapshot date), entity (seeded hash of the id), auto (time with >= 3 dates)")
    build.add_argument("--split-seed", type=int, default=42, help="the entity split's hash seed")

    feats = add("validate-features", cmd_validate_features, "gate 2: Great Expectations on the features")
    feats.add_argument("--features", required=True, help="the build step's output directory")
    feats.add_argument("--max-null-fraction", type=float, default=0.0)

    scoring = add("extract-scoring", cmd_extract_scoring, "entities to score on a date + their events, streamed")
    scoring.add_argument("--as-of", required=True, type=optional_timestamp, help="ISO date: score as of this instant")
    _relation(scoring, "events", None)  # default: table events
    _feature_table(scoring, relations="events and entities")
    scoring.add_argument("--entities-table", help="entities to score + attributes (default: customers); '' for none")
    _source_columns(scoring, "entity-key", "timestamp-column")
    scoring.add_argument(
        "--signup-column", help="entities table: score those signed up before --as-of (default: signup_ts); '' for all"
    )
    scoring.add_argument("--snapshot-column", help="feature table: score the rows of the --as-of date by this column")
    scoring.add_argument("--label-column", help="feature table: a label column to leave out of the spine")
    scoring.add_argument("--batch-rows", type=int, default=500_000)

    labels = add("extract-labels", cmd_extract_labels, "the realised labels at one snapshot date, for monitoring")
    labels.add_argument("--score-date", required=True, type=iso_date, help="the snapshot date of the labels")
    _relation(labels, "labels", "churn_labels")
    labels.add_argument("--features-table", dest="labels_table", help="a ready-made feature table's labels")
    _source_columns(labels, "entity-key", "snapshot-column", "label-column")
    labels.add_argument("--task", choices=TASKS, default=BINARY, help="the champion's task: the label's type")
    labels.add_argument("--batch-rows", type=int, default=500_000)

    build_scoring = add("build-scoring", cmd_build_scoring, "features to score, same code and columns as training")
    build_scoring.add_argument("--extract", required=True, help="the extract-scoring step's output directory")
    build_scoring.add_argument(
        "--reference-snapshot", required=True, help="the model's training feature snapshot URI (its version tag)"
    )

    champion = add(
        "build-champion-features", cmd_build_champion_features,
        "the champion's own features (its spec and vocabulary) on the challenger's test rows",
    )
    champion.add_argument("--features", required=True, help="the challenger's build step output directory")
    champion.add_argument("--model-name", required=True)
    champion.add_argument("--champion-version", default="", help="the pinned champion version; empty: none")
    champion.add_argument("--reference-snapshot", default="", help="the champion's training snapshot URI")

    output_gate = add("validate-predictions", cmd_validate_predictions, "gate 3: Great Expectations on predictions")
    output_gate.add_argument("--predictions", required=True, help="the score step's output directory")
    output_gate.add_argument("--spine", required=True, help="the extract-scoring step's output directory")

    publish = add("publish-predictions", cmd_publish_predictions, "predictions -> artifact store + warehouse table")
    publish.add_argument("--predictions", required=True, help="the score step's output directory")
    publish.add_argument("--table", default=DEFAULT_PREDICTIONS_TABLE, help="warehouse table (created if missing)")
    publish.add_argument("--artifact-root", help="default: env ARTIFACT_ROOT")
    return cli


def main(argv: list[str] | None = None) -> int:
    return run(commands(), argv)
