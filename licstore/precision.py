"""Which precision the analysis and synthesis transforms run in: fp32, or bf16 where fast.

The entropy parameters are exact integers whatever runs the transforms, so the choice
changes pixels (synthesis) or a few latent symbols (analysis) by rounding, never whether a
bitstream decodes. Measured on Kodak, a bf16 analysis codes at the same rate-distortion
as fp32 (BENCHMARKS.md); the encoder spends most of its time there.
"""

from __future__ import annotations

import os

import torch

#: precision of the synthesis transform when decoding: "fp32", "bf16" or "auto"
#: ("auto" = bf16 where the hardware computes it natively, e.g. AMX / AVX-512 BF16)
DECODE_PRECISION = os.environ.get("LICSTORE_PRECISION", "auto")
#: precision of the analysis transform when encoding, as above
ENCODE_PRECISION = os.environ.get("LICSTORE_ENCODE_PRECISION", "auto")

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (CUDA, or a CPU with AMX / AVX-512 BF16).

    Elsewhere (e.g. an AVX2-only CPU) torch emulates bf16 and it is several times slower
    than fp32, so "auto" must not pick it there.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def use_bf16(
    precision: str | None, device: str | torch.device = "cpu", *, encode: bool = False
) -> bool:
    """Whether to run a transform in bf16 for ``precision`` (None: ``ENCODE_PRECISION`` for
    the analysis when ``encode``, else ``DECODE_PRECISION``)."""
    if precision is None:
        precision = ENCODE_PRECISION if encode else DECODE_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        return native_bf16(device)
    return precision == "bf16"
