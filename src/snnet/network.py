"""The stitchable network: anchors plus stitching layers, running one stitch at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from snnet.adapters import Anchor, as_anchor
from snnet.cost import Cost, count_params, part_macs
from snnet.dense.head import DenseHead
from snnet.layers import StitchingLayer
from snnet.parts import Part, Step, parts_of, run_parts
from snnet.peft import (
    AdapterConfig,
    adapting,
    add_lora,
    freeze_anchors,
    keep_statistics,
    lora_parameters,
    stitching_layer,
)
from snnet.space import SpaceConfig, StitchSpace
from snnet.stitch import Stitch
from snnet.task import Task


def run_plan(
    steps: Sequence[Step],
    anchors: Sequence[Anchor],
    layers: Mapping[str, nn.Module],
    x: torch.Tensor,
    *,
    lora: bool = True,
) -> torch.Tensor:
    """One stitch's forward: the first anchor's stem, each step's blocks then stitching layer,
    the last anchor's head. Shared by :class:`SNNet` and an exported stitch. ``lora=False``
    (anchors without LoRA) leaves the LoRA switch alone: setting it is a side effect that
    ``torch.cond`` and ``torch.compile`` cannot trace."""
    switch = adapting if lora else _unswitched
    h = anchors[steps[0].anchor].forward_stem(x)
    for i, step in enumerate(steps):
        # Anchors' LoRA (PEFT mode) runs only after the first stitching layer; see snnet.peft.
        with switch(i > 0):
            h = anchors[step.anchor].forward_blocks(h, step.start, step.stop)
        if step.layer is not None:
            h = layers[step.layer](h)
    with switch(len(steps) > 1):
        return anchors[steps[-1].anchor].forward_head(h)


def _unswitched(on: bool) -> contextlib.nullcontext[None]:
    return contextlib.nullcontext()


class SNNet(nn.Module):
    """Anchors ordered small to large, joined by stitching layers; every stitch is a network.

    ``forward`` runs the current stitch (``net.stitch``), or the one passed per call, which
    touches no shared state and is safe for concurrent callers. ``net.stitch = s`` sets the
    stitch for every thread; ``with net.using(s):`` sets it for the calling thread only, so
    threads may each hold their own ``using`` block at once (other threads, nn.DataParallel's
    workers among them, keep seeing ``net.stitch``). Training never samples inside ``forward``:
    pick the stitch outside (see :mod:`snnet.train.sampling`).

    Example:
        >>> net = SNNet([deit_ti, deit_s, deit_b])          # timm models or snnet.Anchor
        >>> len(net.stitches)
        71
        >>> net.stitch = "0:5-1:6"                           # switch: no weights move
        >>> logits = net(images)
        >>> with net.using("2"):                             # temporarily the largest anchor
        ...     logits = net(images)
        >>> logits = net(images, stitch="1")                 # per call

    Trainable parts (see :class:`snnet.peft.AdapterConfig`): ``stitch_rank=r`` makes every
    stitching layer low-rank (frozen least-squares ``W0`` plus a trained ``B A``, scaled
    ``stitch_alpha / r``); ``lora_rank=r`` is parameter-efficient mode: anchors frozen, shared
    LoRA on their ``lora_targets`` layers (added to the anchors given, in place, as PEFT does),
    one stitching layer per cut sharing its weight with its window's cuts (so one bias per cut).
    Both default to 0: SN-Net v1.

    ``task``: what the network predicts (:class:`~snnet.task.Task`). Classification (the
    default) runs each stitch's end anchor's own head. A dense task (segmentation, depth) runs
    one head shared by every stitch instead (``net.dense``, a
    :class:`~snnet.dense.head.DenseHead`), fed by feature levels taken from the anchors the
    stitch runs: ``net(x, stitch=s)`` is then ``(B, classes, H, W)`` logits or ``(B, H, W)``
    depths, and the stitches are those of classification.
    """

    def __init__(
        self,
        anchors: Sequence[nn.Module | Anchor],
        *,
        config: SpaceConfig | None = None,
        stitch_rank: int = 0,
        stitch_alpha: float | None = None,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_targets: str = "attn",
        task: Task | None = None,
        **space_options: Any,
    ) -> None:
        super().__init__()
        if config is not None and space_options:
            raise ValueError("pass either config=SpaceConfig(...) or keyword options, not both")
        self.task = task or Task()
        if self.task.dense and lora_rank:
            raise ValueError(
                "parameter-efficient mode (--lora-rank) is for classification: train a dense "
                "task with full anchors (low-rank stitching layers, --stitch-rank, work)"
            )
        config = config or SpaceConfig(**space_options)
        self.adapter_config = AdapterConfig(
            stitch_rank, stitch_alpha, lora_rank, lora_alpha, lora_targets
        )
        #: The stitching options as given (what a save records); PEFT mode builds the space
        #: with one layer per cut from them, sharing weights by the layers these options give.
        self.space_config = config
        windows = None
        if self.adapter_config.frozen_anchors and not config.layer_per_position:
            # Stitch-specific biases (ESTA): one stitching layer, so one bias, per cut.
            windows, config = config, dataclasses.replace(config, layer_per_position=True)
        self.anchors = nn.ModuleList([as_anchor(a) for a in anchors])
        if self.adapter_config.frozen_anchors:
            for anchor in self.anchors:
                add_lora(anchor, rank=lora_rank, alpha=lora_alpha, targets=lora_targets)
            freeze_anchors(self.anchors)
        self.space = StitchSpace.build(list(self.anchors), config)
        # The preprocessing training used (a snnet.data.DataConfig), saved with the network.
        self.data_config: Any = None
        self.layers = nn.ModuleDict()
        for (f, e), positions in self.space.positions.items():
            for p in positions:
                src = self.anchors[f].feature_shapes()[p.cut.out_block + 1]
                dst = self.anchors[e].feature_shapes()[p.cut.in_block]
                if p.layer not in self.layers:
                    device = next(self.anchors[e].parameters()).device
                    self.layers[p.layer] = stitching_layer(src, dst, self.adapter_config, device)
                elif (self.layers[p.layer].src, self.layers[p.layer].dst) != (src, dst):
                    raise ValueError(
                        f"cuts sharing layer {p.layer} see different shapes; set layer_per_position=True"
                    )
        if windows is not None:
            self._share_window_weights(StitchSpace.build(list(self.anchors), windows))
        #: The head every stitch shares, for a dense task (None: classification).
        self.dense = DenseHead.build(self.task, list(self.anchors)) if self.task.dense else None
        self._plans: dict[Stitch, tuple[Step, ...]] = {}
        self._parts: dict[Stitch, tuple[Part, ...]] = {}
        self._part_macs: dict[Part, int] | None = None
        self._costs: dict[Stitch, Cost] = {}
        # Thread id -> the stitches of that thread's open ``using`` blocks, innermost last.
        self._using: dict[int, list[Stitch]] = {}
        self._check_order()
        self._stitch = self.space.stitches[len(self.anchors) - 1]  # the largest anchor
        if self.dense is not None:  # every route must hand the head every level: refused now
            for stitch in self.stitches:
                self.parts(stitch)

    # -- the stitch ---------------------------------------------------------------------------
    @property
    def stitches(self) -> tuple[Stitch, ...]:
        return self.space.stitches

    @property
    def stitch(self) -> Stitch:
        """The stitch ``forward`` runs when none is passed: the calling thread's innermost
        :meth:`using` block's, else the network's. Setting it moves no weights."""
        stack = self._using.get(threading.get_ident())
        return stack[-1] if stack else self._stitch

    @stitch.setter
    def stitch(self, stitch: Stitch | str) -> None:
        stitch = self._resolve(stitch)
        stack = self._using.get(threading.get_ident())
        if stack:  # inside a using block: the block's exit restores what came before it
            stack[-1] = stitch
        else:
            # Straight into __dict__: nn.Module.__setattr__'s checks would double the switch cost.
            self.__dict__["_stitch"] = stitch

    def _resolve(self, stitch: Stitch | str) -> Stitch:
        if stitch.__class__ is Stitch and stitch in self.space:
            return stitch
        return self.space.check(stitch)

    @contextmanager
    def using(self, stitch: Stitch | str) -> Iterator[SNNet]:
        """Run ``stitch`` inside the block, in this thread; the previous stitch comes back even
        on error. Other threads are not affected, and may hold blocks of their own at once."""
        stitch, tid = self._resolve(stitch), threading.get_ident()
        stack = self._using.setdefault(tid, [])
        stack.append(stitch)
        try:
            yield self
        finally:
            stack.pop()
            if not stack:
                self._using.pop(tid, None)

    def restrict(self, stitches: Sequence[Stitch | str]) -> SNNet:
        """Keep only ``stitches`` (a front): drop, in place, the stitching layers and the anchors'
        parts none of them runs, so the network holds only their weights; returns ``self``. The
        costs stay those counted on the whole anchors. Call it on a copy.

        Example:
            >>> front = copy.deepcopy(net).restrict(["0", "0:5-1:6", "2"])
            >>> len(front.stitches), front(x, stitch="0:5-1:6").shape
            (3, torch.Size([8, 1000]))
        """
        kept = [self._resolve(s) for s in stitches]
        if not kept:
            raise ValueError("restrict() needs at least one stitch to keep")
        for s in kept:
            self.cost(s)  # counted now, while every part is there to run
        parts = {p for s in kept for p in self.parts(s)}
        for i, anchor in enumerate(self.anchors):
            blocks = sorted({p.block for p in parts if p.kind == "block" and p.anchor == i})
            anchor.prune(
                stem=Part("stem", i) in parts, blocks=blocks, head=Part("head", i) in parts
            )
        for key in [k for k in self.layers if Part("layer", layer=k) not in parts]:
            del self.layers[key]
        self.space = self.space.restrict(kept)
        if self._stitch not in self.space:
            self._stitch = max(self.space.stitches, key=lambda s: self.cost(s).macs)
        return self

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle) runs the stitch the copying thread sees, in every thread.
        state = super().__getstate__()
        state["_stitch"], state["_using"] = self.stitch, {}
        return state

    def plan(self, stitch: Stitch | str) -> tuple[Step, ...]:
        """The steps ``forward`` takes for ``stitch`` (stem of ``steps[0].anchor`` first, head of
        ``steps[-1].anchor`` last)."""
        stitch = self._resolve(stitch)
        plan = self._plans.get(stitch)
        if plan is None:
            segs = stitch.segments(self.space.num_blocks)
            layers = [self.space.layer_for(f, e, c) for f, e, c in stitch.hops] + [None]
            plan = self._plans[stitch] = tuple(
                Step(a, start, stop, lay)
                for (a, start, stop), lay in zip(segs, layers, strict=True)
            )
        return plan

    def parts(self, stitch: Stitch | str) -> tuple[Part, ...]:
        """Everything ``stitch`` runs, in run order: the first anchor's stem, each step's blocks
        and stitching layer, the last anchor's head. The one answer to "what does a stitch run".

        Example:
            >>> [str(p) for p in net.parts("0:1-1:2")]
            ['anchor 0 stem', 'anchor 0 block 0', 'anchor 0 block 1', 'layer a0_a1_1', ...]
        """
        stitch = self._resolve(stitch)
        parts = self._parts.get(stitch)
        if parts is None:
            plan = self.plan(stitch)
            parts = self.dense.parts(plan) if self.dense is not None else parts_of(plan)
            self._parts[stitch] = parts
        return parts

    def part_members(self, part: Part) -> dict[str, nn.Module | torch.Tensor]:
        """The modules (and bare parameters, e.g. a ViT's ``cls_token``) ``part`` runs, by their
        names in this network."""
        if part.kind == "layer":
            return {f"layers.{part.layer}": self.layers[part.layer]}
        if part.kind == "decode":
            return {"dense.decoder": self.dense.decoder}
        if part.kind == "tap":
            key = part.layer
            return {f"dense.taps.{key}": self.dense.taps[key]} if key is not None else {}
        anchor = self.anchors[part.anchor]
        prefix = f"anchors.{part.anchor}.model."
        return {prefix + path: obj for path, obj in anchor.part_members(part.of_anchor)}

    def part_parameters(self, part: Part) -> list[nn.Parameter]:
        """The parameters ``part`` runs, each once."""
        if part.kind in ("layer", "tap", "decode"):
            params = (m.parameters() for m in self.part_members(part).values())
            return [p for group in params for p in group]
        return list(self.anchors[part.anchor].part_parameters(part.of_anchor))

    def parameters_of(self, stitch: Stitch | str) -> list[nn.Parameter]:
        """The parameters ``stitch`` runs (those that get gradients when it trains), each once,
        in run order. Looked up afresh each call, so weights assigned since are seen."""
        params: dict[int, nn.Parameter] = {}
        for part in self.parts(stitch):
            params.update((id(p), p) for p in self.part_parameters(part))
        return list(params.values())

    def forward(self, x: torch.Tensor, stitch: Stitch | str | None = None) -> torch.Tensor:
        stitch = self.stitch if stitch is None else stitch
        if self.dense is not None:
            return run_parts(self.parts(stitch), self.anchors, self.layers, x, self.dense)
        lora = self.adapter_config.frozen_anchors
        return run_plan(self.plan(stitch), self.anchors, self.layers, x, lora=lora)

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, stitch: Stitch | str) -> Cost:
        """Multiply-adds per image and parameters of exactly the parts ``stitch`` runs."""
        stitch = self._resolve(stitch)
        c = self._costs.get(stitch)
        if c is None:
            macs = self._count_macs()
            # Low-rank updates and LoRA fold into weights on export: a deployed stitch lacks them.
            merged = {id(p) for p in self.update_parameters()}
            params = [p for p in self.parameters_of(stitch) if id(p) not in merged]
            c = Cost(sum(macs[p] for p in self.parts(stitch)), count_params(params))
            self._costs[stitch] = c
        return c

    def costs(self) -> dict[Stitch, Cost]:
        return {s: self.cost(s) for s in self.stitches}

    def _count_macs(self) -> dict[Part, int]:
        if self._part_macs is None:
            # Each stitching layer measured on what its front anchor hands it: (anchor, block).
            inputs = {
                pos.layer: (f, pos.cut.out_block)
                for (f, _e), positions in self.space.positions.items()
                for pos in positions
            }
            was_training = self.training
            try:
                self._part_macs = part_macs(self.eval().anchors, self.layers, inputs, self.dense)
            finally:
                self.train(was_training)
        return self._part_macs

    def _share_window_weights(self, windows: StitchSpace) -> None:
        """PEFT mode: cuts that share a stitching layer in ``windows`` (the space as configured,
        one layer per window or front block) share that layer's weight here (one layer per cut),
        each with its own bias: the stitch-specific biases, at the cost of one bias vector per
        cut."""
        first: dict[str, StitchingLayer] = {}
        for (f, e), positions in self.space.positions.items():
            window_of = {p.cut: p.layer for p in windows.positions[(f, e)]}
            for p in positions:
                key = f"{f}_{e}_{window_of[p.cut]}"
                layer = self.layers[p.layer]
                if key in first:
                    layer.share_weight_with(first[key])
                else:
                    first[key] = layer

    def _check_order(self) -> None:
        macs = [self.cost(Stitch.anchor(i)).macs for i in range(len(self.anchors))]
        for i in range(len(macs) - 1):
            if macs[i] > macs[i + 1] * 1.001:
                a, b = self.anchors[i], self.anchors[i + 1]
                raise ValueError(
                    f"anchors must be ordered from small to large cost, but {a.name} "
                    f"({macs[i] / 1e9:.3g} GMACs) comes before {b.name} ({macs[i + 1] / 1e9:.3g} "
                    "GMACs): reorder them"
                )

    # -- training helpers ---------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """The anchors' own no-weight-decay names, under this module's prefixes (the reference
        lost them behind its wrapper). timm may list names a model lacks; only real ones remain."""
        names = set()
        for i, anchor in enumerate(self.anchors):
            fn = getattr(anchor.model, "no_weight_decay", None)
            for n in fn() if callable(fn) else ():
                names.add(f"anchors.{i}.model.{n}")
        return names & dict(self.named_parameters()).keys()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"anchors": [...], "layers": [...]}``: the two groups SN-Net trains at different
        rates; in PEFT mode also ``"lora"`` (the anchors' LoRA, out of ``"anchors"``), for a
        dense task ``"head"`` (the shared head and its tap layers)."""
        lora = lora_parameters(self.anchors)
        ids = {id(p) for p in lora}
        groups = {
            "anchors": [p for p in self.anchors.parameters() if id(p) not in ids],
            "layers": list(self.layers.parameters()),
        }
        if lora:
            groups["lora"] = lora
        if self.dense is not None:
            groups["head"] = list(self.dense.parameters())
        return groups

    def trained_stitches(self) -> tuple[Stitch, ...]:
        """The stitches training samples: all of them, but in PEFT mode not the anchors, which
        run only frozen weights (nothing to train, and they must stay as they are)."""
        if not self.adapter_config.frozen_anchors:
            return self.stitches
        return tuple(s for s in self.stitches if s.hops)

    def update_parameters(self) -> list[nn.Parameter]:
        """Parameters that an export folds into other weights (low-rank updates, LoRA)."""
        out = lora_parameters(self.anchors)
        for layer in self.layers.values():
            out += layer.update_parameters()
        return out

    def train(self, mode: bool = True) -> SNNet:
        super().train(mode)
        if self.adapter_config.frozen_anchors:
            keep_statistics(self.anchors)
        return self

    def describe(self, stitch: Stitch | str) -> str:
        """A readable account of a stitch, e.g. ``deit_tiny[0:4] -> deit_small[4:12]``."""
        steps = self.plan(stitch)
        return " -> ".join(f"{self.anchors[s.anchor].name}[{s.start}:{s.stop}]" for s in steps)

    def extra_repr(self) -> str:
        task = f", task={self.task.kind}" if self.dense is not None else ""
        return f"stitches={len(self.stitches)}, layers={len(self.layers)}{task}"
