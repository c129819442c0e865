"""fsspec protocol ``lic``: store images as licstore bitstreams on any filesystem.

``lic`` wraps another fsspec filesystem (the *target*) the way fsspec's caching filesystems do,
so a URL chains it in front of any storage::

    with fsspec.open("lic::s3://bucket/cat.png", "wb", lic={"bpp": 0.3}) as f:
        f.write(png_bytes)                  # s3://bucket/cat.png now holds a LIC bitstream
    PIL.Image.open(fsspec.open("lic::s3://bucket/cat.png").open())   # reads back a PNG

The protocol is registered through the ``fsspec.specs`` entry point, so these URLs work after
``pip install licstore`` without importing licstore. Chaining needs fsspec >= 2025.10
(``ChainedFileSystem``, which hands the target path to the wrapper).

Reading (``open(..., "rb")``, ``cat_file``, ``get``): target bytes that start with the LIC
magic are decoded and re-encoded in the format the *requested* name asks for, so consumers
that sniff content or trust extensions both work:

=================  ==========================================================================
name ends in       returned bytes
=================  ==========================================================================
``.png``           PNG (zlib level 1: the PNG is a transport format here). PA becomes RGBA.
``.jpg``/``.jpeg`` JPEG quality 95. JPEG has no alpha or palette: LA -> L, RGBA/P/PA -> RGB
                   (alpha dropped as ``Image.convert`` drops it, not composited), 1 -> L.
``.webp``          lossless WebP (``exact``): RGBA if the image has alpha, else RGB.
``.tif``/``.tiff`` uncompressed TIFF, every licstore mode kept.
``.lic``           the stored bitstream, unchanged (also for any name with ``raw=True``).
anything else      PNG.
=================  ==========================================================================

Files that are not LIC bitstreams pass through unchanged (mixed folders work). A file that
starts with the magic but does not decode raises ``CorruptBitstreamError`` naming the URL,
before any byte is returned.

Writing (``open(..., "wb")``, ``pipe_file``, ``put``): the bytes are buffered; on close an
image PIL can read is encoded with ``licstore.encode`` (options ``bpp``/``quality``/``psnr``/
``model``), a valid LIC bitstream is stored as is, anything else raises
``UnsupportedImageError`` (a corrupt bitstream ``CorruptBitstreamError``) and nothing is
written. The encoded bytes go to a hidden temporary name next to the path and are moved into
place (on object stores, which have no rename: one PUT of the key, which appears whole), so a
failed write never leaves a partial file and never clobbers the old one. Storage failures
raise ``licstore.errors.StorageError`` naming the URL. Leaving
a ``with f:`` block by an exception discards the buffer (but ``fsspec.open(...)``'s own
context manager closes, i.e. stores, whatever was written).

Storage-level operations delegate to the target and see stored bytes: ``ls``, ``info``
(``size`` is the stored size, not the size ``open`` returns), ``find``, ``glob``, ``exists``,
``mkdir``, ``rm``, ``cp_file``/``copy`` and ``mv`` (a copied LIC file stays LIC; copying
``a.png`` to ``b.jpg`` makes ``b.jpg`` read as JPEG).

Hugging Face ``datasets`` (5.2): ``Image()`` opens non-local paths with ``xopen``, which
treats the first ``::`` hop as a local path unless it has a scheme, so ``lic::memory://a.png``
fails there (it opens a local file called ``lic``). Spell the hop with a scheme and an
empty path, ``lic://::memory://a.png``; fsspec then chains exactly as for ``lic::``. For
local files write ``lic://::/data/cat.png``: datasets rewrites ``file:///data`` to the relative
``file://data``. Encoder options come from ``DownloadConfig(storage_options={"lic": {...}})``.

This module imports neither torch nor PIL: the codec loads on the first read or write of a LIC
file. (While ``licstore/__init__.py`` imports the codec eagerly, importing the package, and so
this module, still loads torch.)
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, ClassVar

from fsspec import filesystem
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from licstore.atomic import is_object_store, temporary_name
from licstore.container import MAGIC
from licstore.errors import LICError
from licstore.ratecontrol import RateTarget, check_enhancement
from licstore.storage import storage_errors

__all__ = ["LICFileSystem", "output_format"]

_RATE_OPTIONS = ("bpp", "quality", "psnr")
_CODEC_OPTIONS = (*_RATE_OPTIONS, "model", "residual", "lossless", "device", "raw")
_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".lic": "LIC",
}


def output_format(path: str) -> str:
    """The format reads of ``path`` return: PNG, JPEG, WEBP, TIFF or LIC (raw bitstream)."""
    return _FORMATS.get(posixpath.splitext(path)[1].lower(), "PNG")


def _with_url(exc: LICError, url: str) -> LICError:
    """Same error class, message prefixed with the URL (callers see which file failed)."""
    try:
        return type(exc)(f"{url}: {exc}")
    except TypeError:  # an error class with a different constructor: keep it as it is
        return exc


def _save(image: Any, fmt: str) -> bytes:
    """Encode a decoded PIL image as ``fmt``, converting only modes the format cannot hold."""
    mode = image.mode
    kwargs: dict[str, Any] = {}
    if fmt == "PNG":
        kwargs["compress_level"] = 1
        if mode == "PA":
            image = image.convert("RGBA")
    elif fmt == "JPEG":
        kwargs["quality"] = 95
        if mode in ("1", "LA"):
            image = image.convert("L")
        elif mode not in ("L", "RGB"):
            image = image.convert("RGB")
    elif fmt == "WEBP":
        kwargs.update(lossless=True, exact=True)
        has_alpha = mode in ("LA", "PA", "RGBA") or "transparency" in image.info
        if mode not in ("RGB", "RGBA") or (mode == "RGB" and has_alpha):
            image = image.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


class _DecodedFile(io.BytesIO):
    """Read-only in-memory file with the attributes fsspec callers look for."""

    def __init__(self, fs: LICFileSystem, path: str, data: bytes) -> None:
        super().__init__(data)
        self.fs = fs
        self.path = path
        self.mode = "rb"
        self.size = len(data)

    def writable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation("file opened for reading")


class _EncodingWriteFile(io.BytesIO):
    """Buffers written bytes; ``close`` encodes them and stores the bitstream atomically.

    With ``autocommit=False`` (inside ``fs.transaction``) ``close`` stores to a temporary
    name and ``commit``/``discard`` move it into place or delete it.
    """

    def __init__(
        self,
        fs: LICFileSystem,
        path: str,
        options: dict[str, Any],
        autocommit: bool,
        target_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.mode = "wb"
        self.autocommit = autocommit
        self._options = options
        self._target_kwargs = target_kwargs
        self._pending: str | None = None

    def readable(self) -> bool:
        return False

    def read(self, *args: Any) -> bytes:
        raise io.UnsupportedOperation("file opened for writing")

    def close(self) -> None:
        if self.closed:
            return
        data = self.getvalue()
        super().close()  # closed even if encoding fails: a retry would store the same bytes
        self._pending = self.fs._store(
            self.path, data, self._options, self._target_kwargs, commit=self.autocommit
        )

    def commit(self) -> None:
        if self._pending is not None:
            self.fs.fs.mv(self._pending, self.path)
            self._pending = None

    def discard(self) -> None:
        if not self.closed:
            super().close()
        if self._pending is not None:
            self.fs._remove_quietly(self._pending)
            self._pending = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()  # an interrupted write stores nothing
        else:
            self.close()


class LICFileSystem(ChainedFileSystem):
    """Images on a target filesystem, stored as licstore bitstreams.

    ``target_protocol``/``target_options`` or ``fs=`` name the target (default: local files).
    ``bpp``/``quality``/``psnr``/``model``/``residual``/``lossless``/``device``: encoder
    options, as in ``licstore.encode`` (at most one rate target; none means ``quality=4``).
    ``raw=True``: reads return stored bitstreams instead of decoding them.
    Every option can also be passed to ``open``/``cat_file``/``pipe_file`` for one call; a
    rate target given there replaces the filesystem's.
    """

    protocol: ClassVar[str] = "lic"
    _strip_tokenize_options = ("fo",)

    def __init__(
        self,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: AbstractFileSystem | None = None,
        *,
        bpp: float | None = None,
        quality: int | None = None,
        psnr: float | None = None,
        model: str | None = None,
        residual: str | None = None,
        lossless: bool = False,
        device: str | None = None,
        raw: bool = False,
        fo: str | None = None,  # the chained target path; paths come with each call instead
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fs is not None and (target_protocol is not None or target_options):
            raise ValueError("give either fs= or target_protocol/target_options, not both")
        RateTarget.from_kwargs(bpp, quality, psnr)  # RateTargetError now, not at first write
        check_enhancement(residual, lossless)
        self.fs = (
            fs
            if fs is not None
            else filesystem(target_protocol or "file", **(target_options or {}))
        )
        self.target_protocol = (
            self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        )
        self.options: dict[str, Any] = {
            "bpp": bpp,
            "quality": quality,
            "psnr": psnr,
            "model": model,
            "residual": residual,
            "lossless": lossless,
            "device": device,
            "raw": bool(raw),
        }

        def _strip_protocol(path: Any) -> Any:
            # per instance (as fsspec's cachers do): the target decides what a path looks like
            if isinstance(path, (list, tuple)):
                return [_strip_protocol(p) for p in path]
            return self.fs._strip_protocol(type(self)._strip_protocol(path))

        self._strip_protocol = _strip_protocol  # type: ignore[method-assign]

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:  # type: ignore[override]
        """Remove only ``lic::``/``lic://``; the instance version then asks the target."""
        if isinstance(path, (list, tuple)):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in ("lic::", "lic://"):
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path

    def unstrip_protocol(self, name: str) -> str:
        """Full chained URL of a path, e.g. ``lic::memory:///a/b.png``."""
        return "lic::" + self.fs.unstrip_protocol(name)

    # -- options -----------------------------------------------------------------------------

    def _split_options(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per-call codec options merged over the filesystem's; the rest go to the target."""
        call = {k: kwargs.pop(k) for k in _CODEC_OPTIONS if k in kwargs}
        options = dict(self.options)
        if any(call.get(k) is not None for k in _RATE_OPTIONS):
            options.update(dict.fromkeys(_RATE_OPTIONS))
        options.update({k: v for k, v in call.items() if v is not None})
        RateTarget.from_kwargs(options["bpp"], options["quality"], options["psnr"])
        check_enhancement(options["residual"], options["lossless"])
        return options, kwargs

    # -- reading -----------------------------------------------------------------------------

    def _present(self, path: str, data: bytes, options: dict[str, Any]) -> bytes:
        """The bytes a read returns for stored ``data``: decoded LIC, else ``data`` itself."""
        fmt = output_format(path)
        if options["raw"] or fmt == "LIC" or data[: len(MAGIC)] != MAGIC:
            return data
        from licstore import codec

        try:
            image = codec.decode(data, device=options["device"])
        except LICError as exc:
            raise _with_url(exc, self.unstrip_protocol(path)) from exc
        return _save(image, fmt)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        path = self._strip_protocol(path)
        options, kwargs = self._split_options(kwargs)
        if mode in ("wb", "xb"):
            if mode == "xb" and self.fs.exists(path):
                raise FileExistsError(path)
            return _EncodingWriteFile(self, path, options, autocommit, kwargs)
        if mode != "rb":
            raise ValueError(
                f"lic:// files open with 'rb', 'wb' or 'xb', not {mode!r}: "
                "a bitstream cannot be appended to or edited in place"
            )
        with storage_errors(self.unstrip_protocol(path)):
            f = self.fs.open(
                path, "rb", block_size=block_size, cache_options=cache_options, **kwargs
            )
            try:
                head = f.read(len(MAGIC))
                if options["raw"] or output_format(path) == "LIC" or head != MAGIC:
                    f.seek(0)  # pass through: the target's own file, streaming and seekable
                    return f
                data = head + f.read()
            except BaseException:
                f.close()
                raise
            f.close()
        return _DecodedFile(self, path, self._present(path, data, options))

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Same bytes as ``open(path).read()``, sliced like fsspec's ``cat_file``."""
        path = self._strip_protocol(path)
        options, kwargs = self._split_options(kwargs)
        if start is None and end is None:
            return self._present(path, self.fs.cat_file(path, **kwargs), options)
        if options["raw"] or output_format(path) == "LIC":
            return self.fs.cat_file(path, start, end, **kwargs)
        if self.fs.cat_file(path, 0, len(MAGIC), **kwargs) != MAGIC:
            return self.fs.cat_file(path, start, end, **kwargs)
        return self._present(path, self.fs.cat_file(path, **kwargs), options)[start:end]

    # -- writing -----------------------------------------------------------------------------

    def _bitstream(self, path: str, data: bytes, options: dict[str, Any]) -> bytes:
        """What gets stored for written ``data``; raises before anything touches the target."""
        from licstore import codec

        try:
            if data[: len(MAGIC)] == MAGIC:
                codec.info(data)  # validates (pure Python, no network run)
                return data
            return codec.encode(
                data,
                bpp=options["bpp"],
                quality=options["quality"],
                psnr=options["psnr"],
                model=options["model"],
                residual=options["residual"],
                lossless=options["lossless"],
                device=options["device"],
            )
        except LICError as exc:
            raise _with_url(exc, self.unstrip_protocol(path)) from exc

    def _remove_quietly(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except Exception:
            pass  # never written, or already gone: nothing to clean

    def _store(
        self,
        path: str,
        data: bytes,
        options: dict[str, Any],
        target_kwargs: dict[str, Any],
        commit: bool = True,
    ) -> str | None:
        """Encode, write to a temporary name, move into place; return the name if uncommitted.
        On an object store a commit is one PUT of the key: the object appears whole."""
        stored = self._bitstream(path, bytes(data), options)
        if commit and is_object_store(self.fs):
            with storage_errors(self.unstrip_protocol(path)):
                self.fs.pipe_file(path, stored, **target_kwargs)
            return None
        tmp = temporary_name(path, suffix=".lic-tmp")
        try:
            with self.fs.open(tmp, "wb", **target_kwargs) as f:
                f.write(stored)
            if commit:
                self.fs.mv(tmp, path)
        except BaseException:
            self._remove_quietly(tmp)
            raise
        return None if commit else tmp

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Store ``value`` (image or bitstream bytes) like writing it through ``open``."""
        path = self._strip_protocol(path)
        if mode == "create" and self.fs.exists(path):
            raise FileExistsError(path)
        options, kwargs = self._split_options(kwargs)
        self._store(path, value, options, kwargs)

    # -- storage operations: the target's, on stored bytes --------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        return self.fs.ls(self._strip_protocol(path), detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The target's info: ``size`` is the stored (bitstream) size."""
        return self.fs.info(self._strip_protocol(path), **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self.fs.exists(self._strip_protocol(path), **kwargs)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(self._strip_protocol(path))

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(self._strip_protocol(path))

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        return self.fs.find(
            self._strip_protocol(path),
            maxdepth=maxdepth,
            withdirs=withdirs,
            detail=detail,
            **kwargs,
        )

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        return self.fs.glob(self._strip_protocol(path), maxdepth=maxdepth, **kwargs)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if is_object_store(self.fs):
            return  # no folders to make; fsspec.open's auto_mkdir must not create a bucket
        self.fs.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._strip_protocol(path))

    def rm_file(self, path: str) -> None:
        self.fs.rm_file(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self.fs.rm(self._strip_protocol(path), recursive=recursive, maxdepth=maxdepth)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copies stored bytes: a LIC file stays LIC, whatever the new name."""
        self.fs.cp_file(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)

    def copy(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        on_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.fs.copy(
            self._strip_protocol(path1),
            self._strip_protocol(path2),
            recursive=recursive,
            maxdepth=maxdepth,
            on_error=on_error,
            **kwargs,
        )

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.fs.mv(
            self._strip_protocol(path1),
            self._strip_protocol(path2),
            recursive=recursive,
            maxdepth=maxdepth,
            **kwargs,
        )

    def created(self, path: str) -> Any:
        return self.fs.created(self._strip_protocol(path))

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._strip_protocol(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(None if path is None else self._strip_protocol(path))
