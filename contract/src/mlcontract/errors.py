"""Domain errors. Library code raises these with a message in the user's terms (their table, column,
option or file); only a CLI entry point (:func:`mlcontract.cli.run`) turns them into an exit code.

They deliberately do not derive from ValueError: pydantic validators let them through unwrapped, so a bad
source option reaches the user as its own one-line message, not as a validation report.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error a user can act on; the message alone must say what is wrong."""


class SourceError(PipelineError):
    """A bad warehouse source: a missing table or column, an unsafe identifier, a query that fails."""


class ManifestError(PipelineError):
    """A step manifest that is missing or does not match its model."""


class MissingManifest(ManifestError, FileNotFoundError):
    """The step that writes this manifest has not finished."""


class StepInputError(PipelineError):
    """A step's input (a file, a model, an option) is not what the step needs."""
