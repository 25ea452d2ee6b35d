"""Storage on fsspec: every path is a URI (``file://…``, ``s3://…`` or a plain local path).

One implementation of each: atomic writes (a temporary sibling renamed into place locally; one PUT on an
object store, which is atomic by itself), JSON and parquet read/write/scan, a staged directory that becomes
visible at once, and content hashes. DataFrame functions import polars lazily (the ``frames`` extra), so the
Airflow side can use the rest without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.core import url_to_fs

from mlcontract.names import MANIFEST_FILE

if TYPE_CHECKING:
    import polars as pl

PARQUET_OPTIONS = {"compression": "zstd", "statistics": True}


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def local_path(uri: str) -> Path:
    """The local filesystem path of a ``file://`` URI (or a plain path)."""
    fs, path = filesystem(uri)
    if not is_local(fs):
        raise ValueError(f"{uri!r} is not a local path")
    return Path(path)


def remove(uri: str) -> None:
    """Remove a file or a directory tree; nothing to do when it does not exist."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def list_files(directory_uri: str, prefix: str = "") -> list[str]:
    """The files directly in a directory whose names start with ``prefix``, sorted, as URIs."""
    fs, path = filesystem(directory_uri)
    if not fs.exists(path):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [join_uri(directory_uri, name) for name in names if name.startswith(prefix)]


# ------------------------------------------------------------------------------------------------ writes


def _temporary_sibling(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_open(uri: str) -> Iterator[Any]:
    """A binary handle whose content appears at ``uri`` only when the block ends without an error."""
    fs, path = filesystem(uri)
    if not is_local(fs):  # one PUT when the handle closes: atomic on an object store
        with fs.open(path, "wb") as handle:
            yield handle
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_open(uri) as handle:
        handle.write(data)


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def copy_file(source_uri: str, target_uri: str) -> None:
    """Copy a file, streamed, appearing at ``target_uri`` at once."""
    fs, path = filesystem(source_uri)
    with fs.open(path, "rb") as source, atomic_open(target_uri) as target:
        shutil.copyfileobj(source, target, 1 << 20)


# ------------------------------------------------------------------------------------------------- reads


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


# ----------------------------------------------------------------------------------------------- parquet


def polars_path(uri: str) -> str:
    """What polars is given for a URI: the local path for ``file://``, the URI itself for object stores."""
    fs, path = filesystem(uri)
    return path if is_local(fs) else uri


def write_parquet(uri: str, frame: pl.DataFrame) -> None:
    with atomic_open(uri) as handle:
        frame.write_parquet(handle, **PARQUET_OPTIONS)


def write_parquet_stream(uri: str, frames: Iterable[pl.DataFrame]) -> int:
    """Stream frames into one parquet file (one schema, the first frame's); returns the row count."""
    import pyarrow.parquet as pq

    rows = 0
    with atomic_open(uri) as handle:
        writer = None
        for frame in frames:
            table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(handle, table.schema, compression=PARQUET_OPTIONS["compression"])
            writer.write_table(table.cast(writer.schema))
            rows += frame.height
        if writer is not None:
            writer.close()
    return rows


def read_parquet(uris: str | list[str], columns: list[str] | None = None) -> pl.DataFrame:
    """One or more parquet files read into memory (schemas relaxed to a common one)."""
    import polars as pl

    frames = []
    for uri in [uris] if isinstance(uris, str) else uris:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as handle:
            frames.append(pl.read_parquet(handle, columns=columns))
    if not frames:
        raise ValueError("no parquet files to read")
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


def scan_parquet(uris: str | list[str]) -> pl.LazyFrame:
    """A lazy scan of parquet files (a glob such as ``…/events/*.parquet`` is allowed)."""
    import polars as pl

    return pl.scan_parquet([polars_path(uri) for uri in ([uris] if isinstance(uris, str) else uris)])


# ------------------------------------------------------------------------------------- staged directories


class StagedDirectory:
    """A directory written in full before anyone can see it.

    Write into :attr:`uri`, then :meth:`commit`. Locally the files go to a hidden temporary sibling that is
    renamed into place (an older directory is moved aside first, then removed). An object store has no
    rename: the files are put directly and a manifest written last marks the directory complete; readers
    only trust a directory whose manifest exists.

    With ``keep_complete=True`` a directory that already holds a manifest (completed concurrently by
    someone else) is kept and this one discarded: the content-addressed case, where both are the same.
    """

    def __init__(self, final_uri: str, *, keep_complete: bool = False):
        self.final_uri = final_uri.rstrip("/")
        self.keep_complete = keep_complete
        self._fs, self._final_path = filesystem(self.final_uri)
        self._local = is_local(self._fs)
        if self._local:
            self._staging_path = _temporary_sibling(self._final_path)
            os.makedirs(self._staging_path)
            self.uri = self._staging_path
        else:
            if not keep_complete and self._fs.exists(self._final_path):
                self._fs.rm(self._final_path, recursive=True)
            self.uri = self.final_uri

    def _complete(self) -> bool:
        return self._fs.exists(f"{self._final_path}/{MANIFEST_FILE}")

    def commit(self) -> bool:
        """Make the directory visible; False when a complete one was kept instead (``keep_complete``)."""
        if not self._local:
            return True
        if self.keep_complete and self._complete():
            self.abort()
            return False
        old = None
        if os.path.exists(self._final_path):
            old = _temporary_sibling(self._final_path)
            os.replace(self._final_path, old)
        os.replace(self._staging_path, self._final_path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return True

    def abort(self) -> None:
        if self._local:
            shutil.rmtree(self._staging_path, ignore_errors=True)

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


# ------------------------------------------------------------------------------------------------ hashes


def hash_files(uris: list[str]) -> str:
    """Content hash of files, in the given order (sha256 over their bytes)."""
    digest = hashlib.sha256()
    for uri in uris:
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def hash_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
