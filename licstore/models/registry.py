"""Name -> model class registry (a decorator, as in CompressAI's ``register_model``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.nn as nn

from ..errors import ModelNotFoundError

T = TypeVar("T", bound=type[nn.Module])

MODEL_CLASSES: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make an architecture constructible by name."""

    def decorator(cls: T) -> T:
        if name in MODEL_CLASSES:
            raise ValueError(f"model architecture {name!r} registered twice")
        MODEL_CLASSES[name] = cls
        cls.architecture = name
        return cls

    return decorator


def model_class(name: str) -> type[nn.Module]:
    try:
        return MODEL_CLASSES[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown architecture {name!r}; known: {sorted(MODEL_CLASSES)}"
        ) from None
