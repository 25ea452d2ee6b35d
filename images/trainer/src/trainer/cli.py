"""``python -m trainer <command>``: the trainer image's steps (see docs/steps.md).

Each handler calls one step function and returns its manifest; :func:`mlcontract.cli.run` reports a
pipeline error as one line and exit code 1. Secrets (the MLflow URI, object-store credentials) come only
from env and are never logged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from mlcontract import storage
from mlcontract.cli import Commands, byte_size, iso_date, names, run, share
from mlcontract.env import StepEnvironment
from mlcontract.manifests import (
    EvaluateManifest,
    MonitorManifest,
    ScoreManifest,
    TrainManifest,
    TrialManifest,
)
from mlcontract.names import CHAMPION

from trainer import model

DEVICES = ("cpu", "cuda")


# --- option types ---------------------------------------------------------------------------------------


def hyperparameters(value: str) -> dict[str, Any]:
    """A JSON object, inline or as a path/URI of a JSON file; checked against the known hyperparameters."""
    text = value.strip()
    try:
        params = json.loads(text) if text.startswith("{") else storage.read_json(value)
    except (json.JSONDecodeError, OSError) as error:
        raise argparse.ArgumentTypeError(f"not a JSON object or a readable JSON file: {error}") from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    try:
        model.resolve_params(params)  # fail at the command line, naming the bad key
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return params


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def import_xgboost_alone() -> None:
    """Import xgboost with scikit-learn hidden from it. xgboost imports scikit-learn when it is installed
    (2-3 s, most of its import time here) only to build its scikit-learn estimators, which the trainer never
    uses; a trial needs nothing else from scikit-learn. Later imports of scikit-learn work as usual."""
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # import sklearn -> ImportError; xgboost falls back
    try:
        import xgboost  # noqa: F401
    finally:
        del sys.modules["sklearn"]


# --- handlers -------------------------------------------------------------------------------------------


def _fit_params(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters of a fit: --params (or a trial's --trial-index), with --max-rounds applied."""
    params = dict(args.params)
    if args.max_rounds is not None:
        params["n_estimators"] = args.max_rounds
    return params


def trial(args: argparse.Namespace) -> TrialManifest:
    import_xgboost_alone()
    from trainer.trial import run_trial

    by_index = args.trial_index is not None
    if by_index == (args.params is not None):
        args.usage_error("trial: give either --params or --trial-index with --n-trials")
    if by_index:
        if args.n_trials is None or not 0 <= args.trial_index < args.n_trials:
            args.usage_error("trial: --trial-index needs --n-trials, and 0 <= index < n-trials")
        args.params = model.search_space(args.n_trials, args.seed)[args.trial_index]
    label = f"trial {args.trial_index}" if by_index else f"trial seed {args.seed}"
    return run_trial(
        args.features, _fit_params(args), args.seed, args.env.output(args.out), device=args.device,
        log_every=args.log_every, label=label, trial_index=args.trial_index, memory_budget=args.memory_budget,
    )


def train(args: argparse.Namespace) -> TrainManifest:
    from trainer.train import run_train

    return run_train(
        args.features, _fit_params(args), args.seed, args.model_name, args.env.output(args.out),
        validations=args.validations, device=args.device, log_every=args.log_every, env=args.env,
        memory_budget=args.memory_budget,
    )


def evaluate(args: argparse.Namespace) -> EvaluateManifest:
    from trainer.evaluate import run_evaluate

    return run_evaluate(
        args.features, args.model_name, args.challenger_version, args.env.output(args.out),
        champion_features=args.champion_features,
    )


def score(args: argparse.Namespace) -> ScoreManifest:
    from trainer.score import run_score

    return run_score(
        args.features, args.model_name, args.env.output(args.out), alias=args.alias,
        ab_challenger_share=args.ab_challenger_share, expect_version=args.expect_version or None,
        challenger_version=args.challenger_version or None, dag_run_id=args.env.pipeline_run_id,
    )


def monitor(args: argparse.Namespace) -> MonitorManifest:
    from mlcontract.manifests.trainer import MonitorThresholds

    from trainer.monitor import run_monitor

    thresholds = MonitorThresholds(
        psi=args.psi_threshold, min_rows=args.min_rows, rollback_margin=args.rollback_margin, ab_margin=args.ab_margin
    )
    return run_monitor(
        args.model_name, args.score_date, args.env.artifacts(args.artifact_root), args.env.output(args.out),
        labels_dir=args.labels, thresholds=thresholds, ignore_features=args.ignore_features,
    )


# --- the parser -----------------------------------------------------------------------------------------


def _snapshot_option(sub: argparse.ArgumentParser, help: str) -> None:
    sub.add_argument("--features", required=True, metavar="DIR", help=help)


