"""Parameter-efficient stitching (ESTA-style): frozen anchors, shared LoRA, stitch-specific biases.

What trains, and why it is arranged so:

- **Anchors are frozen.** Their weights (and BatchNorm statistics) never change, so every anchor
  keeps exactly its pretrained accuracy, and a saved network need not hold them: it records how
  each anchor is rebuilt (its source) and holds only what was trained, like a PEFT adapter file.
- **Shared LoRA** (``W x + (alpha / r) · B A x``, ``B`` zero-initialised, ``A`` like a Linear's
  weight) on the Linear layers the anchor's family names as attention (and optionally MLP)
  layers (:meth:`snnet.Anchor.lora_targets`). One set per anchor, trained by every stitch that
  runs that anchor.
- **LoRA is active only on the part of a route after its first stitching layer.** An anchor run
  on its own, and the front anchor's blocks up to the first cut, run the original weights. So
  anchors lose nothing, and every stitch's prefix is still the front anchor's own computation:
  the prefix tree that evaluates all stitches in one pass keeps sharing it. :func:`adapting` is
  the switch; :func:`snnet.network.run_plan` sets it per step.
- **Stitch-specific biases.** With the LoRA shared, stitches would have to agree on one update;
  ESTA gives each stitch its own bias terms. Here every cut gets its own stitching layer
  (``layer_per_position``) whose weight (and low-rank update) is shared with the other cuts of
  its window, as in SN-Net, but whose bias is its own: a one-hop stitch's bias is its own, a
  multi-hop route has one per hop. The bias sits on the stitching layer's output, the one place
  a stitch's computation differs from every other's, so no shared module has to know which
  stitch runs, and the price is one vector per cut.

An exported stitch folds the LoRA into the weights of the anchors it runs after the cut
(:func:`merge_lora`): a plain timm model again, with the same output (a LoRA layer runs its
merged weight itself; only the kernels' float rounding may differ).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from snnet.layers import StitchingLayer

if TYPE_CHECKING:
    from snnet.adapters import Anchor, FeatureShape

Targets = Literal["attn", "attn+mlp"]
TARGETS: tuple[str, ...] = ("attn", "attn+mlp")

# Per thread (and per asyncio task): concurrent callers running different stitches never see
# each other's switch.
_ADAPTING: ContextVar[bool] = ContextVar("snnet_lora_adapting", default=False)


@contextmanager
def adapting(on: bool) -> Iterator[None]:
    """Inside the block, LoRA modules add their update (``on``) or run their base weights only;
    the previous state comes back on exit, even on error."""
    token = _ADAPTING.set(on)
    try:
        yield
    finally:
        _ADAPTING.reset(token)


@dataclass(frozen=True)
class AdapterConfig:
    """How an SN-Net's trainable parts are shaped; the defaults are SN-Net v1 (everything
    trains, full-rank stitching layers).

    Attributes:
        stitch_rank: rank ``r`` of the stitching layers' trained update (0: full-rank layers).
        stitch_alpha: its scale numerator (``alpha / r``); ``None``: ``r``.
        lora_rank: rank of the anchors' shared LoRA; > 0 freezes the anchors (PEFT mode).
        lora_alpha: the LoRA's scale numerator; ``None``: ``lora_rank``.
        lora_targets: ``"attn"`` or ``"attn+mlp"``: which of the anchors' layers get LoRA.
    """

    stitch_rank: int = 0
    stitch_alpha: float | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: str = "attn"

    def __post_init__(self) -> None:
        if self.stitch_rank < 0 or self.lora_rank < 0:
            raise ValueError("stitch_rank and lora_rank must be >= 0 (0: off)")
        if self.stitch_alpha is not None and not self.stitch_rank:
            raise ValueError("stitch_alpha scales the low-rank stitching layers: set stitch_rank")
        if self.lora_alpha is not None and not self.lora_rank:
            raise ValueError("lora_alpha scales the anchors' LoRA: set lora_rank")
        if self.lora_targets not in TARGETS:
            raise ValueError(
                f"lora_targets must be one of {', '.join(TARGETS)}, got {self.lora_targets!r}"
            )
        for name in ("stitch_alpha", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def frozen_anchors(self) -> bool:
        """PEFT mode: the anchors are frozen and saved by their sources only."""
        return self.lora_rank > 0

    @property
    def is_default(self) -> bool:
        return self == AdapterConfig()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdapterConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown adapter options {sorted(unknown)}: written by a newer snnet?"
            )
        return cls(**d)


# -- LoRA modules ---------------------------------------------------------------------------------
class _LoRA:
    """What LoRA adds to a Linear (or a 1×1 convolution): ``lora_A`` ``(r, in)``, ``lora_B``
    ``(out, r)`` and ``scaling``; the base weight and bias stay the very same parameters."""

    rank: int
    scaling: float
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def _delta(self) -> torch.Tensor:  # (out, in)
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / r) · B A`` in the base weight's shape: what the layer runs when adapting
        and what an export holds."""
        w = self.weight  # type: ignore[attr-defined]
        return w + self._delta().reshape(w.shape).to(w.dtype)


