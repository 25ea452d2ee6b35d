"""The "two metrics and a margin" rules, pure and in one place: promotion, rollback and the A/B test.

Each compares a candidate with an incumbent on one metric and returns the same :class:`Decision`, so the
training DAG, the monitor step and the monitoring DAG record, log and audit them alike.

- promotion: the challenger (candidate) must clear ``threshold`` and beat the champion (incumbent) by
  ``margin``; with no champion at all ("first model") only the threshold applies. A champion that exists but
  could not be scored on the same test rows is never treated as absent: promotion is refused unless the
  caller explicitly allows an incomparable promotion (the decision's ``basis`` says which happened).
- rollback: the previous champion (candidate) beats the serving champion (incumbent) on the same labelled
  rows by more than ``margin``.
- A/B test: the challenger arm (candidate) does at least as well as the champion arm (incumbent) plus
  ``margin``, both arms having enough labelled rows.

The metric and its direction follow the task (:data:`TASK_METRICS`): binary models compare AUC (higher is
better, ``threshold`` a minimum AUC, ``margin`` the AUC to add); multiclass models log loss and regression
models RMSE (lower is better: ``threshold`` is the naive baseline's value, which must be beaten, and
``margin`` the relative improvement over the incumbent, 0.01 = 1 % lower).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from mlcontract.names import BINARY, MULTICLASS, REGRESSION

PROMOTE, REJECT, ROLLBACK, KEEP, INSUFFICIENT = "promote", "reject", "rollback", "keep", "insufficient_data"
Action = Literal["promote", "reject", "rollback", "keep", "insufficient_data"]
# What a promotion decision rests on (recorded with it and in the audit record).
COMPARED, FIRST_MODEL, INCOMPARABLE_REFUSED, INCOMPARABLE_ALLOWED, NOT_COMPUTABLE, ALREADY_CHAMPION = (
    "compared", "first model", "champion incomparable: refused", "champion incomparable: allowed by Param",
    "challenger metric not computable", "already champion",
)


class TaskMetric(BaseModel):
    """How a task's models are compared: the metric (a key of the evaluate step's metrics) and its direction.

    Higher is better: ``threshold`` is a minimum and the margin is added to the incumbent's value. Lower is
    better: ``threshold`` is the naive baseline's value (strictly beaten) and the margin is relative, the
    incumbent's value times ``1 - margin``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    name: str
    higher_is_better: bool

    @property
    def threshold_kind(self) -> str:
        return "threshold" if self.higher_is_better else "naive baseline"

    def required(self, incumbent: float, margin: float) -> float:
        """The value a candidate must reach to beat ``incumbent`` by ``margin``."""
        return incumbent + margin if self.higher_is_better else incumbent * (1.0 - margin)

    def reaches(self, value: float, required: float) -> bool:
        return value >= required if self.higher_is_better else value <= required

    def beyond(self, value: float, required: float) -> bool:
        return value > required if self.higher_is_better else value < required

    def clears(self, value: float, threshold: float) -> bool:
        """A minimum is reached; a naive baseline must be beaten."""
        return self.reaches(value, threshold) if self.higher_is_better else self.beyond(value, threshold)

    def gain(self, value: float, incumbent: float) -> str:
        """How much better ``value`` is than ``incumbent``, as the margin measures it."""
        if self.higher_is_better:
            return f"{value - incumbent:+.4f}"
        return f"{(incumbent - value) / incumbent:+.2%}" if incumbent else "n/a"

    def margin_text(self, margin: float) -> str:
        return f"{margin:.4f}" if self.higher_is_better else f"{margin:.2%} relative"


# The one table of what each task is judged on (promotion, rollback, A/B test).
TASK_METRICS: dict[str, TaskMetric] = {
    BINARY: TaskMetric(task=BINARY, name="auc", higher_is_better=True),
    MULTICLASS: TaskMetric(task=MULTICLASS, name="log_loss", higher_is_better=False),
    REGRESSION: TaskMetric(task=REGRESSION, name="rmse", higher_is_better=False),
}