def _fitting(sub: argparse.ArgumentParser, env: StepEnvironment, params_required: bool) -> None:
    _snapshot_option(sub, "the `features build` step's output directory (has manifest.json)")
    sub.add_argument(
        "--params", required=params_required, type=hyperparameters, metavar="JSON",
        help="hyperparameters: a JSON object, or a path/URI of one",
    )
    sub.add_argument("--seed", required=True, type=int, help="xgboost seed (and search-space seed)")
    sub.add_argument(
        "--max-rounds", type=positive_int, default=None, metavar="N",
        help="boosting round budget; overrides n_estimators in the params",
    )
    sub.add_argument(
        "--device", choices=DEVICES, default=env.xgb_device or "cpu",
        help="xgboost device (default: env XGB_DEVICE, else cpu)",
    )
    sub.add_argument(
        "--log-every", type=int, default=100, metavar="N",
        help="log the validation metric (the task's: AUC, log loss, RMSE) every N boosting rounds",
    )
    sub.add_argument(
        "--memory-budget", type=byte_size, default=None, metavar="SIZE",
        help="memory the train and valid splits may take (e.g. 2GiB); bigger snapshots are read in batches "
        f"into xgboost's external memory. Empty or auto: env {model.MEMORY_BUDGET_ENV}, else half the memory limit",
    )


def build_commands(env: StepEnvironment) -> Commands:
    commands = Commands("trainer", __doc__.split("\n\n")[0])
    commands.parser.set_defaults(env=env)

    trial_command = commands.add("trial", trial, help="fit one hyperparameter set, score it on valid")
    _fitting(trial_command, env, params_required=False)
    trial_command.add_argument(
        "--trial-index", type=int, default=None, metavar="I",
        help="instead of --params: entry I of search_space(--n-trials, --seed)",
    )
    trial_command.add_argument("--n-trials", type=int, default=None, metavar="N", help="size of the search space")
    trial_command.set_defaults(usage_error=trial_command.error)

    train_command = commands.add("train", train, help="final fit, logged to MLflow, registered as @challenger")
    _fitting(train_command, env, params_required=True)
    train_command.add_argument("--model-name", required=True, metavar="NAME")
    train_command.add_argument(
        "--validations", nargs="*", default=[], metavar="DIR",
        help="GX validation step directories whose results are attached to the run",
    )

    evaluate_command = commands.add("evaluate", evaluate, help="challenger vs @champion on the same test split")
    _snapshot_option(evaluate_command, "the `features build` step's output directory (has manifest.json)")
    evaluate_command.add_argument("--model-name", required=True, metavar="NAME")
    evaluate_command.add_argument("--challenger-version", required=True, metavar="V")
    evaluate_command.add_argument(
        "--champion-features", metavar="DIR",
        help="the build-champion-features step's output: the pinned champion's own features on the test rows",
    )

    score_command = commands.add(
        "score", score, help="batch predictions with the model behind an alias (and A/B arm)"
    )
    _snapshot_option(score_command, "the `features build-scoring` step's output directory (has manifest.json)")
    score_command.add_argument("--model-name", required=True, metavar="NAME")
    score_command.add_argument("--alias", default=CHAMPION, metavar="ALIAS", help="resolved to a concrete version")
    score_command.add_argument(
        "--expect-version", default=None, metavar="V",
        help="fail if the alias no longer points at this version (the features were built for it)",
    )
    score_command.add_argument(
        "--ab-challenger-share", type=share, default=0.0, metavar="0..1",
        help="share of entities (stable hash of entity_id) scored by @challenger",
    )
    score_command.add_argument(
        "--challenger-version", default=None, metavar="V",
        help="the A/B deployment's challenger (default: the version @challenger points at)",
    )

    monitor_command = commands.add(
        "monitor", monitor, help="drift and realised performance of @champion for a score date"
    )
    monitor_command.add_argument("--model-name", required=True, metavar="NAME")
    monitor_command.add_argument("--score-date", required=True, type=iso_date, metavar="YYYY-MM-DD")
    monitor_command.add_argument(
        "--artifact-root", default=None, metavar="URI",
        help="reads {root}/predictions/{model}/{date}/predictions.parquet and features.parquet "
        "(default: env ARTIFACT_ROOT)",
    )
    monitor_command.add_argument(
        "--labels", default=None, metavar="DIR",
        help="the `features extract-labels` step's output directory; without it, no realised performance",
    )
    monitor_command.add_argument("--psi-threshold", type=float, default=0.2, help="drift when a PSI exceeds this")
    monitor_command.add_argument(
        "--min-rows", type=int, default=100, help="fewer rows: no drift/rollback/A-B verdict"
    )
    # the margins are in the champion's task's terms (mlcontract.rules.TASK_METRICS)
    monitor_command.add_argument(
        "--rollback-margin", type=float, default=0.01,
        help="how much better the previous champion must be: AUC to add (binary), or a relative improvement "
        "of log loss (multiclass) or RMSE (regression), 0.01 = 1%%",
    )
    monitor_command.add_argument(
        "--ab-margin", type=float, default=0.0,
        help="how much better the challenger arm must be, in the same terms as --rollback-margin",
    )
    monitor_command.add_argument(
        "--ignore-features", type=names, default=(), metavar="A,B",
        help="comma-separated features left out of the drift check",
    )
    return commands


def main(argv: list[str] | None = None) -> int:
    # Before xgboost loads OpenMP: idle threads sleep instead of spinning. Spinning threads make a
    # fit 10-30x slower when cores are shared (parallel local trials, CI); dedicated pods lose nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return run(build_commands(StepEnvironment()), argv)