class LoRALinear(nn.Linear, _LoRA):
    """An ``nn.Linear`` with a LoRA update, added only inside ``adapting(True)``.

    The update runs folded into the weight (``W + (alpha / r) · B A``, one matmul), the very
    weight an export holds, so an exported stitch computes what the network computes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.merged_weight() if _ADAPTING.get() else self.weight
        return F.linear(x, weight, self.bias)


class LoRAConv1x1(nn.Conv2d, _LoRA):
    """A 1×1 ``nn.Conv2d`` (a Linear over channels) with a LoRA update, as :class:`LoRALinear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.merged_weight() if _ADAPTING.get() else self.weight
        return self._conv_forward(x, weight, self.bias)


def _with_lora(base: nn.Module, rank: int, alpha: float) -> nn.Module:
    """``base`` as its LoRA subclass: a shallow copy sharing its parameters, plus ``A`` and ``B``."""
    if type(base) is nn.Linear:
        cls, d_in, d_out = LoRALinear, base.in_features, base.out_features
    elif (
        type(base) is nn.Conv2d
        and base.kernel_size == (1, 1)
        and base.groups == 1
        and base.stride == (1, 1)
        and base.padding in ((0, 0), "valid")
        and base.dilation == (1, 1)
    ):
        cls, d_in, d_out = LoRAConv1x1, base.in_channels, base.out_channels
    else:
        raise TypeError(
            f"LoRA applies to nn.Linear and 1×1 nn.Conv2d layers, not {type(base).__name__}: "
            "fix the family's lora_targets"
        )
    new = copy.copy(base)
    new.__class__ = cls
    new._parameters = dict(base._parameters)  # the same Parameter objects: frozen, unchanged
    new._buffers, new._modules = dict(base._buffers), dict(base._modules)
    w = base.weight
    new.rank, new.scaling = rank, alpha / rank
    new.lora_A = nn.Parameter(torch.empty(rank, d_in, device=w.device, dtype=w.dtype))
    new.lora_B = nn.Parameter(torch.zeros(d_out, rank, device=w.device, dtype=w.dtype))
    nn.init.kaiming_uniform_(new.lora_A, a=5**0.5)
    return new


def add_lora(anchor: Anchor, *, rank: int, alpha: float | None, targets: str) -> list[str]:
    """Put LoRA on the layers ``anchor.lora_targets(targets)`` names; returns their paths.

    A family that names none (ResNet: no attention) gets none, with a warning: its stitches then
    adapt through the stitching layers and their biases only.
    """
    if any(is_lora(m) for m in anchor.modules()):
        raise ValueError(
            f"{anchor.name} already carries LoRA (another parameter-efficient SNNet was built on "
            "it): build fresh anchors for each network"
        )
    paths = list(anchor.lora_targets(targets))
    if not paths:
        warnings.warn(
            f"{anchor.name} ({anchor.family}) has no {targets} layers for LoRA: its weights stay "
            "frozen and only the stitching layers (with their stitch-specific biases) train",
            stacklevel=3,
        )
    for path in paths:
        parent, _, leaf = path.rpartition(".")
        owner = anchor.model.get_submodule(parent) if parent else anchor.model
        setattr(owner, leaf, _with_lora(getattr(owner, leaf), rank, float(alpha or rank)))
    anchor._runs = {}  # modules resolved before now may hold the replaced layers
    return paths


def is_lora(module: nn.Module) -> bool:
    return isinstance(module, _LoRA)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """``lora_A`` and ``lora_B`` of every LoRA layer in ``module``."""
    return [p for m in module.modules() if is_lora(m) for p in (m.lora_A, m.lora_B)]


@torch.no_grad()
def merge_lora(module: nn.Module, *, merge: bool) -> None:
    """In place: every LoRA layer in ``module`` becomes its plain base class again, with the
    update folded into its weight (``merge=True``) or dropped (``merge=False``: the original
    weights). Call it on a copy; used to export a stitch as a plain model."""
    for m in list(module.modules()):
        if not is_lora(m):
            continue
        if merge:
            m.weight = nn.Parameter(m.merged_weight(), requires_grad=m.weight.requires_grad)
        del m.lora_A, m.lora_B
        del m.rank, m.scaling
        m.__class__ = nn.Linear if isinstance(m, nn.Linear) else nn.Conv2d


def freeze_anchors(anchors: nn.Module) -> None:
    """PEFT mode: the anchors' own parameters stop training (the LoRA's stay trainable)."""
    lora = {id(p) for p in lora_parameters(anchors)}
    for p in anchors.parameters():
        p.requires_grad_(id(p) in lora)


def keep_statistics(anchors: nn.Module) -> None:
    """PEFT mode: the anchors' normalisation layers stay in eval mode, so training never moves
    their running statistics (an anchor's output stays bit-identical)."""
    for m in anchors.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training:
            m.eval()


def stitching_layer(
    src: FeatureShape, dst: FeatureShape, config: AdapterConfig, device: torch.device | str | None
) -> StitchingLayer:
    """A stitching layer of the rank ``config`` asks for."""
    return StitchingLayer(
        src, dst, rank=config.stitch_rank, alpha=config.stitch_alpha, device=device
    )
