"""Storage on fsspec: every path is a URI (``file://…``, ``s3://…`` or a plain local path).

One implementation of each: atomic writes (a temporary sibling renamed into place locally; one PUT on an
object store, which is atomic by itself), JSON and parquet read/write/scan, a staged directory that becomes
visible at once, and content hashes. DataFrame functions import polars lazily (the ``frames`` extra), so the
Airflow side can use the rest without it.

A directory with a manifest is published by it: readers trust only a directory whose manifest exists. So a
step that rewrites its directory first removes the old manifest (:func:`begin_rewrite`): while it writes,
and if it is killed, nobody takes the half-written directory for the old or the new output. Staging
(``.NAME.UUID.tmp``) that a killed writer left behind is removed by the next writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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
# staging of a shared directory (a content-addressed snapshot) older than this is a killed writer's leftover;
# younger, it may be a concurrent writer's, still at work
STALE_STAGING_SECONDS = 24 * 3600
TMP_SUFFIX = ".tmp"


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

    Write into :attr:`uri` (a hidden ``.NAME.UUID.tmp`` sibling of the final directory), then :meth:`commit`.
    Locally the staging directory is renamed into place (an older directory is moved aside first, then
    removed). An object store has no rename: on commit the final directory's manifest is removed first (the
    old content stops being trusted), the staged files are copied in, files of the old content that the new
    one lacks are removed, and the manifest comes last. The previous output stays whole until the new one is
    complete in staging: a writer killed while writing leaves the old directory as it was.

    With ``keep_complete=True`` a directory that already holds a manifest (completed concurrently by
    someone else) is kept and this one discarded: the content-addressed case, where both are the same.
    Staging of the same directory older than ``stale_after`` seconds (a killed writer's) is removed.
    """

    def __init__(self, final_uri: str, *, keep_complete: bool = False, stale_after: float = STALE_STAGING_SECONDS):
        self.final_uri = final_uri.rstrip("/")
        self.keep_complete = keep_complete
        self._fs, self._final_path = filesystem(self.final_uri)
        self._local = is_local(self._fs)
        parent, name = self._final_path.rsplit("/", 1) if "/" in self._final_path else (".", self._final_path)
        remove_staging(self._fs.unstrip_protocol(parent), f".{name}.", older_than=stale_after)
        self._staging_path = _temporary_sibling(self._final_path)
        if self._local:
            os.makedirs(self._staging_path)
            self.uri = self._staging_path
        else:
            self.uri = self._fs.unstrip_protocol(self._staging_path)

    def _complete(self) -> bool:
        return self._fs.exists(f"{self._final_path}/{MANIFEST_FILE}")

    def commit(self) -> bool:
        """Make the directory visible; False when a complete one was kept instead (``keep_complete``)."""
        if self.keep_complete and self._complete():
            self.abort()
            return False
        if not self._local:
            self._commit_remote()
            return True
        old = None
        if os.path.exists(self._final_path):
            old = _temporary_sibling(self._final_path)
            os.replace(self._final_path, old)
        os.replace(self._staging_path, self._final_path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return True

    def _commit_remote(self) -> None:
        fs, staging, final = self._fs, self._staging_path, self._final_path
        staged = {path[len(staging) + 1:] for path in fs.find(staging)}
        if fs.exists(f"{final}/{MANIFEST_FILE}"):
            fs.rm_file(f"{final}/{MANIFEST_FILE}")
        for name in sorted(staged - {MANIFEST_FILE}):
            fs.copy(f"{staging}/{name}", f"{final}/{name}")  # a server-side copy, each one atomic
        stale = [path for path in (fs.find(final) if fs.exists(final) else [])
                 if path[len(final) + 1:] not in staged]
        if stale:
            fs.rm(stale)
        if MANIFEST_FILE in staged:
            fs.copy(f"{staging}/{MANIFEST_FILE}", f"{final}/{MANIFEST_FILE}")
        self.abort()

    def abort(self) -> None:
        if self._local:
            shutil.rmtree(self._staging_path, ignore_errors=True)
        elif self._fs.exists(self._staging_path):
            self._fs.rm(self._staging_path, recursive=True)

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _age_seconds(fs: fsspec.AbstractFileSystem, path: str) -> float:
    """Seconds since anything under ``path`` last changed (0 when it cannot be told: assumed in use)."""
    try:
        if is_local(fs):
            stamps = [os.stat(path).st_mtime]
            for root, dirs, files in os.walk(path):
                stamps += [os.stat(os.path.join(root, n)).st_mtime for n in dirs + files]
            return time.time() - max(stamps)
        files = fs.find(path) or [path]
        return min(time.time() - fs.modified(f).timestamp() for f in files)
    except (OSError, NotImplementedError, ValueError):
        return 0.0


def remove_staging(directory_uri: str, prefix: str = ".", *, older_than: float = 0.0) -> list[str]:
    """Remove the staging entries (``{prefix}….tmp``: staged directories, temporary files) that writers killed
    before they finished left in a directory; only those unchanged for ``older_than`` seconds. Returns them."""
    fs, path = filesystem(directory_uri)
    try:
        entries = fs.ls(path, detail=False) if fs.exists(path) else []
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(prefix) and name.startswith(".") and name.endswith(TMP_SUFFIX):
            if older_than <= 0 or _age_seconds(fs, entry) >= older_than:
                fs.rm(entry, recursive=True)
                removed.append(fs.unstrip_protocol(entry))
    return removed


def begin_rewrite(directory_uri: str) -> None:
    """Before a step (its only writer) rewrites its output directory: the old manifest goes first, so the old
    and the new files are never taken for one complete output, and a killed earlier try's staging is removed."""
    remove(join_uri(directory_uri, MANIFEST_FILE))
    remove_staging(directory_uri)


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
