"""The fast (bf16, CPU) form of a synthesis transform: the same function, rewritten.

Narrow transposed convolutions run as convolution + pixel shuffle
(:mod:`.subpixel_deconv`), inverse GDNs in cache-sized row blocks (:mod:`.blocked_gdn`).
The form is a view: it shares every parameter with the model, so it never goes stale.
"""

from __future__ import annotations

from torch import nn

from . import blocked_gdn, subpixel_deconv
from .module_view import view_with


def _rewrite(m: nn.Module) -> nn.Module | None:
    if subpixel_deconv.convertible(m) and subpixel_deconv.narrow(m):
        return subpixel_deconv.SubpixelDeconv(m)
    if blocked_gdn.convertible(m):
        return blocked_gdn.BlockedInverseGDN(m)
    return None


def fast_synthesis(g_s: nn.Module) -> nn.Module:
    """A view of ``g_s`` for fast inference (see the module docstring)."""
    return view_with(g_s, _rewrite)
