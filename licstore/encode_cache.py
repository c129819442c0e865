"""Content cache of encoded bitstreams: encoding an image twice costs a hash, not a network.

Why: ``datasets`` replays a recorded ``cast`` whenever a memory-mapped dataset is unpickled
(DataLoader workers with spawn, ``map(num_proc=...)``, ``concatenate_datasets``), and the
replay re-runs ``LICImage.cast_storage`` on the original images. Keyed by the SHA-256 of the
source image and the exact encoder settings (model name *and* weights hash, rate target,
format version), a replay finds every bitstream it is about to compute.

Two levels: a bounded in-process LRU and a directory shared by all processes
(``LICSTORE_CACHE_DIR``, default ``~/.cache/licstore/encoded``; entries are written to a
temporary name and renamed, so concurrent workers never read half a file). The directory is
pruned, oldest first, to ``LICSTORE_CACHE_MAX_BYTES`` (default 2 GiB; ``0`` disables it).
Entries are checked (magic and CRC32) when read; a damaged one is ignored and deleted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from . import container
from .errors import CorruptBitstreamError

MEMORY_MAX_BYTES = 256 << 20
DEFAULT_DISK_MAX_BYTES = 2 << 30
_PRUNE_EVERY = 64  # writes between size checks of the directory

_lock = threading.Lock()
_memory: OrderedDict[str, bytes] = OrderedDict()
_memory_bytes = 0
_writes = 0
stats = {"hits": 0, "misses": 0, "encoded": 0}  # ``encoded``: images that ran the network


def cache_dir() -> Path | None:
    """The shared directory, or None when disabled."""
    if disk_max_bytes() == 0:
        return None
    root = os.environ.get("LICSTORE_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "licstore" / "encoded"


def disk_max_bytes() -> int:
    value = os.environ.get("LICSTORE_CACHE_MAX_BYTES")
    return DEFAULT_DISK_MAX_BYTES if value in (None, "") else int(value)


def key(source_digest: str, settings: str) -> str:
    """Cache key of one source image under one encoder setting."""
    return hashlib.sha256(f"{source_digest}|{settings}".encode()).hexdigest()


def _path(root: Path, k: str) -> Path:
    return root / k[:2] / f"{k}.lic"


def get(k: str) -> bytes | None:
    global _memory_bytes
    with _lock:
        data = _memory.get(k)
        if data is not None:
            _memory.move_to_end(k)
            stats["hits"] += 1
            return data
    root = cache_dir()
    if root is not None:
        path = _path(root, k)
        try:
            data = path.read_bytes()
            container.unpack(data)
        except FileNotFoundError:
            data = None
        except (OSError, CorruptBitstreamError):
            path.unlink(missing_ok=True)
            data = None
        if data is not None:
            _remember(k, data)
            with _lock:
                stats["hits"] += 1
            return data
    with _lock:
        stats["misses"] += 1
    return None


def put(k: str, data: bytes) -> None:
    global _writes
    _remember(k, data)
    root = cache_dir()
    if root is None:
        return
    path = _path(root, k)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        return  # a cache that cannot be written is only a slower cache
    with _lock:
        _writes += 1
        due = _writes % _PRUNE_EVERY == 0
    if due:
        prune(root)


def _remember(k: str, data: bytes) -> None:
    global _memory_bytes
    with _lock:
        if k in _memory:
            return
        _memory[k] = data
        _memory_bytes += len(data)
        while _memory_bytes > MEMORY_MAX_BYTES and _memory:
            _, old = _memory.popitem(last=False)
            _memory_bytes -= len(old)


def prune(root: Path | None = None, max_bytes: int | None = None) -> None:
    """Delete the oldest entries until the directory fits its size limit."""
    root = root or cache_dir()
    if root is None or not root.is_dir():
        return
    limit = disk_max_bytes() if max_bytes is None else max_bytes
    entries = []
    for p in root.glob("*/*.lic"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        p.unlink(missing_ok=True)
        total -= size


def clear_memory() -> None:
    """Forget the in-process level (tests use it to force the shared directory)."""
    global _memory_bytes
    with _lock:
        _memory.clear()
        _memory_bytes = 0
