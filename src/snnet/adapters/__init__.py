"""Adapters: one per model family, each turning a model into ``stem -> blocks -> head``."""

from __future__ import annotations

from typing import Any

from torch import nn

from snnet.adapters.base import Anchor, FeatureShape, Layout, Stage
from snnet.adapters.levit import LevitAnchor
from snnet.adapters.resnet import ResNetAnchor
from snnet.adapters.sequential import SequentialAnchor
from snnet.adapters.swin import SwinAnchor
from snnet.adapters.vit import ViTAnchor

_ADAPTERS: list[type[Anchor]] = [ViTAnchor, SwinAnchor, ResNetAnchor, LevitAnchor]


def register_adapter(cls: type[Anchor]) -> type[Anchor]:
    """Teach snnet a new family; usable as a class decorator. Later registrations win."""
    if not (isinstance(cls, type) and issubclass(cls, Anchor)):
        raise TypeError(f"{cls!r} is not a subclass of snnet.Anchor")
    _ADAPTERS.insert(0, cls)
    return cls


def as_anchor(model: nn.Module | Anchor, **kwargs: Any) -> Anchor:
    """Wrap ``model`` with the adapter of its family (an ``Anchor`` passes through)."""
    if isinstance(model, Anchor):
        return model
    for cls in _ADAPTERS:
        if cls.matches(model):
            return cls(model, **kwargs)
    raise ValueError(
        f"snnet has no adapter for {type(model).__name__}. Wrap your parts with "
        "snnet.SequentialAnchor(stem, blocks, head, input_size=...), or subclass snnet.Anchor "
        "and register it with snnet.register_adapter (see the README, 'Your own family')"
    )


__all__ = [
    "Anchor",
    "FeatureShape",
    "Layout",
    "LevitAnchor",
    "ResNetAnchor",
    "SequentialAnchor",
    "Stage",
    "SwinAnchor",
    "ViTAnchor",
    "as_anchor",
    "register_adapter",
]
