"""Storage helpers shared by every step: fsspec URIs, atomic writes, step manifests.

Every step writes its outputs under a run-scoped prefix and writes ``manifest.json`` last, atomically,
so the presence of a manifest means the step finished. ``ARTIFACT_ROOT`` may be ``file://`` or ``s3://``;
nothing here cares which.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

MANIFEST_NAME = "manifest.json"


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see a half-written file.

    On object stores a single PUT is already atomic, so the rename is only done on local paths.
    """
    fs, path = filesystem(uri)
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as handle:
            handle.write(data)


def atomic_write_json(uri: str, payload: Any) -> None:
    atomic_write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())


def local_path(uri: str) -> Path:
    """The local filesystem path of a ``file://`` URI (or a plain path)."""
    fs, path = filesystem(uri)
    if not is_local(fs):
        raise ValueError(f"{uri!r} is not a local path")
    return Path(path)


def write_manifest(step_dir: str, manifest: dict[str, Any]) -> str:
    """Write the step's manifest last; its presence marks the step as finished."""
    uri = join_uri(step_dir, MANIFEST_NAME)
    atomic_write_json(uri, manifest)
    return uri


def read_manifest(step_dir: str) -> dict[str, Any]:
    uri = join_uri(step_dir, MANIFEST_NAME)
    if not exists(uri):
        raise FileNotFoundError(f"no manifest at {uri}: the step that writes it has not finished")
    return read_json(uri)


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


def default_out() -> str:
    """Where a step writes when ``--out`` is not given: the pod's ``STEP_OUTPUT_URI``."""
    out = os.environ.get("STEP_OUTPUT_URI")
    if not out:
        raise SystemExit("--out is required (or set STEP_OUTPUT_URI)")
    return out
