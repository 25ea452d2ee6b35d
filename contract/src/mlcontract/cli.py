"""The one CLI style of both step images: ``python -m <image> <command> [options]``.

A CLI module builds an ``argparse`` parser with :class:`Commands` (every command gets ``--out``, default env
``STEP_OUTPUT_URI``) and hands it to :func:`run`, which configures logging, calls the command's handler and
turns a :class:`~mlcontract.errors.PipelineError` into exit code 1 and one line on stderr that names what is
wrong. Anything else is a bug and keeps its traceback.

Step processes start often (one per pipeline step, each trial its own): this module and the CLIs import only
what parsing needs; each command imports its own libraries (xgboost, MLflow, Great Expectations...).
The "done" line says how long the command computed and how long the process took to get there (imports,
parsing), which ``bench/bench_demo.py`` reads from a run's task log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime

from mlcontract.errors import PipelineError
from mlcontract.manifests import Manifest

Handler = Callable[[argparse.Namespace], Manifest | None]
QUIET_LOGGERS = ("great_expectations", "urllib3", "botocore", "s3fs", "fsspec", "alembic", "mlflow.store")


class Commands:
    """Sub-commands of one image's CLI."""

    def __init__(self, prog: str, description: str):
        self.parser = argparse.ArgumentParser(prog=prog, description=description)
        self._subparsers = self.parser.add_subparsers(dest="command", required=True)

    def add(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub = self._subparsers.add_parser(name, help=help, description=help)
        sub.add_argument("--out", metavar="URI", help="this step's output directory (default: env STEP_OUTPUT_URI)")
        sub.set_defaults(handler=handler)
        return sub


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # the fields after the command name (which may hold spaces); starttime is field 22, in clock ticks
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def run(commands: Commands, argv: Sequence[str] | None = None) -> int:
    """Parse, run the command, and report: 0 on success, 1 with a one-line message on a pipeline error."""
    args = commands.parser.parse_args(argv)
    configure_logging()
    prog = commands.parser.prog
    startup = process_age()
    started = time.perf_counter()
    try:
        manifest = args.handler(args)
    except PipelineError as error:
        print(f"{prog} {args.command}: {error}", file=sys.stderr)
        return 1
    summary = {k: getattr(manifest, k) for k in ("rows", "success") if hasattr(manifest, k)}
    logging.getLogger(prog).info(
        "%s done in %.2fs (process start-up %s): %s", args.command, time.perf_counter() - started,
        "unknown" if startup is None else f"{startup:.2f}s", json.dumps(summary, default=str),
    )
    return 0


# --- option types shared by both CLIs ---------------------------------------------------------------------


def optional_timestamp(value: str) -> datetime | None:
    """An ISO date or datetime; empty (the DAGs' default Param) means none."""
    if not value.strip():
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/datetime: {value!r}") from None


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def share(value: str) -> float:
    """A number within [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not within [0, 1]")
    return number


SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(value: str) -> int:
    """A byte size: a number of bytes or one with a binary unit (``512MiB``, ``4GiB``, ``2G``); ValueError
    otherwise."""
    match = SIZE_PATTERN.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (bytes, or a number with KiB, MiB, GiB or TiB)")
    number, unit = match.groups()
    return int(float(number) * SIZE_UNITS[(unit or "").upper()[:1]])


def byte_size(value: str) -> int | None:
    """:func:`parse_size` as an option type; empty or ``auto`` means none given (the command's default)."""
    if value.strip().lower() in ("", "auto"):
        return None
    try:
        return parse_size(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def names(value: str) -> tuple[str, ...]:
    """A comma-separated list of names (empty items dropped)."""
    return tuple(name.strip() for name in value.split(",") if name.strip())
