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
