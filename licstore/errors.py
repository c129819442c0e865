"""Typed errors: every failure licstore reports is a ``LICError``."""


class LICError(Exception):
    """Base class of all licstore errors."""


class CorruptBitstreamError(LICError, ValueError):
    """The data is not a valid licstore bitstream (truncated, altered, or not one at all)."""


class UnsupportedImageError(LICError, ValueError):
    """The input cannot be encoded: not an image, or a mode/size licstore refuses."""


class ModelNotFoundError(LICError, LookupError):
    """No model with that name in the registry (or its weights are not installed)."""


class WeightsIntegrityError(LICError):
    """A weights file does not match its recorded SHA-256, or is malformed."""


class RateTargetError(LICError, ValueError):
    """Invalid rate target: more than one of bpp/quality/psnr, or out of range."""


class UnsupportedBitstreamError(CorruptBitstreamError):
    """A well-formed bitstream that needs a newer licstore (newer version, unknown code or flag)."""


class EffortError(LICError, ValueError):
    """``effort=`` outside 0..MAX_EFFORT, or > 0 with a model that cannot refine its latents."""


class StorageError(LICError, OSError):
    """Reading or writing a URL failed in the storage layer (network, credentials, bucket); the
    message starts with the URL, the filesystem's own error is the ``__cause__``."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The file, object or bucket a URL names does not exist."""


class StoragePermissionError(StorageError, PermissionError):
    """The storage refused the credentials (wrong or missing keys, no permission)."""


class DecodeLimitError(CorruptBitstreamError):
    """A bitstream (or one of its layers) declares an image larger than the decode limit.

    Raised from the header, before any pixel or model memory is allocated. A subclass of
    ``CorruptBitstreamError`` on purpose: a reader of untrusted rows that skips corrupt data
    skips these too. The message names the limit and how to raise it (``max_pixels=`` or
    ``LICSTORE_MAX_PIXELS``).
    """


class DecodeMemoryError(LICError, MemoryError):
    """Decoding ran out of memory (the synthesis or a layer decoder could not allocate).

    Also a ``MemoryError``, so handlers of plain out-of-memory errors keep working.
    """


def with_context(exc: LICError, where: str) -> LICError:
    """The same error class, its message prefixed with ``where`` (a row, an item, a path), so
    readers of many images say which one failed; raise it ``from exc``."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # an error class with another constructor: a plain LICError then
        return LICError(f"{where}: {exc}")
