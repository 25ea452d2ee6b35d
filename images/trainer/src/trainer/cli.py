"""`python -m trainer <command>`: trial, train, evaluate, score, monitor. Thin argparse over the step functions.

Secrets (the MLflow URI, object-store credentials) come only from env and are never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from features import io

from trainer import model

DEVICES = ("cpu", "cuda")


def _params(value: str) -> dict[str, Any]:
    """A JSON object, inline or as a path/URI of a JSON file; checked against the known hyperparameters."""
    text = value.strip()
    try:
        params = json.loads(text) if text.startswith("{") else io.read_json(value)
    except (json.JSONDecodeError, OSError) as error:
        raise argparse.ArgumentTypeError(f"not a JSON object or a readable JSON file: {error}") from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    try:
        model.resolve_params(params)  # fail at the command line, naming the bad key
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return params


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--features",
        required=True,
        metavar="DIR",
        help="the `features build` step's output directory (has manifest.json)",
    )
    sub.add_argument(
        "--out",
        default=None,
        metavar="URI",
        help="this step's output directory (default: env STEP_OUTPUT_URI)",
    )


def _fitting(sub: argparse.ArgumentParser, params_required: bool) -> None:
    sub.add_argument(
        "--params",
        required=params_required,
        type=_params,
        metavar="JSON",
        help="hyperparameters: a JSON object, or a path/URI of one",
    )
    sub.add_argument("--seed", required=True, type=int, help="xgboost seed (and search-space seed)")
    sub.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        metavar="N",
        help="boosting round budget; overrides n_estimators in the params",
    )
    sub.add_argument(
        "--device",
        choices=DEVICES,
        default=os.environ.get("XGB_DEVICE") or "cpu",
        help="xgboost device (default: env XGB_DEVICE, else cpu)",
    )
    sub.add_argument(
        "--log-every", type=int, default=100, metavar="N", help="log validation AUC every N boosting rounds"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    trial = commands.add_parser("trial", help="fit one hyperparameter set, score it on valid")
    _common(trial)
    _fitting(trial, params_required=False)
    trial.add_argument(
        "--trial-index",
        type=int,
        default=None,
        metavar="I",
        help="instead of --params: entry I of search_space(--n-trials, --seed)",
    )
    trial.add_argument("--n-trials", type=int, default=None, metavar="N", help="size of the search space")

    train = commands.add_parser("train", help="final fit, logged to MLflow, registered as @challenger")
    _common(train)
    _fitting(train, params_required=True)
    train.add_argument("--model-name", required=True, metavar="NAME")
    train.add_argument(
        "--validations",
        nargs="*",
        default=[],
        metavar="DIR",
        help="GX validation step directories whose results are attached to the run",
    )

    evaluate = commands.add_parser("evaluate", help="challenger vs @champion on the same test split")
    _common(evaluate)
    evaluate.add_argument("--model-name", required=True, metavar="NAME")
    evaluate.add_argument("--challenger-version", required=True, metavar="V")

    score = commands.add_parser("score", help="batch predictions with the model behind an alias (and A/B arm)")
    _common(score)
    score.add_argument("--model-name", required=True, metavar="NAME")
    score.add_argument("--alias", default="champion", metavar="ALIAS", help="resolved to a concrete version")
    score.add_argument("--expect-version", default=None, metavar="V",
                       help="fail if the alias no longer points at this version (the features were built for it)")
    score.add_argument("--ab-challenger-share", type=float, default=0.0, metavar="0..1",
                       help="share of entities (stable hash of entity_id) scored by @challenger")
    score.add_argument("--challenger-version", default=None, metavar="V",
                       help="the A/B deployment's challenger (default: the version @challenger points at)")

    monitor = commands.add_parser("monitor", help="drift and realised performance of @champion for a score date")
    monitor.add_argument("--model-name", required=True, metavar="NAME")
    monitor.add_argument("--score-date", required=True, type=_date, metavar="YYYY-MM-DD")
    monitor.add_argument(
        "--predictions-root", required=True, metavar="URI",
        help="batch prediction output root: reads {root}/{model}/{date}/predictions.parquet and features.parquet",
    )
    labels = monitor.add_mutually_exclusive_group()
    labels.add_argument("--labels-table", default=None, metavar="TABLE", help="default: churn_labels")
    labels.add_argument("--labels-query", default=None, metavar="SQL", help="SQL query for labels")
    monitor.add_argument("--entity-key", default="customer_id", metavar="COLUMN")
    monitor.add_argument("--snapshot-column", default="snapshot_ts", metavar="COLUMN")
    monitor.add_argument("--label-column", default="churned", metavar="COLUMN")
    monitor.add_argument("--psi-threshold", type=float, default=0.2, help="drift when a PSI exceeds this")
    monitor.add_argument("--min-rows", type=int, default=100, help="fewer rows: no drift/rollback/A-B verdict")
    monitor.add_argument("--rollback-margin", type=float, default=0.01, help="AUC the previous champion must add")
    monitor.add_argument("--ab-margin", type=float, default=0.0, help="AUC the challenger arm must add")
    monitor.add_argument(
        "--ignore-features", default="", metavar="A,B", help="comma-separated features left out of the drift check"
    )
    monitor.add_argument("--out", default=None, metavar="URI", help="default: env STEP_OUTPUT_URI")
    return parser


def _date(value: str):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _resolve_fit_params(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "trial":
        by_index = args.trial_index is not None
        if by_index == (args.params is not None):
            parser.error("trial: give either --params or --trial-index with --n-trials")
        if by_index:
            if args.n_trials is None or not 0 <= args.trial_index < args.n_trials:
                parser.error("trial: --trial-index needs --n-trials, and 0 <= index < n-trials")
            args.params = model.search_space(args.n_trials, args.seed)[args.trial_index]
    params = dict(args.params)
    if args.max_rounds is not None:
        if args.max_rounds < 1:
            parser.error("--max-rounds must be >= 1")
        params["n_estimators"] = args.max_rounds
    return params


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    # Before xgboost loads OpenMP: idle threads sleep instead of spinning. Spinning threads make a
    # fit 10-30x slower when cores are shared (parallel local trials, CI); dedicated pods lose nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = _parser()
    args = parser.parse_args(argv)
    out = args.out or io.default_out()

    if args.command == "trial":
        from trainer.trial import run_trial

        params = _resolve_fit_params(parser, args)
        label = f"trial {args.trial_index}" if args.trial_index is not None else f"trial seed {args.seed}"
        run_trial(
            args.features,
            params,
            args.seed,
            out,
            device=args.device,
            log_every=args.log_every,
            label=label,
            trial_index=args.trial_index,
        )
    elif args.command == "train":
        from trainer.train import run_train

        run_train(
            args.features,
            _resolve_fit_params(parser, args),
            args.seed,
            args.model_name,
            out,
            validations=args.validations,
            device=args.device,
            log_every=args.log_every,
        )
    elif args.command == "evaluate":
        from trainer.evaluate import run_evaluate

        run_evaluate(args.features, args.model_name, args.challenger_version, out)
    elif args.command == "score":
        from trainer.score import run_score

        if not 0.0 <= args.ab_challenger_share <= 1.0:
            parser.error("--ab-challenger-share must be within [0, 1]")
        run_score(args.features, args.model_name, out, alias=args.alias,
                  ab_challenger_share=args.ab_challenger_share, expect_version=args.expect_version or None,
                  challenger_version=args.challenger_version or None)
    elif args.command == "monitor":
        from trainer.monitor import LabelSource, Thresholds, run_monitor

        try:
            labels = LabelSource(
                table=args.labels_table or (None if args.labels_query else "churn_labels"),
                query=args.labels_query, entity_key=args.entity_key,
                snapshot_column=args.snapshot_column, label_column=args.label_column,
            )
        except ValueError as error:
            parser.error(str(error))
        run_monitor(
            args.model_name, args.score_date, args.predictions_root, out,
            warehouse_uri=os.environ.get("WAREHOUSE_URI") or None, labels=labels,
            thresholds=Thresholds(args.psi_threshold, args.min_rows, args.rollback_margin, args.ab_margin),
            ignore_features=tuple(name.strip() for name in args.ignore_features.split(",") if name.strip()),
        )
    return 0
