"""Reading a feature snapshot: the `features build` step's manifest, then its train/valid/test splits.

The task comes from the build manifest (``task``, and ``classes`` for multiclass): labels are 0/1 for
binary, class indices 0..K-1 for multiclass (``classes[i]`` is the user's label of index i) and numbers for
regression.

A split is read whole (:func:`load_snapshot`) or, for training data bigger than memory, batch by batch from
its parquet row groups (:func:`split_batches`, what xgboost's external memory iterates over).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from mlcontract import storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import BuildManifest
from mlcontract.names import BINARY, ENTITY, LABEL, MULTICLASS, REGRESSION, SNAPSHOT, SPLITS

log = logging.getLogger(__name__)

KEY_COLUMNS = (ENTITY, SNAPSHOT)


@dataclass(frozen=True)
class Split:
    name: str
    frame: pl.DataFrame  # key columns, label and features, as stored

    def features(self, columns: list[str]) -> np.ndarray:
        """Features as float32 (xgboost's native type); nulls become NaN, which xgboost treats as missing."""
        return self.frame.select(pl.col(columns).cast(pl.Float32)).to_numpy()

    @property
    def label(self) -> np.ndarray:
        return self.frame[LABEL].cast(pl.Float64).to_numpy()

    def __len__(self) -> int:
        return self.frame.height


@dataclass(frozen=True)
class Snapshot:
    features_dir: str
    build: BuildManifest
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def snapshot_uri(self) -> str:
        return self.build.snapshot_uri

    @property
    def snapshot_hash(self) -> str:
        return self.build.snapshot_hash

    @property
    def feature_columns(self) -> list[str]:
        return self.build.feature_columns

    @property
    def task(self) -> str:
        return self.build.task

    @property
    def classes(self) -> list[str] | None:
        return self.build.classes

    @property
    def num_class(self) -> int | None:
        return len(self.build.classes) if self.task == MULTICLASS and self.build.classes else None

    def split_uri(self, name: str) -> str:
        return storage.join_uri(self.snapshot_uri, f"{name}.parquet")

    def split_rows(self, name: str) -> int:
        """A split's row count from its parquet footer, without reading its data."""
        import pyarrow.parquet as pq

        uri = self.split_uri(name)
        if not storage.exists(uri):
            raise StepInputError(f"split {name!r} not found: {uri}")
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def train_labels(self) -> np.ndarray:
        """The train split's labels alone (for the naive baseline), without reading its features."""
        if "train" in self.splits:
            return self.splits["train"].label
        uri = storage.join_uri(self.snapshot_uri, "train.parquet")
        if not storage.exists(uri):
            raise StepInputError(f"split 'train' not found: {uri}")
        return storage.read_parquet(uri, columns=[LABEL])[LABEL].cast(pl.Float64).to_numpy()

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def read_snapshot(features_dir: str) -> Snapshot:
    """The snapshot the build step's manifest in ``features_dir`` describes, no split read yet."""
    build = BuildManifest.read(features_dir)
    if not build.feature_columns:
        raise StepInputError(f"{features_dir}: build manifest lists no feature_columns")
    if build.task == MULTICLASS and len(build.classes or []) < 2:
        raise StepInputError(
            f"{features_dir}: a multiclass snapshot must list its classes (at least 2), got {build.classes}"
        )
    return Snapshot(features_dir=features_dir, build=build)


def load_snapshot(features_dir: str, splits: tuple[str, ...] = SPLITS) -> Snapshot:
    """Read the build step's manifest in ``features_dir`` and load the named splits of its snapshot.

    Raises :class:`~mlcontract.errors.StepInputError` naming the file or column when the snapshot is not
    what the contract says.
    """
    snapshot = read_snapshot(features_dir)
    for name in splits:
        snapshot.splits[name] = _read_split(snapshot, name)
    log.info(
        "snapshot %s: %s rows, %d features",
        snapshot.snapshot_hash[:12],
        ", ".join(f"{name} {len(split):,}" for name, split in snapshot.splits.items()),
        len(snapshot.feature_columns),
    )
    return snapshot


def _read_split(snapshot: Snapshot, name: str) -> Split:
    uri = snapshot.split_uri(name)
    if not storage.exists(uri):
        raise StepInputError(f"split {name!r} not found: {uri}")
    frame = storage.read_parquet(uri)
    required = [*KEY_COLUMNS, LABEL, *snapshot.feature_columns]
    _check_columns(frame.columns, required, uri)
    if frame.height == 0:
        raise StepInputError(f"{uri}: split {name!r} is empty")
    check_labels(frame[LABEL], snapshot.build, uri)
    return Split(name, frame.select(required))


def _check_columns(found: list[str], required: list[str], uri: str) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise StepInputError(f"{uri}: missing columns {missing}")


def split_frames(snapshot: Snapshot, name: str, batch_rows: int, columns: list[str]) -> Iterator[pl.DataFrame]:
    """``columns`` of a split as stored, at most ``batch_rows`` rows at a time, read row group by row group
    (one row group and one batch in memory); the split must hold the contract's columns and a row."""
    import pyarrow.parquet as pq

    uri = snapshot.split_uri(name)
    if not storage.exists(uri):
        raise StepInputError(f"split {name!r} not found: {uri}")
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        _check_columns(parquet.schema_arrow.names, [*KEY_COLUMNS, LABEL, *snapshot.feature_columns], uri)
        if parquet.metadata.num_rows == 0:
            raise StepInputError(f"{uri}: split {name!r} is empty")
        # One row group read at a time: pyarrow's iter_batches reads ahead and held several times more.
        for group in range(parquet.num_row_groups):
            for batch in parquet.read_row_group(group, columns=columns).to_batches(batch_rows):
                yield pl.from_arrow(batch)


def split_batches(snapshot: Snapshot, name: str, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of a split, at most ``batch_rows`` rows at a time, read row group by row group:
    the same values and checks as :meth:`Split.features` and :attr:`Split.label` on the whole split, with
    one row group and one batch in memory."""
    columns = snapshot.feature_columns
    where = snapshot.split_uri(name)
    for frame in split_frames(snapshot, name, batch_rows, [LABEL, *columns]):
        split = Split(name, frame)
        check_labels(split.frame[LABEL], snapshot.build, where)
        yield split.features(columns), split.label


def split_sample(
    snapshot: Snapshot, name: str, rows: int, seed: int, columns: list[str], batch_rows: int
) -> pl.DataFrame:
    """``rows`` rows of a split drawn uniformly without replacement (seeded; all rows when it has no more),
    ``columns`` as stored, in file order; read batch by batch, holding the sample and one batch."""
    total = snapshot.split_rows(name)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=rows, replace=False)) if total > rows else np.arange(total)
    pieces, offset = [], 0
    for frame in split_frames(snapshot, name, batch_rows, columns):
        start, stop = np.searchsorted(chosen, [offset, offset + frame.height])
        if stop > start:
            pieces.append(frame[chosen[start:stop] - offset])
        offset += frame.height
    return pl.concat(pieces, rechunk=False)  # no second copy: a column is made contiguous when it is read


def split_head(snapshot: Snapshot, name: str, rows: int) -> pl.DataFrame:
    """The first ``rows`` rows of a split, its feature columns as stored (the model's input example),
    decoding only the pages they are on."""
    import pyarrow.parquet as pq

    uri = snapshot.split_uri(name)
    if not storage.exists(uri):
        raise StepInputError(f"split {name!r} not found: {uri}")
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        first = next(pq.ParquetFile(handle).iter_batches(batch_size=rows, columns=snapshot.feature_columns), None)
    if first is None:
        raise StepInputError(f"{uri}: split {name!r} is empty")
    return pl.from_arrow(first)


def check_labels(labels: pl.Series, build: BuildManifest, where: str) -> None:
    """Labels as the snapshot's task stores them; the error names the user's label column."""
    column = build.columns.get(LABEL, LABEL)
    shown = f"column {LABEL!r} (the label, {column!r})" if column != LABEL else f"column {LABEL!r}"
    if labels.null_count():
        raise StepInputError(f"{where}: {shown} has {labels.null_count()} missing values")
    if build.task == REGRESSION:
        if not labels.dtype.is_numeric():
            raise StepInputError(f"{where}: {shown} must be numeric for regression, found type {labels.dtype}")
        finite = labels.cast(pl.Float64).is_finite()
        if not finite.all():
            raise StepInputError(f"{where}: {shown} has {int((~finite).sum())} infinite or NaN values")
        return
    allowed = set(range(len(build.classes or []))) if build.task == MULTICLASS else {0, 1}
    found = set(labels.unique().to_list())
    if not found <= allowed:
        expected = f"class indices 0..{len(allowed) - 1}" if build.task == MULTICLASS else "0/1"
        raise StepInputError(
            f"{where}: {shown} must hold {expected} for a {build.task or BINARY} task, "
            f"found {sorted(found - allowed, key=str)[:5]}"
        )
