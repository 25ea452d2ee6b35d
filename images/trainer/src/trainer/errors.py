"""The trainer's domain errors: what a user can act on, raised by the steps and reported by the CLI.

They extend :mod:`mlcontract.errors`, so :func:`mlcontract.cli.run` turns each into exit code 1 and one line.
"""

from __future__ import annotations

from mlcontract.errors import StepInputError


class IncompatibleFeatures(StepInputError):
    """The frame lacks columns the model's signature needs."""


class ModelVersionNotFound(StepInputError):
    """No registered model version where the step needs one (an alias that is not set)."""
