"""The fast inference forms of the analysis and synthesis transforms: the same functions,
rewritten.

GDNs run in cache-sized row blocks (:mod:`.blocked_gdn`); in the bf16 synthesis, narrow
transposed convolutions also run as convolution + pixel shuffle (:mod:`.subpixel_deconv`).
Each form is a view: it shares every parameter with the model, so it never goes stale.
"""

from __future__ import annotations

from torch import nn

from . import blocked_gdn, subpixel_deconv
from .module_view import view_with


def _blocked_gdn(m: nn.Module) -> nn.Module | None:
    return blocked_gdn.BlockedGDN(m) if blocked_gdn.convertible(m) else None


def _synthesis_rewrite(m: nn.Module) -> nn.Module | None:
    if subpixel_deconv.convertible(m) and subpixel_deconv.narrow(m):
        return subpixel_deconv.SubpixelDeconv(m)
    return _blocked_gdn(m)


def fast_synthesis(g_s: nn.Module) -> nn.Module:
    """A view of ``g_s`` for bf16 inference (see the module docstring)."""
    return view_with(g_s, _synthesis_rewrite)


def fast_analysis(g_a: nn.Module) -> nn.Module:
    """A view of ``g_a`` for inference, in fp32 like ``g_a`` itself: only its GDNs change."""
    return view_with(g_a, _blocked_gdn)
