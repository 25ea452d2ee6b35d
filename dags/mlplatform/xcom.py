"""Small values passed between Airflow-side tasks and the step templates that read them (XCom).

A task whose XCom a template reads declares, with ``renders_as``, the sample ``make render`` puts in its place
(the dev tools render every pod without a DAG run); a template reads it through ``pull``. A Jinja macro that
reads a step's manifest declares its sample the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

SAMPLE_ATTRIBUTE = "render_sample"
F = TypeVar("F", bound=Callable[..., Any])


def renders_as(sample: Any) -> Callable[[F], F]:
    """Declare what a task pushes (or a macro returns) in a render: a value, or ``sample(context)``."""

    def declare(function: F) -> F:
        setattr(function, SAMPLE_ATTRIBUTE, sample)
        return function

    return declare


def sample_of(function: Any, context: dict[str, Any]) -> Any:
    """The declared sample of a task's callable or a macro; None when it declares none."""
    sample = getattr(function, SAMPLE_ATTRIBUTE, None)
    return sample(context) if callable(sample) else sample


def pull(task_id: str, key: str | None = None, then: str = "") -> str:
    """Jinja template of an upstream task's XCom (its return value, or one key of ``multiple_outputs``);
    ``then`` continues the expression (``"['params'] | tojson"``)."""
    key_argument = f", key='{key}'" if key else ""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}'{key_argument}){then} }}}}"
