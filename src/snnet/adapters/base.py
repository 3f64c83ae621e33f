"""The anchor contract: any model seen as ``stem -> blocks -> head``.

Family knowledge lives only in subclasses of :class:`Anchor` (one per family). The core asks an
anchor four things: run the stem, run a range of blocks, run the head, and describe its stages.
Every part is named by attribute paths into the wrapped model, so parameters can be counted per
part and a stitch can be exported by pruning the parts it does not run, generically.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

Layout = Literal["tokens", "nchw", "nhwc"]
"""How a feature tensor is laid out: ``(B, N, C)``, ``(B, C, H, W)`` or ``(B, H, W, C)``."""


@dataclass(frozen=True)
class Stage:
    """A run of blocks at one resolution; ``stitchable`` is the family's default for stitching."""

    blocks: range
    layout: Layout
    stitchable: bool = True


@dataclass(frozen=True)
class FeatureShape:
    """The shape of one image's features at a block boundary."""

    layout: Layout
    channels: int
    rows: int  # tokens for (B, N, C); H * W for maps
    grid: tuple[int, int] | None = None  # (H, W) for maps, None for tokens

    def __str__(self) -> str:
        where = f"{self.grid[0]}x{self.grid[1]}" if self.grid else f"{self.rows} tokens"
        return f"{self.channels} channels at {where} ({self.layout})"

    @classmethod
    def of(cls, x: torch.Tensor, layout: Layout) -> FeatureShape:
        if layout == "tokens":
            return cls(layout, x.shape[-1], x.shape[-2])
        h, w, c = (x.shape[-2], x.shape[-1], x.shape[-3]) if layout == "nchw" else x.shape[-3:]
        return cls(layout, int(c), int(h * w), (int(h), int(w)))


def consecutive_stages(
    depths: Sequence[int], layout: Layout | Sequence[Layout], stitchable: Collection[int]
) -> tuple[Stage, ...]:
    """Stages of consecutive blocks from each stage's depth; ``stitchable`` lists stage indices."""
    layouts = [layout] * len(depths) if isinstance(layout, str) else list(layout)
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return tuple(
        Stage(range(s, s + d), lay, i in stitchable)
        for i, (s, d, lay) in enumerate(zip(starts, depths, layouts, strict=True))
    )


def downsample_then_blocks(container: str, stages: Sequence[nn.Module]) -> list[tuple[str, ...]]:
    """Block names for timm stages that run ``downsample`` then ``blocks`` (Swin, LeViT): the
    downsampling is folded into each stage's first block."""
    names = []
    for i, stage in enumerate(stages):
        names.append((f"{container}.{i}.downsample", f"{container}.{i}.blocks.0"))
        names += [(f"{container}.{i}.blocks.{b}",) for b in range(1, len(stage.blocks))]
    return names


def linear_layers(model: nn.Module, container: str, kinds: Collection[str]) -> tuple[str, ...]:
    """Paths of the ``nn.Linear`` and 1×1 ``nn.Conv2d`` layers under ``container`` whose path
    passes through a module named one of ``kinds`` (e.g. ``"attn"``, ``"mlp"``)."""
    out = []
    for name, m in model.named_modules():
        if not name.startswith(container + "."):
            continue
        pointwise = type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1)
        if (type(m) is nn.Linear or pointwise) and set(name.split(".")) & set(kinds):
            out.append(name)
    return tuple(out)


def lora_kinds(targets: str, attention: tuple[str, ...], mlp: tuple[str, ...]) -> tuple[str, ...]:
    """The module names ``targets`` (``"attn"`` / ``"attn+mlp"``) selects in a family."""
    if targets not in ("attn", "attn+mlp"):
        raise ValueError(f"LoRA targets are 'attn' or 'attn+mlp', not {targets!r}")
    return attention + (mlp if targets == "attn+mlp" else ())