def task_metric(task: str) -> TaskMetric:
    try:
        return TASK_METRICS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASK_METRICS)}") from None


class Score(BaseModel):
    """One model's value of the metric, and whether it can be compared at all (and why not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str | None = None
    value: float | None = None
    rows: int | None = None
    comparable: bool = True
    reason: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _finite_or_none(cls, value: float | None) -> float | None:
        """NaN or infinity is "no value": it compares as nothing and keeps the decision JSON (XCom)."""
        return None if value is not None and not math.isfinite(float(value)) else value

    @property
    def usable(self) -> bool:
        return self.comparable and self.value is not None and not math.isnan(self.value)

    def label(self, role: str) -> str:
        return f"{role} v{self.version}" if self.version else role


class Decision(BaseModel):
    """What a rule decided and why, with everything it compared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["promotion", "rollback", "ab_test"]
    action: Action
    reason: str
    metric: str
    candidate: Score | None
    incumbent: Score | None
    margin: float
    threshold: float | None = None
    min_rows: int | None = None
    # the metric's direction; lower-is-better rules use a relative margin and a naive-baseline threshold
    higher_is_better: bool = True
    basis: str | None = None  # promotion: what the decision rests on (COMPARED, FIRST_MODEL, ...)

    @property
    def acts(self) -> bool:
        """True when the decision moves an alias (promote or roll back)."""
        return self.action in (PROMOTE, ROLLBACK)


def _check_margin(margin: float) -> None:
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def decide_promotion(
    challenger: Score,
    champion: Score | None,
    *,
    threshold: float,
    margin: float,
    metric: str = "test_auc",
    task: TaskMetric = TASK_METRICS[BINARY],
    allow_incomparable: bool = False,
) -> Decision:
    """Promote when the challenger clears ``threshold`` AND beats the champion by ``margin`` on the same rows.

    ``champion`` None means no champion exists (the first model: only the threshold applies). A champion that
    could not be scored (``not champion.usable``) refuses promotion unless ``allow_incomparable``.
    """
    _check_margin(margin)

    def decision(action: Action, basis: str, reason: str) -> Decision:
        return Decision(rule="promotion", action=action, reason=reason, metric=metric, candidate=challenger,
                        incumbent=champion, margin=margin, threshold=threshold,
                        higher_is_better=task.higher_is_better, basis=basis)

    value = challenger.value
    kind = task.threshold_kind
    if value is None or not challenger.comparable:  # NaN never promotes (Score turns it into None)
        why = f": {challenger.reason}" if challenger.reason else ""
        return decision(REJECT, NOT_COMPUTABLE, f"{challenger.label('challenger')} {metric} cannot be computed{why}")
    if champion is not None and champion.version is not None and champion.version == challenger.version:
        return decision(REJECT, ALREADY_CHAMPION, f"{challenger.label('challenger')} is already the champion")
    if not task.clears(value, threshold):
        if task.higher_is_better:
            return decision(REJECT, COMPARED if champion else FIRST_MODEL,
                            f"challenger {metric} {value:.4f} is below the threshold {threshold:.4f}")
        return decision(REJECT, COMPARED if champion else FIRST_MODEL,
                        f"challenger {metric} {value:.4f} does not beat the naive baseline {threshold:.4f}")
    clears = f"clears the {kind} {threshold:.4f}"
    if champion is None:
        return decision(PROMOTE, FIRST_MODEL, f"first model (no champion yet): {metric} {value:.4f} {clears}")
    if not champion.usable:
        incomparable = f"{champion.label('champion')} could not be compared on this test set ({champion.reason})"
        if allow_incomparable:
            return decision(PROMOTE, INCOMPARABLE_ALLOWED,
                            f"{incomparable}; promoted without a comparison because allow_incomparable_promotion "
                            f"is set: {metric} {value:.4f} {clears}")
        return decision(REJECT, INCOMPARABLE_REFUSED,
                        f"{incomparable}: promotion refused (set allow_incomparable_promotion to promote "
                        f"without a comparison)")
    required = task.required(champion.value, margin)
    if not task.reaches(value, required):
        return decision(
            REJECT, COMPARED,
            f"challenger {metric} {value:.4f} does not beat {champion.label('champion')} {champion.value:.4f} "
            f"by the margin {task.margin_text(margin)} (needs {'>=' if task.higher_is_better else '<='} "
            f"{required:.4f})",
        )
    return decision(
        PROMOTE, COMPARED,
        f"challenger {metric} {value:.4f} beats {champion.label('champion')} {champion.value:.4f} by "
        f"{task.gain(value, champion.value)} (margin {task.margin_text(margin)}) and {clears}",
    )


