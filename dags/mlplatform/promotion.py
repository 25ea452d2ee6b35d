"""The promotion rule: a pure function, so it can be tested on its own and audited by reading it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    threshold: float
    margin: float

    def as_dict(self) -> dict:
        return asdict(self)


def decide_promotion(
    challenger: float,
    champion: float | None,
    *,
    threshold: float,
    margin: float,
    metric: str = "test_auc",
) -> PromotionDecision:
    """Promote when the challenger clears ``threshold`` AND beats the champion by at least ``margin``.

    With no comparable champion (the first model, or one that cannot score the new features) only the
    threshold applies.
    """
    if not 0.0 <= margin:
        raise ValueError(f"promotion margin must be >= 0, got {margin}")

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, challenger, champion, threshold, margin)

    if math.isnan(challenger):  # NaN never promotes
        return decision(False, f"challenger {metric} is NaN")
    if challenger < threshold:
        return decision(False, f"challenger {metric} {challenger:.4f} is below the threshold {threshold:.4f}")
    if champion is None:
        return decision(True, f"first model: {metric} {challenger:.4f} clears the threshold {threshold:.4f}")
    required = champion + margin
    if challenger < required:
        return decision(
            False,
            f"challenger {metric} {challenger:.4f} does not beat champion {champion:.4f} "
            f"by the margin {margin:.4f} (needs >= {required:.4f})",
        )
    return decision(
        True,
        f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} by "
        f"{challenger - champion:+.4f} (margin {margin:.4f}) and clears the threshold {threshold:.4f}",
    )
