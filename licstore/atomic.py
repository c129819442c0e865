"""Atomic writes on any fsspec filesystem: write beside the target, then rename onto it.

A reader (or a rerun after a crash) sees either the old file or the complete new one, never
a half-written one. The temporary file sits in the target's folder, so the rename stays on
one filesystem, and starts with a dot, so globs such as ``*.parquet`` do not pick it up.

Permissions: a published file has the permissions a plain ``open(path, "wb")`` would give it
(``0o666`` less the process umask), never the ``0o600`` of ``tempfile.mkstemp``. fsspec's local
files are opened with ``open`` and moved, so :func:`atomic_write` keeps them;
:func:`write_file` does the same for local files written without fsspec.

Object stores (S3, GCS, Azure: :data:`OBJECT_STORE_PROTOCOLS`) have no rename: fsspec's ``mv``
is a copy and a delete. There an object becomes visible only when its upload completes, so
:func:`atomic_open` writes the final key itself with ``autocommit=False``: parts upload as the
writer goes, nothing is visible until the final commit (the ``CompleteMultipartUpload``, or
one ``PUT`` of a small object), and an error aborts the upload (``discard``), so the key keeps
its old object or stays absent. A writer killed before its commit leaves an unfinished
multipart upload, invisible to readers and listings; :func:`abort_uploads` removes those
(as does a bucket lifecycle rule ``AbortIncompleteMultipartUpload``). :func:`atomic_put`
stores a whole ``bytes`` value the same way (one ``PUT`` on object stores), and
:func:`makedirs` creates folders only where folders exist (never a bucket).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_name(path: str, suffix: str = ".tmp") -> str:
    """``dir/.name.<random>.tmp`` for ``dir/name``: unique per call, hidden from globs."""
    head, _, tail = path.rstrip("/").rpartition("/")
    if not tail:
        raise ValueError(f"not a file path: {path!r}")
    name = f".{tail}.{uuid.uuid4().hex[:12]}{suffix}"
    return f"{head}/{name}" if head or path.startswith("/") else name


def temporary_glob(path: str, suffix: str = ".tmp") -> str:
    """The glob matching every :func:`temporary_name` of ``path`` (stale ones after a crash)."""
    head, _, tail = path.rstrip("/").rpartition("/")
    return f"{head}/.{tail}.*{suffix}" if head or path.startswith("/") else f".{tail}.*{suffix}"


def remove_quietly(fs: Any, path: str) -> None:
    """Remove ``path`` if it is there; cleanup must never hide the error that caused it."""
    with contextlib.suppress(Exception):
        if fs.exists(path):
            fs.rm(path)


@contextlib.contextmanager
def atomic_write(fs: Any, path: str) -> Iterator[str]:
    """Yield a temporary path to write; it is renamed onto ``path`` when the block ends.

    If the block raises, the temporary file is removed and ``path`` is untouched. A block
    that removes the temporary file itself publishes nothing (a deliberate abort).
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        if fs.exists(tmp):
            fs.mv(tmp, path)
    except BaseException:
        remove_quietly(fs, tmp)
        raise


def write_file(
    path: str | os.PathLike, data: bytes, *, replace: bool = True, mode: int = 0o666
) -> None:
    """Write a local file atomically, with the umask's permissions.

    The temporary file is created beside ``path`` with ``O_EXCL`` (never through a link an
    attacker left there) and ``mode`` (default ``0o666``; ``0o600`` for private files), which
    the kernel masks with the umask. With ``replace=False`` an existing ``path`` is never
    replaced: ``FileExistsError``, also when another process creates it while this one writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temporary_name(path.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` only if ``path`` does not exist (atomic where links are)."""
    try:
        os.link(tmp, path)  # fails with EEXIST if path exists, whatever it is
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        if os.path.lexists(path):  # no hard links here (FAT, some network mounts)
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


# -- object stores --------------------------------------------------------------------------

#: protocols whose writes publish an object whole when its upload completes (no rename)
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})


def is_object_store(fs: Any) -> bool:
    """Whether ``fs`` (an fsspec filesystem) is an object store (see the module docstring)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in OBJECT_STORE_PROTOCOLS for p in protocols)


@contextlib.contextmanager
def atomic_open(fs: Any, path: str, **kwargs: Any) -> Iterator[Any]:
    """Yield ``path`` opened for binary writing; it appears, complete, when the block ends.

    Object stores: the key itself, uploaded with ``autocommit=False`` and committed at the end
    (a failure discards the upload). Other filesystems: a temporary file beside ``path``
    renamed onto it (:func:`atomic_write`). If the block raises, ``path`` is untouched.
    ``kwargs`` go to the filesystem's ``open``.
    """
    if not is_object_store(fs):
        with atomic_write(fs, path) as tmp, fs.open(tmp, "wb", **kwargs) as f:
            yield f
        return
    # fs._open, not fs.open: an uncommitted file must not join the filesystem's transaction
    f = fs._open(fs._strip_protocol(path), "wb", autocommit=False, **kwargs)
    try:
        yield f
        f.close()  # uploads the last part; nothing is visible yet
        f.commit()  # the object appears whole
    except BaseException:
        with contextlib.suppress(Exception):
            f.discard()  # aborts the multipart upload
        f.closed = True  # discarded: closing (also by the garbage collector) must not commit
        raise


def atomic_put(fs: Any, path: str, data: bytes) -> None:
    """Store ``data`` at ``path`` atomically: one ``PUT`` on object stores, else a rename."""
    if is_object_store(fs):
        fs.pipe_file(path, data)
        return
    with atomic_write(fs, path) as tmp:
        fs.pipe_file(tmp, data)


def makedirs(fs: Any, path: str) -> None:
    """Create folder ``path`` (and parents) where folders exist. Object stores have none, and
    fsspec's ``makedirs`` there would create a missing bucket: a misspelt bucket must fail."""
    if path and not is_object_store(fs):
        fs.makedirs(path, exist_ok=True)


def abort_uploads(fs: Any, paths: list[str]) -> int:
    """Abort unfinished multipart uploads to ``paths`` (left by writers killed before their
    commit: invisible, but stored). Needs a filesystem that lists uploads (s3fs); elsewhere
    nothing to do. Returns how many were aborted."""
    if not (is_object_store(fs) and hasattr(fs, "list_multipart_uploads")):
        return 0
    keys: dict[str, set[str]] = {}
    for p in paths:
        bucket, key, _ = fs.split_path(p)
        keys.setdefault(bucket, set()).add(key)
    aborted = 0
    for bucket, wanted in keys.items():
        for upload in fs.list_multipart_uploads(bucket):
            if upload.get("Key") in wanted:
                fs.abort_mpu(bucket, upload["Key"], upload["UploadId"])
                aborted += 1
    return aborted