class Anchor(nn.Module):
    """A pretrained model wrapped as ``stem -> blocks -> head`` without changing the model.

    Subclasses (one per family) implement :meth:`block_names` and :meth:`stages`, and list the
    attribute paths of the stem and head in ``stem_names`` / ``head_names``. The default
    :meth:`forward_stem` and :meth:`forward_head` run those named modules in order; a family
    overrides them only where its model does more (a position embedding, a reshape, a
    functional dropout). Running stem, all blocks and head must give exactly the wrapped
    model's output.

    Example:
        >>> import timm
        >>> anchor = snnet.as_anchor(timm.create_model("deit_tiny_patch16_224"))
        >>> anchor.num_blocks
        12
    """

    family: ClassVar[str] = "generic"
    #: Attribute paths (into ``self.model``) of the modules/parameters the stem and head use, in
    #: the order the default forwards run them. Paths the model lacks (an absent option) are skipped.
    stem_names: tuple[str, ...] = ()
    head_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str | None = None,
        input_size: tuple[int, int, int] | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.name = name or cfg.get("architecture") or type(model).__name__
        self.input_size = tuple(input_size or self._infer_input_size())
        self.source = source  # how to rebuild the model (JSON); None for user modules
        self._runs: dict[str | int, tuple[nn.Module, ...]] = {}  # part -> modules, see _run
        self._block_names: list[tuple[str, ...]] | None = None
        self._shapes: list[FeatureShape] | None = None

    # -- family hooks -------------------------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``."""
        return False

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Run the modules named in ``stem_names``, in order."""
        return self._run("stem", x)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        """Run the modules named in ``head_names``, in order."""
        return self._run("head", h)

    def block_names(self) -> list[tuple[str, ...]]:
        """For each block, the attribute paths of the modules it runs in order.

        A stage's downsampling module is folded into the stage's first block, so every block
        maps features at one resolution and cuts only ever fall between blocks.
        """
        raise NotImplementedError

    def stages(self) -> tuple[Stage, ...]:
        raise NotImplementedError

    def lora_targets(self, targets: str) -> tuple[str, ...]:
        """Attribute paths of the layers parameter-efficient training puts LoRA on:
        ``"attn"`` (the attention's projections) or ``"attn+mlp"`` (also the MLP's). Only the
        family knows which layers those are; the default, for families without attention (a
        CNN), is none, and then only the stitching layers train."""
        return ()

    def feature_map(self, h: torch.Tensor, block: int) -> torch.Tensor:
        """The features leaving ``block`` as a ``(B, C, H, W)`` map: what a dense head reads.
        Maps as they are (channels first); tokens laid out on their square grid. A family whose
        tokens include others (a ViT's class token) or lie on another grid overrides it."""
        layout = self.stages()[self.stage_of(block)].layout
        if layout == "nchw":
            return h
        if layout == "nhwc":
            return h.permute(0, 3, 1, 2)
        b, n, c = h.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{self.name}'s {n} tokens at block {block} lie on no square grid: override "
                "feature_map to say how they form a map"
            )
        return h.transpose(1, 2).reshape(b, c, side, side)

    def _infer_input_size(self) -> tuple[int, int, int]:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        patch_embed = getattr(self.model, "patch_embed", None)
        img_size = getattr(patch_embed, "img_size", None)
        if img_size is not None:
            chans = getattr(getattr(patch_embed, "proj", None), "in_channels", None)
            return (int(chans or cfg.get("input_size", (3,))[0]), *map(int, img_size))
        if "input_size" in cfg:
            return tuple(int(v) for v in cfg["input_size"])
        raise ValueError(
            f"cannot tell the input size of {self.name}; pass input_size=(C, H, W) to the anchor"
        )

    # -- generic machinery --------------------------------------------------------------------
    def part_names(self, part: str | int) -> tuple[str, ...]:
        """Attribute paths (into ``self.model``) of ``"stem"``, ``"head"`` or block ``i``."""
        if part == "stem":
            return tuple(self.stem_names)
        if part == "head":
            return tuple(self.head_names)
        if self._block_names is None:  # the model's structure is fixed: ask the family once
            self._block_names = [tuple(names) for names in self.block_names()]
        return self._block_names[part]

    def part_members(self, part: str | int) -> list[tuple[str, nn.Module | torch.Tensor]]:
        """``(path, module or tensor)`` for every path of a part the model has."""
        out = []
        for path in self.part_names(part):
            obj = self._resolve(path)
            if obj is not None:
                out.append((path, obj))
        return out

    def _run_modules(self, part: str | int) -> tuple[nn.Module, ...]:
        # Resolved once: forward runs these on every call. prune() replaces modules, so it clears.
        modules = self._runs.get(part)
        if modules is None:
            members = self.part_members(part)
            bare = [path for path, obj in members if not isinstance(obj, nn.Module)]
            if bare:
                raise TypeError(
                    f"{type(self).__name__}'s {part} names {bare[0]!r}, which is not a module and "
                    f"cannot be run in order: override forward_{part} to say how it is used"
                )
            modules = self._runs[part] = tuple(obj for _, obj in members)
        return modules

    def _run(self, part: str | int, h: torch.Tensor) -> torch.Tensor:
        for m in self._run_modules(part):
            h = m(h)
        return h

    @property
    def blocks(self) -> list[tuple[nn.Module, ...]]:
        """The modules each block runs, in order."""
        return [self._run_modules(b) for b in range(self.num_blocks)]

    @property
    def num_blocks(self) -> int:
        return len(self.block_names()) if self._block_names is None else len(self._block_names)

    def forward_blocks(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks ``start .. stop-1``."""
        for b in range(start, stop):
            h = self._run(b, h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_blocks(self.forward_stem(x), 0, self.num_blocks))

    def stage_of(self, block: int) -> int:
        for i, s in enumerate(self.stages()):
            if block in s.blocks:
                return i
        raise IndexError(f"{self.name} has no block {block}")

    def feature_shapes(self) -> list[FeatureShape]:
        """Shapes at every boundary: entry ``b`` is what enters block ``b``; the last leaves the
        final block. Measured once on a zero image, in eval mode."""
        if self._shapes is None:
            stages = self.stages()
            layouts = [stages[0].layout] + [
                stages[self.stage_of(b)].layout for b in range(self.num_blocks)
            ]
            p = next(iter(self.parameters()), None)
            x = torch.zeros(1, *self.input_size, device=p.device if p is not None else None)
            was_training = self.training
            self.eval()
            with torch.no_grad():
                feats = self.boundaries(x)
            self.train(was_training)
            self._shapes = [FeatureShape.of(h, lay) for h, lay in zip(feats, layouts, strict=True)]
        return self._shapes

    def boundaries(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at every boundary on images ``x``: entry ``b`` enters block ``b``, the last
        leaves the final block (what least squares fits stitching layers between)."""
        h = self.forward_stem(x)
        out = [h]
        for b in range(self.num_blocks):
            h = self.forward_blocks(h, b, b + 1)
            out.append(h)
        return out

    def _resolve(self, path: str) -> nn.Module | nn.Parameter | torch.Tensor | None:
        parent, _, leaf = path.rpartition(".")
        owner = self.model.get_submodule(parent) if parent else self.model
        return getattr(owner, leaf, None)

    def part_parameters(self, part: str | int) -> Iterator[nn.Parameter]:
        """Parameters of ``"stem"``, ``"head"`` or block ``i``; shared ones are yielded once."""
        seen: set[int] = set()
        for _, obj in self.part_members(part):
            params = (
                obj.parameters()
                if isinstance(obj, nn.Module)
                else [obj]
                if isinstance(obj, nn.Parameter)
                else []
            )
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def prune(self, *, stem: bool, blocks: Sequence[int], head: bool) -> None:
        """Drop, in place, every part not listed, so the model holds only what runs.

        Modules become ``nn.Identity`` and bare parameters become ``None``. Used to export one
        stitch; call it on a copy.
        """
        for path in self.dropped_names(stem=stem, blocks=blocks, head=head):
            parent, _, leaf = path.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            if leaf in owner._parameters:
                owner._parameters[leaf] = None
            elif leaf in owner._modules:
                owner._modules[leaf] = nn.Identity()
        self._runs = {}

    def dropped_names(self, *, stem: bool, blocks: Sequence[int], head: bool) -> list[str]:
        """Paths of the parts not listed: what :meth:`prune` drops."""
        keep = set(blocks)
        drop = [] if stem else list(self.stem_names)
        drop += [] if head else list(self.head_names)
        drop += [n for b in range(self.num_blocks) if b not in keep for n in self.part_names(b)]
        return drop

    def extra_repr(self) -> str:
        return f"name={self.name!r}, family={self.family!r}, blocks={self.num_blocks}"
