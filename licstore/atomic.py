"""Atomic writes on any fsspec filesystem: write beside the target, then rename onto it.

A reader (or a rerun after a crash) sees either the old file or the complete new one, never
a half-written one. The temporary file sits in the target's folder, so the rename stays on
one filesystem, and starts with a dot, so globs such as ``*.parquet`` do not pick it up.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
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
