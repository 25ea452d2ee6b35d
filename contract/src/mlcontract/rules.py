"""The "two metrics and a margin" rules, pure and in one place: promotion, rollback and the A/B test.

Each compares a candidate with an incumbent on one metric and returns the same :class:`Decision`, so the
training DAG, the monitor step and the monitoring DAG record, log and audit them alike.

- promotion: the challenger (candidate) must clear ``threshold`` and beat the champion (incumbent) by
  ``margin``; with no comparable champion only the threshold applies.
- rollback: the previous champion (candidate) beats the serving champion (incumbent) on the same labelled
  rows by more than ``margin``.
- A/B test: the challenger arm (candidate) does at least as well as the champion arm (incumbent) plus
  ``margin``, both arms having enough labelled rows.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

PROMOTE, REJECT, ROLLBACK, KEEP, INSUFFICIENT = "promote", "reject", "rollback", "keep", "insufficient_data"
Action = Literal["promote", "reject", "rollback", "keep", "insufficient_data"]


class Score(BaseModel):
    """One model's value of the metric, and whether it can be compared at all (and why not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str | None = None
    value: float | None = None
    rows: int | None = None
    comparable: bool = True
    reason: str | None = None

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

    @property
    def acts(self) -> bool:
        """True when the decision moves an alias (promote or roll back)."""
        return self.action in (PROMOTE, ROLLBACK)


def _check_margin(margin: float) -> None:
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def decide_promotion(
    challenger: Score, champion: Score | None, *, threshold: float, margin: float, metric: str = "test_auc"
) -> Decision:
    """Promote when the challenger clears ``threshold`` AND beats a comparable champion by ``margin``."""
    _check_margin(margin)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(rule="promotion", action=action, reason=reason, metric=metric, candidate=challenger,
                        incumbent=champion, margin=margin, threshold=threshold)

    value = challenger.value
    if value is None or math.isnan(value):  # NaN never promotes
        return decision(REJECT, f"challenger {metric} is missing or NaN")
    if value < threshold:
        return decision(REJECT, f"challenger {metric} {value:.4f} is below the threshold {threshold:.4f}")
    if champion is None or not champion.usable:
        why = "first model" if champion is None else f"champion not comparable ({champion.reason})"
        return decision(PROMOTE, f"{why}: {metric} {value:.4f} clears the threshold {threshold:.4f}")
    required = champion.value + margin
    if value < required:
        return decision(
            REJECT,
            f"challenger {metric} {value:.4f} does not beat champion {champion.value:.4f} "
            f"by the margin {margin:.4f} (needs >= {required:.4f})",
        )
    return decision(
        PROMOTE,
        f"challenger {metric} {value:.4f} beats champion {champion.value:.4f} by "
        f"{value - champion.value:+.4f} (margin {margin:.4f}) and clears the threshold {threshold:.4f}",
    )


def decide_rollback(
    champion: Score | None, previous: Score | None, *, margin: float, min_rows: int, metric: str = "auc"
) -> Decision:
    """Roll back when the previous champion, scored on the same rows, is better by more than ``margin``."""
    _check_margin(margin)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(rule="rollback", action=action, reason=reason, metric=metric, candidate=previous,
                        incumbent=champion, margin=margin, min_rows=min_rows)

    if champion is None or champion.value is None:
        return decision(KEEP, f"no realised champion {metric} yet (labels not available)")
    if previous is None:
        return decision(KEEP, "no previous champion to roll back to")
    if not previous.usable:
        return decision(KEEP, f"{previous.label('previous champion')} not comparable: {previous.reason}")
    if (champion.rows or 0) < min_rows:
        return decision(KEEP, f"only {champion.rows or 0} labelled rows (< {min_rows})")
    gap = previous.value - champion.value
    if gap > margin:
        return decision(
            ROLLBACK,
            f"{champion.label('champion')} {metric} {champion.value:.4f} is below "
            f"{previous.label('previous champion')} {metric} {previous.value:.4f} by {gap:.4f} (> margin {margin})",
        )
    return decision(
        KEEP,
        f"{champion.label('champion')} {metric} {champion.value:.4f} vs {previous.label('previous champion')} "
        f"{previous.value:.4f}: within the margin {margin}",
    )


def decide_ab(
    champion_arm: Score, challenger_arm: Score, *, margin: float, min_rows: int, metric: str = "auc"
) -> Decision:
    """Promote the challenger arm when it beats the champion arm by ``margin`` on enough labelled rows."""
    _check_margin(margin)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(rule="ab_test", action=action, reason=reason, metric=metric, candidate=challenger_arm,
                        incumbent=champion_arm, margin=margin, min_rows=min_rows)

    rows = min(champion_arm.rows or 0, challenger_arm.rows or 0)
    if rows < min_rows:
        return decision(INSUFFICIENT, f"an arm has only {rows} labelled rows (< {min_rows})")
    if not champion_arm.usable or not challenger_arm.usable:
        return decision(INSUFFICIENT, f"an arm has no {metric} (one class only in its labels)")
    if challenger_arm.value >= champion_arm.value + margin:
        return decision(
            PROMOTE,
            f"challenger arm {metric} {challenger_arm.value:.4f} >= champion arm {champion_arm.value:.4f} "
            f"+ margin {margin}",
        )
    return decision(
        KEEP,
        f"challenger arm {metric} {challenger_arm.value:.4f} < champion arm {champion_arm.value:.4f} "
        f"+ margin {margin}",
    )
