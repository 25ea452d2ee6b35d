"""Domain errors of the features image: each message names the user's table, column, option or file.

Only the CLI (:func:`mlcontract.cli.run`) turns them into exit code 1 and one line on stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlcontract.errors import PipelineError, SourceError, StepInputError

if TYPE_CHECKING:
    from mlcontract.manifests import GateFailure


class ExtractError(SourceError):
    """A bad warehouse source: a missing table or column, a value that is not a timestamp, a bad label."""


class BuildError(StepInputError):
    """An extract the feature build cannot use (too few snapshot dates, colliding category names...)."""


class SpecError(BuildError):
    """A feature spec that is malformed or does not fit the data: names the user's column and what is wrong."""


class ScoringError(StepInputError):
    """Bad scoring input: a reference snapshot, a feature column, a prediction column or an option."""


class SeedError(StepInputError):
    """A data-generator setting out of range."""


class GateFailed(PipelineError):
    """A gate found bad data; the message names each failing expectation, column and what was seen."""

    def __init__(self, gate: str, failures: list[GateFailure]):
        self.gate = gate
        self.failures = failures
        lines = [f"  - {f.dataset}: {f.expectation} on {f.column or 'table'}: {f.details}" for f in failures]
        super().__init__(f"{gate} gate failed ({len(failures)} expectation(s)):\n" + "\n".join(lines))
