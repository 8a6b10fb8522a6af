"""One storage layer for every job: local folders, ``file://`` and ``s3://`` URIs.

Every input and output of the system is a URI. This module turns a URI into an fsspec filesystem
plus a path and offers the few operations the jobs need: join, exists, list, read and write bytes,
JSON, JSON lines and parquet. Writes are atomic per file:

- local files are written to a temporary name in the same folder and renamed into place, so a
  reader never sees a half-written file and a crash leaves no partial output;
- S3 objects only become visible when the upload completes (single PUT or a completed multipart
  upload), which is the same guarantee.

``s3://`` honours ``AWS_ENDPOINT_URL`` (MinIO, moto, Ceph, ...) and the usual AWS credential chain.

Failures of the storage backend itself (an unreachable endpoint, a denied request) surface as
:class:`StorageError`, an ``OSError`` whose message names the URI, so every job reports them in
one line instead of a traceback from the S3 client.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "StorageError",
    "absolute",
    "exists",
    "filesystem",
    "is_remote",
    "iter_parquet",
    "join",
    "list_files",
    "pyarrow_filesystem",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "read_text",
    "remove",
    "translate_errors",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_parquet",
    "write_text",
]


F = TypeVar("F", bound=Callable[..., Any])


class StorageError(OSError):
    """The storage backend failed for a URI (unreachable endpoint, denied or throttled request)."""


def _backend_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 client installed: only local and fsspec errors, already OSError
        return ()
    return (BotoCoreError, ClientError)


_BACKEND_ERRORS = _backend_errors()


@contextlib.contextmanager
def translate_errors(uri: str) -> Iterator[None]:
    """Turns an error of the S3 client into a :class:`StorageError` naming ``uri``."""
    try:
        yield
    except _BACKEND_ERRORS as e:
        raise StorageError(f"{uri}: {type(e).__name__}: {e}") from e


def _storage_call(fn: F) -> F:
    @functools.wraps(fn)
    def call(uri: str, *args, **kwargs):
        with translate_errors(uri):
            return fn(uri, *args, **kwargs)

    return call  # type: ignore[return-value]


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than ``file``."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return scheme not in ("", "file")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Returns ``(fs, path)`` for a URI; local paths are made absolute."""
    if uri.startswith("s3://"):
        fs = fsspec.filesystem("s3", **_s3_options())
        return fs, uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns a pyarrow filesystem and path for a URI (for Ray Data and pyarrow datasets)."""
    if uri.startswith("s3://"):
        fs, path = filesystem(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    _, path = filesystem(uri)
    return pafs.LocalFileSystem(), path


def absolute(uri: str) -> str:
    """The URI with a local path made absolute (remote URIs unchanged).

    Ray Train workers run in their own working directory, so relative paths must be resolved on
    the driver before they are handed to workers.
    """
    return uri if is_remote(uri) else filesystem(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Joins path parts onto a URI with ``/`` (also for local paths)."""
    out = uri.rstrip("/")
    for part in parts:
        out = posixpath.join(out, part.strip("/")) if part else out
    return out


@_storage_call
def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


@_storage_call
def remove(uri: str) -> None:
    """Removes a file or a folder tree; missing targets are ignored."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@_storage_call
def list_files(uri: str, suffix: str = "", recursive: bool = True) -> list[str]:
    """Lists files under a folder URI (sorted), returned as URIs of the same form as ``uri``.

    Missing folders give an empty list.
    """
    fs, root = filesystem(uri)
    if not fs.exists(root):
        return []
    if recursive:
        paths = [p for p in fs.find(root) if p.endswith(suffix)]
    else:
        paths = [p for p in fs.ls(root, detail=False) if p.endswith(suffix) and fs.isfile(p)]
    return sorted(join(uri, posixpath.relpath(p, root)) for p in paths)


@_storage_call
def list_file_versions(uri: str, suffix: str = "") -> dict[str, str]:
    """Like ``list_files(uri, suffix)``, with a version string per file that changes when the file
    is rewritten: the S3 ETag (content hash of a single-part upload), else size and modification
    time. One listing call, no request per file."""
    fs, root = filesystem(uri)
    if not fs.exists(root):
        return {}
    versions = {}
    for path, info in fs.find(root, detail=True).items():
        if path.endswith(suffix):
            stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified")
            if stamp is None:
                raise ValueError(
                    f"{join(uri, posixpath.relpath(path, root))}: the file system gives no version"
                )
            versions[join(uri, posixpath.relpath(path, root))] = f"{info['size']}:{stamp}"
    return dict(sorted(versions.items()))


@_storage_call
def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e


@_storage_call
def write_bytes(uri: str, data: bytes) -> None:
    """Writes a whole file atomically (temp name + rename locally; one completed upload on S3)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri}: invalid JSON ({e})") from e


def write_json(uri: str, obj: Any, indent: int | None = 2) -> None:
    write_text(uri, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_jsonl(uri: str) -> list[dict]:
    rows = []
    for n, line in enumerate(read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{uri}: line {n} is not valid JSON ({e})") from e
    return rows


def write_jsonl(uri: str, rows: Iterable[dict]) -> None:
    write_text(uri, "".join(json.dumps(r) + "\n" for r in rows))


@_storage_call
def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Reads one parquet file, or every ``*.parquet`` file under a folder, into one table."""
    fs, path = pyarrow_filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            files = list_files(uri, ".parquet")
            if not files:
                raise FileNotFoundError(f"{uri}: folder holds no .parquet files")
            return pa.concat_tables([read_parquet(u, columns) for u in files], promote_options="default")
        with fs.open_input_file(path) as f:
            return pq.read_table(f, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{uri}: cannot read parquet ({e})") from e


def iter_parquet(uri: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Reads one parquet file, or every ``*.parquet`` file under a folder (in name order), one row
    group at a time: memory holds one row group, however large the data set.

    Args:
        columns: the columns to read; those a file does not have are left out (None: all).
    """
    fs, path = pyarrow_filesystem(uri)
    with translate_errors(uri):
        is_folder = fs.get_file_info(path).type == pafs.FileType.Directory
    files = list_files(uri, ".parquet") if is_folder else [uri]
    if is_folder and not files:
        raise FileNotFoundError(f"{uri}: folder holds no .parquet files")
    for file in files:
        fs, path = pyarrow_filesystem(file)
        try:
            with translate_errors(file), fs.open_input_file(path) as f:
                reader = pq.ParquetFile(f)
                names = reader.schema_arrow.names
                keep = None if columns is None else [c for c in columns if c in names]
                for i in range(reader.num_row_groups):
                    yield reader.read_row_group(i, columns=keep)
        except (pa.ArrowInvalid, OSError) as e:
            if isinstance(e, FileNotFoundError | StorageError):
                raise
            raise ValueError(f"{file}: cannot read parquet ({e})") from e


def write_parquet(uri: str, table: pa.Table) -> None:
    """Writes a table to one parquet file, atomically."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue())
