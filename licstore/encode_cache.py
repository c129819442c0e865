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

Threat model of the shared directory. Anyone who can write ``LICSTORE_CACHE_DIR`` (another
user of a shared or group-writable folder, a compromised job) could otherwise substitute
bitstreams: entries are named by their key, and the key is computable from the image. So an
entry is authenticated: it records its key and an HMAC-SHA256 of key and bitstream under a
per-user secret (32 random bytes in ``LICSTORE_CACHE_SECRET_FILE``, default
``$XDG_CONFIG_HOME/licstore/cache-secret`` or ``~/.config/licstore/cache-secret``, created
with mode 0600 outside the cache folder). An entry is used only if its key and MAC match and
it parses as a bitstream (magic, CRC32); anything else -- substituted, copied from another
key, altered, truncated, written by another user -- is a miss: the image is encoded again
and the entry rewritten. Entries are written to a private ``O_EXCL`` temporary file (mode
0600) beside them and renamed. Not covered: whoever can read the secret (the same user,
root) can forge entries, but could change licstore itself too; and deleting or filling the
cache costs only re-encoding. The disk level is off (memory only, with a warning) if the
secret file is readable by others or owned by another user. Processes share entries when
they share the secret: those of one user on one machine, or machines where the same secret
file is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from . import container
from .atomic import temporary_name, write_file
from .errors import LICError

MEMORY_MAX_BYTES = 256 << 20
DEFAULT_DISK_MAX_BYTES = 2 << 30
_PRUNE_EVERY = 64  # writes between size checks of the directory
ENTRY_MAGIC = b"LICCACHE1\n"  # then the key (32 bytes), the HMAC (32 bytes), the bitstream
_HEADER = len(ENTRY_MAGIC) + 64
_secrets: dict[str, bytes | None] = {}  # secret file -> its secret (None: not usable)

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


def secret_path() -> Path:
    """The per-user secret that authenticates entries (see the module docstring)."""
    path = os.environ.get("LICSTORE_CACHE_SECRET_FILE")
    if path:
        return Path(path)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "licstore" / "cache-secret"


def _secret() -> bytes | None:
    """This user's secret, created on first use; None (disk level off) if it is not private."""
    path = secret_path()
    with _lock:
        if str(path) in _secrets:
            return _secrets[str(path)]
    try:
        secret = _read_secret(path)
    except FileNotFoundError:
        try:
            secret = _create_secret(path)
        except OSError as e:
            secret = _unusable(path, f"cannot create it: {e}")
    except OSError as e:  # PermissionError: not private to this user
        secret = _unusable(path, str(e))
    with _lock:
        return _secrets.setdefault(str(path), secret)


def _read_secret(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077):
            raise PermissionError(f"{path} must belong to this user and have mode 0600")
        secret = f.read()
    if len(secret) < 32:
        raise PermissionError(f"{path} holds {len(secret)} bytes, not a 32-byte secret")
    return secret


def _create_secret(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / temporary_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # never replaces: if another process was first, use its secret
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem
            if not os.path.lexists(path):
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_secret(path)


def _unusable(path: Path, why: str) -> None:
    warnings.warn(
        f"licstore's encode cache keeps to memory: its secret {path} is unusable ({why}); "
        "remove it to have a new one created, or set LICSTORE_CACHE_SECRET_FILE",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _mac(secret: bytes, key_bytes: bytes, data: bytes) -> bytes:
    return hmac.new(secret, ENTRY_MAGIC + key_bytes + data, hashlib.sha256).digest()


def _entry(secret: bytes, k: str, data: bytes) -> bytes:
    key_bytes = bytes.fromhex(k)
    return ENTRY_MAGIC + key_bytes + _mac(secret, key_bytes, data) + data


def _verified(secret: bytes, k: str, entry: bytes) -> bytes | None:
    """The bitstream of an entry written for key ``k`` with this secret; None otherwise."""
    key_bytes = bytes.fromhex(k)
    if len(entry) <= _HEADER or not entry.startswith(ENTRY_MAGIC):
        return None
    stored_key = entry[len(ENTRY_MAGIC) : len(ENTRY_MAGIC) + 32]
    tag, data = entry[len(ENTRY_MAGIC) + 32 : _HEADER], entry[_HEADER:]
    if stored_key != key_bytes or not hmac.compare_digest(tag, _mac(secret, key_bytes, data)):
        return None
    try:
        container.unpack(data)
    except LICError:
        return None
    return data


def _read_entry(path: Path) -> bytes | None:
    """An entry's bytes; None for a file too big to be one (someone filled the folder)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > MEMORY_MAX_BYTES:
            return None
        return f.read()


def get(k: str) -> bytes | None:
    global _memory_bytes
    with _lock:
        data = _memory.get(k)
        if data is not None:
            _memory.move_to_end(k)
            stats["hits"] += 1
            return data
    root = cache_dir()
    secret = _secret() if root is not None else None
    if secret is not None:
        try:  # an entry that does not verify is a miss; put() rewrites it
            entry = _read_entry(_path(root, k))
            data = _verified(secret, k, entry) if entry is not None else None
        except OSError:
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
    secret = _secret() if root is not None else None
    if secret is None:
        return
    try:
        write_file(_path(root, k), _entry(secret, k, data), mode=0o600)
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
