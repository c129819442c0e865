"""Reaching fsspec URLs: filesystems with retries configured, errors that name the URL.

``url_to_fs`` is ``fsspec.core.url_to_fs`` with one default: on ``s3://`` URLs botocore retries
in its ``standard`` mode (:data:`S3_RETRIES`: transient network errors, 5xx and throttling
answers such as ``SlowDown``, exponential backoff with jitter) unless ``storage_options``
give their own ``config_kwargs["retries"]``. s3fs adds its own retry loop around every call
(5 tries; class attribute ``S3FileSystem.retries``).

``storage_errors(url)`` turns what a filesystem raises when storage fails (``OSError`` and its
subclasses, botocore/aiohttp errors) into :class:`~licstore.errors.StorageError`
(``StorageNotFoundError`` for a missing file or bucket, ``StoragePermissionError`` for refused
credentials), with the URL first in the message and the original error as ``__cause__``.
They stay ``OSError``/``FileNotFoundError``/``PermissionError``, so existing handlers work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .errors import LICError, StorageError, StorageNotFoundError, StoragePermissionError

__all__ = ["S3_RETRIES", "storage_error", "storage_errors", "url_to_fs", "with_retries"]

#: botocore retry settings for ``s3://`` URLs when ``storage_options`` set none
S3_RETRIES = {"mode": "standard", "max_attempts": 5}

# errors of these libraries are storage failures even when they are not OSErrors
_STORAGE_LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google")


def with_retries(url: str, storage_options: dict | None) -> dict:
    """``storage_options`` with :data:`S3_RETRIES` added for an ``s3://`` URL (a copy)."""
    options = dict(storage_options or {})
    if str(url).split("://", 1)[0] in ("s3", "s3a") and "://" in str(url):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(S3_RETRIES))
        options["config_kwargs"] = config
    return options


def url_to_fs(
    url: str | os.PathLike, storage_options: dict | None = None, filesystem: Any = None
) -> tuple[Any, str]:
    """(filesystem, path) for ``url``; ``filesystem`` given: it, with ``url`` as the path."""
    if filesystem is not None:
        if storage_options:
            raise ValueError("pass filesystem or storage_options, not both")
        return filesystem, os.fspath(url)
    from fsspec.core import url_to_fs as fsspec_url_to_fs

    url = os.fspath(url)
    with storage_errors(url):
        return fsspec_url_to_fs(url, **with_retries(url, storage_options))


def storage_error(exc: BaseException, url: str) -> StorageError | None:
    """The :class:`StorageError` for ``exc`` raised while reaching ``url``, or None when
    ``exc`` is not a storage failure (a licstore error, a bad argument, ...)."""
    if isinstance(exc, LICError):
        return None
    if isinstance(exc, FileNotFoundError):
        cls, hint = StorageNotFoundError, ""
    elif isinstance(exc, PermissionError):
        cls, hint = StoragePermissionError, " (check the credentials in storage_options)"
    elif isinstance(exc, OSError) or any(
        t.__module__.split(".")[0] in _STORAGE_LIBRARIES for t in type(exc).__mro__
    ):
        cls, hint = StorageError, ""
    else:
        return None
    reason = str(exc) or "no details"
    return cls(f"{url}: {type(exc).__name__}: {reason}{hint}")


@contextlib.contextmanager
def storage_errors(url: str | os.PathLike) -> Iterator[None]:
    """Re-raise storage failures inside the block as :class:`StorageError` naming ``url``."""
    try:
        yield
    except Exception as e:
        wrapped = storage_error(e, os.fspath(url))
        if wrapped is None:
            raise
        raise wrapped from e
