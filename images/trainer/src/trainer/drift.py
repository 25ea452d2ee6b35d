"""Distribution drift: quantile binning and the Population Stability Index (pure numpy, no I/O).

A *reference* is what a model saw when it was trained: per feature, the inner cut points of (up to) 10
quantile bins of the train split and the share of rows in each bin, plus the distribution of its scores on
the test split: over fixed bins of [0, 1] for the probabilities of binary and multiclass models, over
quantile bins for a regression model's predictions, and for multiclass also the share of each predicted
class (:func:`category_distribution`). It is stored with the model (``reference/reference.json`` in its
MLflow run) and serving data is later binned with the *same* cut points, so the two are comparable.

Training data bigger than memory (:func:`streamed_distributions`): the cut points come from a seeded
sample of the train rows, the shares and row counts from all of them, counted batch by batch.

Bins: ``cuts`` c_0 < … < c_{k-1} make ``k + 1`` value bins ``(-inf, c_0], (c_0, c_1], …, (c_{k-1}, inf)``
and one more bin for missing values (NaN/null), last. Duplicate quantiles collapse, so a discrete feature
gets one bin per value and a constant one two bins (``<= c`` and ``> c``), never empty-width bins.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over bins, with shares clipped to ``epsilon`` so an empty bin
gives a large but finite term. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant shift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from mlcontract.names import BINARY, REGRESSION

DEFAULT_BINS = 10
EPSILON = 1e-4
REFERENCE_VERSION = 1
SCORE_CUTS = [round(i / DEFAULT_BINS, 10) for i in range(1, DEFAULT_BINS)]  # 10 equal bins over [0, 1]


def _as_float(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def quantile_cuts(values: Any, bins: int = DEFAULT_BINS) -> list[float]:
    """Inner cut points of ``bins`` quantile bins of the finite values (deduplicated; [] when none)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    finite = _as_float(values)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return []
    # inverted_cdf: every cut is an observed value, so a discrete feature gets one bin per value
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    cuts = np.unique(quantiles)
    if cuts.size == 0:  # bins == 1: a single cut at the median keeps "below"/"above" distinguishable
        cuts = np.unique(np.quantile(finite, [0.5], method="inverted_cdf"))
    return [float(c) for c in cuts]


def bin_counts(values: Any, cuts: Sequence[float]) -> np.ndarray:
    """Row counts per bin: ``len(cuts) + 1`` value bins, then the missing bin."""
    values = _as_float(values)
    missing = ~np.isfinite(values)
    index = np.searchsorted(np.asarray(cuts, dtype=np.float64), values[~missing], side="left")
    counts = np.bincount(index, minlength=len(cuts) + 1).astype(np.int64)
    return np.append(counts, int(missing.sum()))


def proportions(values: Any, cuts: Sequence[float]) -> list[float]:
    counts = bin_counts(values, cuts)
    total = counts.sum()
    if total == 0:
        return [0.0] * counts.size
    return [float(c) for c in counts / total]


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float:
    """Population Stability Index of two bin-share vectors of the same length (shares clipped to epsilon)."""
    e = np.clip(np.asarray(expected, dtype=np.float64), epsilon, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), epsilon, None)
    if e.shape != a.shape:
        raise ValueError(f"bin counts differ: expected {e.size} bins, actual {a.size}")
    return float(np.sum((a - e) * np.log(a / e)))


def distribution(values: Any, cuts: Sequence[float] | None = None, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """A reference entry: cut points (quantiles of ``values`` unless given), bin shares and row count."""
    cuts = quantile_cuts(values, bins) if cuts is None else [float(c) for c in cuts]
    return counted_distribution(cuts, bin_counts(values, cuts))


def counted_distribution(cuts: Sequence[float], counts: Any) -> dict[str, Any]:
    """A reference entry from its cut points and row counts per bin (:func:`bin_counts`, or their sum over
    batches)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    shares = [float(c) for c in counts / total] if total else [0.0] * counts.size
    return {"cuts": [float(c) for c in cuts], "proportions": shares, "rows": total}


def streamed_distributions(
    sample: Mapping[str, Any], batches: Iterable[Mapping[str, Any]], bins: int = DEFAULT_BINS
) -> dict[str, dict[str, Any]]:
    """Reference entries of features too big to hold: per feature (the names of ``sample``), quantile cut
    points of ``sample`` (values of a sample of the rows), then bin shares and row counts over all rows, the
    ``batches`` (column name -> values) counted one at a time. The same entries as :func:`distribution` when
    the sample is all the rows."""
    cuts = {name: quantile_cuts(values, bins) for name, values in sample.items()}
    counts = {name: np.zeros(len(c) + 2, dtype=np.int64) for name, c in cuts.items()}
    for batch in batches:
        for name, feature_cuts in cuts.items():
            counts[name] += bin_counts(batch[name], feature_cuts)
    return {name: counted_distribution(cuts[name], counts[name]) for name in cuts}


def psi_against(reference_entry: Mapping[str, Any], values: Any, epsilon: float = EPSILON) -> float:
    """PSI of ``values`` binned with a reference entry's cut points against that entry's shares."""
    return psi(reference_entry["proportions"], proportions(values, reference_entry["cuts"]), epsilon)


def category_distribution(values: Sequence[Any], categories: Sequence[str]) -> dict[str, Any]:
    """Shares of each category, in ``categories`` order, plus a last bin for any other value (or none)."""
    index = {category: i for i, category in enumerate(categories)}
    counts = np.zeros(len(categories) + 1, dtype=np.int64)
    for value in values:
        counts[index.get(value, len(categories))] += 1
    total = counts.sum()
    shares = [float(c) for c in counts / total] if total else [0.0] * counts.size
    return {"categories": list(categories), "proportions": shares, "rows": int(total)}


def category_psi_against(reference_entry: Mapping[str, Any], values: Sequence[Any], epsilon: float = EPSILON) -> float:
    """PSI of ``values``' category shares against a :func:`category_distribution` reference entry."""
    actual = category_distribution(values, reference_entry["categories"])["proportions"]
    return psi(reference_entry["proportions"], actual, epsilon)


def build_reference(
    features: Mapping[str, Any], scores: Any, bins: int = DEFAULT_BINS, **options: Any
) -> dict[str, Any]:
    """The training reference: per feature (column name → values of the train split) its quantile bins and
    shares; the model's scores on the test split (the published ``score``: probabilities over fixed bins
    of [0, 1], a regression's predictions over their quantile bins); multiclass: the predicted classes'
    shares over ``classes``. ``options``: :func:`reference_of`'s ``task``, ``predicted_classes``, ``classes``."""
    entries = {name: distribution(values, bins=bins) for name, values in features.items()}
    return reference_of(entries, scores, bins, **options)


def reference_of(
    feature_entries: Mapping[str, dict[str, Any]],
    scores: Any,
    bins: int = DEFAULT_BINS,
    *,
    task: str = BINARY,
    predicted_classes: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`build_reference` from per-feature entries already made (:func:`distribution` or
    :func:`streamed_distributions`)."""
    reference = {
        "version": REFERENCE_VERSION,
        "task": task,
        "bins": bins,
        "epsilon": EPSILON,
        "missing_bin": "last",
        "feature_columns": list(feature_entries),
        "features": dict(feature_entries),
        "score": distribution(scores, cuts=None if task == REGRESSION else SCORE_CUTS, bins=bins),
    }
    if predicted_classes is not None:
        reference["predicted_class"] = category_distribution(predicted_classes, classes or [])
    return reference