def decide_rollback(
    champion: Score | None,
    previous: Score | None,
    *,
    margin: float,
    min_rows: int,
    metric: str = "auc",
    task: TaskMetric = TASK_METRICS[BINARY],
) -> Decision:
    """Roll back when the previous champion, scored on the same rows, is better by more than ``margin``."""
    _check_margin(margin)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(rule="rollback", action=action, reason=reason, metric=metric, candidate=previous,
                        incumbent=champion, margin=margin, min_rows=min_rows,
                        higher_is_better=task.higher_is_better)

    if champion is None or champion.value is None:
        return decision(KEEP, f"no realised champion {metric} yet (labels not available)")
    if previous is None:
        return decision(KEEP, "no previous champion to roll back to")
    if not previous.usable:
        return decision(KEEP, f"{previous.label('previous champion')} not comparable: {previous.reason}")
    if (champion.rows or 0) < min_rows:
        return decision(KEEP, f"only {champion.rows or 0} labelled rows (< {min_rows})")
    compared = (
        f"{champion.label('champion')} {metric} {champion.value:.4f} vs "
        f"{previous.label('previous champion')} {previous.value:.4f}"
    )
    if task.beyond(previous.value, task.required(champion.value, margin)):
        return decision(
            ROLLBACK,
            f"{compared}: the previous champion is better by {task.gain(previous.value, champion.value)} "
            f"(> margin {task.margin_text(margin)})",
        )
    return decision(KEEP, f"{compared}: within the margin {task.margin_text(margin)}")


def decide_ab(
    champion_arm: Score,
    challenger_arm: Score,
    *,
    margin: float,
    min_rows: int,
    metric: str = "auc",
    task: TaskMetric = TASK_METRICS[BINARY],
) -> Decision:
    """Promote the challenger arm when it beats the champion arm by ``margin`` on enough labelled rows."""
    _check_margin(margin)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(rule="ab_test", action=action, reason=reason, metric=metric, candidate=challenger_arm,
                        incumbent=champion_arm, margin=margin, min_rows=min_rows,
                        higher_is_better=task.higher_is_better)

    rows = min(champion_arm.rows or 0, challenger_arm.rows or 0)
    if rows < min_rows:
        return decision(INSUFFICIENT, f"an arm has only {rows} labelled rows (< {min_rows})")
    if not champion_arm.usable or not challenger_arm.usable:
        return decision(INSUFFICIENT, f"an arm has no {metric} (e.g. one class only in its labels)")
    compared = (
        f"challenger arm {metric} {challenger_arm.value:.4f} vs champion arm {champion_arm.value:.4f} "
        f"(margin {task.margin_text(margin)})"
    )
    if task.reaches(challenger_arm.value, task.required(champion_arm.value, margin)):
        return decision(PROMOTE, f"{compared}: the challenger arm does at least as well plus the margin")
    return decision(KEEP, f"{compared}: the challenger arm does not beat the champion arm by the margin")
