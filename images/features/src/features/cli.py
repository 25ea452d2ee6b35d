"""``python -m features <command>``: the feature image's steps (see docs/steps.md).

Each command reads its inputs from URIs (and secrets only from env), writes its outputs under ``--out``
(default: env ``STEP_OUTPUT_URI``) with ``manifest.json`` last, logs progress to stdout and exits
non-zero with a message naming what is wrong when the input is bad.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date, datetime
from typing import Any

log = logging.getLogger("features")


def _warehouse_uri(value: str | None) -> str:
    uri = value or os.environ.get("WAREHOUSE_URI")
    if not uri:
        raise SystemExit("no warehouse: set WAREHOUSE_URI")
    return uri


def _timestamp(value: str) -> datetime | None:
    # An empty value (the DAG's default Param) means "no cutoff": all labelled snapshots.
    if not value.strip():
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO date/datetime: {value!r}") from error


def _out(args: argparse.Namespace) -> str:
    from features import io

    return args.out or io.default_out()


def cmd_seed(args: argparse.Namespace) -> dict[str, Any]:
    from features import io, synth

    config = synth.SynthConfig(
        customers=args.customers,
        events_per_customer=args.events_per_customer,
        days=args.days,
        snapshots=args.snapshots,
        snapshot_interval_days=args.snapshot_interval_days,
        label_horizon_days=args.label_horizon_days,
        drift=args.drift,
        seed=args.seed,
        end_date=args.end_date,
    )
    report = synth.generate(config, _warehouse_uri(args.warehouse_uri))
    print(f"oracle AUC {report.oracle_auc:.4f} (label rate {report.label_rate:.3f})")
    manifest = {"step": "seed", "outputs": {}, **report.to_json()}
    out = args.out or os.environ.get("STEP_OUTPUT_URI")
    if out:  # seeding also runs outside a pipeline step, where there is nowhere to write
        io.write_manifest(out, manifest)
    return manifest


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    from features.extract import ExtractSource, extract

    events_table = None if args.events_query else args.events_table
    labels_table = None if args.labels_query else args.labels_table
    source = ExtractSource(
        events_table=events_table,
        events_query=args.events_query,
        labels_table=labels_table,
        labels_query=args.labels_query,
        entities_table=args.entities_table or None,
        entity_key=args.entity_key,
        timestamp_column=args.timestamp_column,
        snapshot_column=args.snapshot_column,
        label_column=args.label_column,
    )
    return extract(_warehouse_uri(None), _out(args), source, cutoff=args.cutoff, batch_rows=args.batch_rows)


def cmd_validate_raw(args: argparse.Namespace) -> dict[str, Any]:
    from features.gates import validate_raw

    return validate_raw(
        args.extract,
        _out(args),
        min_events=args.min_events,
        max_amount=args.max_amount,
        min_snapshots=args.min_snapshots,
    )


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    from features.build import build_features  # written by the build step's module

    return build_features(args.extract, _out(args), args.snapshot_root)


def cmd_validate_features(args: argparse.Namespace) -> dict[str, Any]:
    from features.gates import validate_features

    return validate_features(args.features, _out(args), max_null_fraction=args.max_null_fraction)


def cmd_extract_scoring(args: argparse.Namespace) -> dict[str, Any]:
    from features.scoring import ScoringSource, extract_scoring

    if args.as_of is None:
        raise ValueError("--as-of is required: the date to score (events strictly before it are used)")
    source = ScoringSource(
        events_table=None if args.events_query else args.events_table,
        events_query=args.events_query,
        entities_table=args.entities_table or None,
        entity_key=args.entity_key,
        timestamp_column=args.timestamp_column,
        signup_column=args.signup_column or None,
    )
    return extract_scoring(_warehouse_uri(None), _out(args), args.as_of, source, batch_rows=args.batch_rows)


def cmd_build_scoring(args: argparse.Namespace) -> dict[str, Any]:
    from features.scoring import build_scoring

    return build_scoring(args.extract, _out(args), args.reference_snapshot)


def cmd_validate_predictions(args: argparse.Namespace) -> dict[str, Any]:
    from features.output_gate import validate_predictions

    return validate_predictions(args.predictions, args.spine, _out(args))


def cmd_publish_predictions(args: argparse.Namespace) -> dict[str, Any]:
    from features.scoring import publish_predictions

    artifact_root = args.artifact_root or os.environ.get("ARTIFACT_ROOT")
    if not artifact_root:
        raise ValueError("no artifact root: pass --artifact-root or set ARTIFACT_ROOT")
    return publish_predictions(args.predictions, _out(args), _warehouse_uri(None), artifact_root, args.table)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="features", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--out", help="step output URI (default: env STEP_OUTPUT_URI)")
        sub.set_defaults(handler=handler)
        return sub

    seed = command("seed", cmd_seed, "seed the synthetic warehouse (replaces its tables)")
    seed.add_argument("--warehouse-uri", help="SQLAlchemy URI (default: env WAREHOUSE_URI)")
    seed.add_argument("--customers", type=int, default=10_000)
    seed.add_argument("--events-per-customer", type=float, default=40.0)
    seed.add_argument("--days", type=int, default=240)
    seed.add_argument("--snapshots", type=int, default=6)
    seed.add_argument("--snapshot-interval-days", type=int, default=14)
    seed.add_argument("--label-horizon-days", type=int, default=30)
    seed.add_argument("--drift", type=float, default=0.0, help="0..1: shift of the most recent events")
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--end-date", type=date.fromisoformat, default=date(2026, 10, 1))

    extract = command("extract", cmd_extract, "warehouse (env WAREHOUSE_URI) -> canonical parquet, streamed")
    events = extract.add_mutually_exclusive_group()
    events.add_argument("--events-table", default="events")
    events.add_argument("--events-query", help="SQL query returning the events (instead of a table)")
    labels = extract.add_mutually_exclusive_group()
    labels.add_argument("--labels-table", default="churn_labels")
    labels.add_argument("--labels-query", help="SQL query returning the labels (instead of a table)")
    extract.add_argument("--entities-table", default="customers", help="static attributes; '' for none")
    extract.add_argument("--entity-key", default="customer_id")
    extract.add_argument("--timestamp-column", default="event_ts")
    extract.add_argument("--snapshot-column", default="snapshot_ts")
    extract.add_argument("--label-column", default="churned")
    extract.add_argument(
        "--cutoff", type=_timestamp, help="ISO date/datetime: events before, snapshots up to"
    )
    extract.add_argument("--batch-rows", type=int, default=500_000)

    raw = command("validate-raw", cmd_validate_raw, "gate 1: Great Expectations on the raw extract")
    raw.add_argument("--extract", required=True, help="the extract step's output directory")
    raw.add_argument("--min-events", type=int, default=1)
    raw.add_argument("--max-amount", type=float, default=1.0e6)
    raw.add_argument("--min-snapshots", type=int, default=2)

    build = command("build", cmd_build, "point-in-time features + time-based split (content-addressed)")
    build.add_argument("--extract", required=True, help="the extract step's output directory")
    build.add_argument("--snapshot-root", required=True, help="e.g. {ARTIFACT_ROOT}/features")

    feats = command("validate-features", cmd_validate_features, "gate 2: Great Expectations on the features")
    feats.add_argument("--features", required=True, help="the build step's output directory")
    feats.add_argument("--max-null-fraction", type=float, default=0.0)

    scoring = command("extract-scoring", cmd_extract_scoring, "entities to score on a date + their events, streamed")
    scoring.add_argument("--as-of", required=True, type=_timestamp, help="ISO date: score as of this instant")
    scoring_events = scoring.add_mutually_exclusive_group()
    scoring_events.add_argument("--events-table", default="events")
    scoring_events.add_argument("--events-query", help="SQL query returning the events (instead of a table)")
    scoring.add_argument("--entities-table", default="customers", help="entities to score + attributes; '' for none")
    scoring.add_argument("--entity-key", default="customer_id")
    scoring.add_argument("--timestamp-column", default="event_ts")
    scoring.add_argument(
        "--signup-column", default="signup_ts", help="entities table: score those signed up before --as-of; '' for all"
    )
    scoring.add_argument("--batch-rows", type=int, default=500_000)

    build_scoring = command("build-scoring", cmd_build_scoring, "features to score, same code and columns as training")
    build_scoring.add_argument("--extract", required=True, help="the extract-scoring step's output directory")
    build_scoring.add_argument(
        "--reference-snapshot", required=True, help="the model's training feature snapshot URI (its version tag)"
    )

    output_gate = command("validate-predictions", cmd_validate_predictions, "gate 3: Great Expectations on predictions")
    output_gate.add_argument("--predictions", required=True, help="the score step's output directory")
    output_gate.add_argument("--spine", required=True, help="the extract-scoring step's output directory")

    publish = command("publish-predictions", cmd_publish_predictions, "predictions -> artifact store + warehouse table")
    publish.add_argument("--predictions", required=True, help="the score step's output directory")
    publish.add_argument("--table", default="churn_predictions", help="warehouse table (created if missing)")
    publish.add_argument("--artifact-root", help="default: env ARTIFACT_ROOT")
    return root


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging()
    from features.extract import ExtractError
    from features.gates import GateFailed

    try:
        manifest = args.handler(args)
    except (GateFailed, ExtractError, ValueError, FileNotFoundError) as error:
        print(f"features {args.command}: {error}", file=sys.stderr)
        return 1
    log.info("%s done: %s", args.command, json.dumps({k: manifest.get(k) for k in ("rows", "success")}))
    return 0
