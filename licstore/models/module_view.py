"""Views of a module tree with some submodules rewritten and every parameter shared.

A fast form of a network (e.g. the bf16 synthesis) must never go stale when the original's
weights change: a view replaces submodules by wrappers that read the originals' parameters,
and leaves the original tree as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def view_with(module: nn.Module, rewrite: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with each submodule for which ``rewrite`` returns a module replaced by it
    (a rewritten submodule's children are not visited); unchanged subtrees are shared, so
    a tree with nothing to rewrite comes back as itself."""
    new = rewrite(module)
    if new is not None:
        return new
    children = {name: view_with(child, rewrite) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    view = copy.copy(module)
    view.__dict__["_modules"] = dict(children)
    return view
