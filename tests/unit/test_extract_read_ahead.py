"""The Arrow extract's read-ahead: bounded by rows (not by the driver's batches), in order, errors raised where
they happened, the thread gone when the caller stops; and parts made of many driver batches are the files
the SQLAlchemy path writes."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import adbc_driver_postgresql
import pyarrow as pa
import pytest
from features import synth
from features.extract import warehouse
from features.extract.training import extract
from features.extract.warehouse import READERS, Warehouse, read_ahead
from mlcontract.source import TrainingSource


def counted(fetched: list[int], batches: int = 100, rows: int = 3, fail: bool = False):
    for index in range(batches):
        fetched.append(index)
        yield pa.record_batch({"x": [index] * rows})
    if fail:
        raise ValueError("the driver failed")


def settled(fetched: list[int], expected: int) -> int:
    """How many batches the thread has fetched once it waits (it stops at ``expected`` at the latest)."""
    deadline = time.monotonic() + 5
    while len(fetched) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time to fetch more, had it not been bounded
    return len(fetched)


def test_read_ahead_waits_at_max_rows_whatever_the_batch_size():
    fetched: list[int] = []
    stream = read_ahead(counted(fetched), max_rows=10)
    first = next(stream)
    # the caller holds batch 0; the thread fetches while fewer than 10 rows wait: 4 batches of 3 rows
    assert settled(fetched, 5) == 5
    rest = list(stream)
    assert [batch["x"][0].as_py() for batch in [first, *rest]] == list(range(100))

    fetched.clear()  # a batch larger than the bound still goes through, one at a time
    stream = read_ahead(counted(fetched, rows=50), max_rows=10)
    next(stream)
    assert settled(fetched, 2) == 2
    stream.close()


def test_a_driver_error_comes_after_the_batches_before_it_and_an_early_stop_ends_the_thread():
    fetched: list[int] = []
    stream = read_ahead(counted(fetched, batches=3, fail=True), max_rows=100)
    assert [batch["x"][0].as_py() for batch in (next(stream), next(stream), next(stream))] == [0, 1, 2]
    with pytest.raises(ValueError, match="the driver failed"):
        next(stream)

    fetched.clear()
    stream = read_ahead(counted(fetched), max_rows=10)
    next(stream)
    stream.close()
    assert len(fetched) < 100
    assert not [t for t in threading.enumerate() if t.name == "extract-read-ahead"]


def test_parts_of_many_small_driver_batches_are_the_sqlalchemy_paths_files(postgres_uri, tmp_path, monkeypatch):
    """PostgreSQL's driver sizes its batches by bytes: here about 40 rows each, re-chunked into parts of 1,000
    rows and read ahead by rows; the files are those of the SQLAlchemy path."""
    synth.generate(synth.SynthConfig(customers=150, events_per_customer=30), postgres_uri)
    opened = Warehouse.arrow_statement
    sizes: list[int] = []

    def small_batches(self, batch_rows):
        with opened(self, batch_rows) as statement:
            hint = adbc_driver_postgresql.StatementOptions.BATCH_SIZE_HINT_BYTES.value
            statement.set_options(**{hint: "2048"})
            yield statement

    def seen(batches, max_rows):
        for batch in original(batches, max_rows):
            sizes.append(batch.num_rows)
            yield batch

    original = warehouse.read_ahead
    monkeypatch.setattr(Warehouse, "arrow_statement", contextmanager(small_batches))
    monkeypatch.setattr(warehouse, "read_ahead", seen)
    runs = {reader: extract(postgres_uri, str(tmp_path / reader), TrainingSource(entities_table="customers"),
                            batch_rows=1_000, reader=reader) for reader in READERS}
    assert len(sizes) > 50 and max(sizes) < 1_000  # many driver batches to each part
    assert runs["auto"].rows == runs["sqlalchemy"].rows
    assert runs["auto"].content_hash == runs["sqlalchemy"].content_hash
