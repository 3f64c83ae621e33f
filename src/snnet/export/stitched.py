"""One stitch of an SN-Net as a standalone module: :class:`StitchedModel` and :func:`export_stitch`.

:func:`export_stitch` copies from the SN-Net only what the stitch runs: the parts of the anchors
on its route (the first anchor's stem, each anchor's block range, the last anchor's head) and
its stitching layers. Parts it skips are never copied, so memory follows the stitch, not the
family. The result computes exactly what ``net(x, stitch=...)`` computes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from snnet.adapters import Anchor, FeatureShape
from snnet.data.config import DataConfig
from snnet.dense.head import DenseHead
from snnet.layers import StitchingLayer
from snnet.network import SNNet, run_plan
from snnet.parts import Part, Step, run_parts
from snnet.peft import merge_lora
from snnet.stitch import Stitch

FORMAT = "snnet-stitch"
VERSION = 1


class StitchedModel(nn.Module):
    """One stitch of an SN-Net as a plain module holding only the weights that stitch runs.

    ``anchors`` are the (pruned) anchors of the route in order; ``steps`` index into them and
    into ``layers``, like :meth:`SNNet.plan` does into the network. A dense stitch also holds
    ``dense`` (the shared head with the tap layers this stitch runs) and runs its ``parts``
    (anchor indices into ``anchors``). Build one with :func:`export_stitch` or
    :func:`load_stitch`.

    Example:
        >>> model = snnet.export_stitch(net, "0:5-1:6")
        >>> torch.equal(model(x), net(x, stitch="0:5-1:6"))
        True
    """

    def __init__(
        self,
        anchors: Sequence[Anchor],
        layers: Sequence[StitchingLayer],
        steps: Sequence[Step],
        *,
        info: dict[str, Any],
        dense: DenseHead | None = None,
        parts: Sequence[Part] = (),
    ) -> None:
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        # Keyed "0", "1", ... like the steps' layer names (state-dict keys as a ModuleList's).
        self.layers = nn.ModuleDict({str(i): layer for i, layer in enumerate(layers)})
        self.steps = tuple(Step(*s) for s in steps)
        self.info = info  # JSON: the stitch, its source anchors and parts, its cost
        self.dense = dense
        self.parts = tuple(parts)

    @property
    def stitch(self) -> Stitch:
        return Stitch.parse(self.info["stitch"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.anchors[0].input_size)

    @property
    def data_config(self) -> DataConfig | None:
        """The preprocessing the SN-Net was trained and evaluated with (size, crop,
        normalisation, class names), so a deployed stitch sees images as training did; None
        for a network that never recorded one (built by hand and not trained by snnet)."""
        data = self.info.get("data")
        return DataConfig.from_json(data) if data else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return run_parts(self.parts, self.anchors, self.layers, x, self.dense)
        # LoRA is folded into the weights at export: nothing to switch
        return run_plan(self.steps, self.anchors, self.layers, x, lora=False)

    def extra_repr(self) -> str:
        return f"stitch='{self.info['stitch']}', path={self.info['path']!r}"


def copy_parts(anchor: Anchor, *, stem: bool, blocks: Sequence[int], head: bool) -> Anchor:
    """A copy of ``anchor`` holding only the listed parts; the others are never copied.

    Dropped modules and parameters are put in ``deepcopy``'s memo as their replacement
    (``nn.Identity`` / ``None``, what :meth:`Anchor.prune` puts there), so copying skips them;
    anything a kept part also uses is copied as usual.
    """
    kept_parts = (["stem"] if stem else []) + sorted(set(blocks)) + (["head"] if head else [])
    kept: set[int] = set()
    for part in kept_parts:
        for _, obj in anchor.part_members(part):
            if isinstance(obj, nn.Module):
                kept.update(id(m) for m in obj.modules())
                kept.update(id(t) for t in obj.parameters())
            else:
                kept.add(id(obj))
    memo: dict[int, Any] = {}
    for path in anchor.dropped_names(stem=stem, blocks=blocks, head=head):
        obj = anchor._resolve(path)
        if id(obj) in kept or obj is None:
            continue
        if isinstance(obj, nn.Module):
            memo[id(obj)] = nn.Identity()
        elif isinstance(obj, nn.Parameter):
            memo[id(obj)] = None
    part = copy.deepcopy(anchor, memo)
    part.prune(stem=stem, blocks=sorted(set(blocks)), head=head)
    return part


def _route_parts(parts: Sequence[Part]) -> list[dict[str, Any]]:
    """What each anchor on the route keeps, in route order: the parts between two stitching
    layers belong to one anchor. An anchor a route visits twice (``1:3-0:4:7-1:8``) is kept as
    two copies holding disjoint parts (no block runs twice on a route), so the export still
    holds each parameter the stitch runs exactly once."""
    kept: list[dict[str, Any]] = []
    new_anchor = True
    for p in parts:
        if p.kind in ("tap", "decode"):  # a dense head's, not the anchor's
            continue
        if p.kind == "layer":
            new_anchor = True
            continue
        if new_anchor:
            kept.append({"stem": False, "blocks": [], "head": False})
            new_anchor = False
        if p.kind == "block":
            kept[-1]["blocks"].append(p.block)
        else:
            kept[-1][p.kind] = True
    return kept


def export_stitch(net: SNNet, stitch: Stitch | str) -> StitchedModel:
    """A standalone module running ``stitch``, holding copies of only the weights it uses.

    The network is not changed and not copied as a whole: only the parts on the stitch's route
    are copied, so exporting needs memory for the stitch, not for the family. The module's
    parameter count is ``net.cost(stitch).params`` and its output equals
    ``net(x, stitch=stitch)`` exactly. Low-rank stitching layers and the anchors' LoRA (PEFT
    mode) are folded into plain weights, the very weights the network runs for the stitch (only
    the kernels' float rounding may differ, within 1e-6).

    Example:
        >>> model = export_stitch(net, "0:5-1:6")
        >>> save_stitch(model, "deploy/ti-s")
    """
    stitch = net.space.check(stitch)
    steps = net.plan(stitch)
    parts = _route_parts(net.parts(stitch))
    anchors = [copy_parts(net.anchors[s.anchor], **p) for s, p in zip(steps, parts, strict=True)]
    for k, anchor in enumerate(anchors):
        # The anchors' LoRA (PEFT mode) runs after the first stitching layer: folded into the
        # weights there, dropped before it; either way the export is a plain model.
        merge_lora(anchor, merge=k > 0)
    layers, new_steps, layer_info = [], [], []
    for k, s in enumerate(steps):
        idx = None
        if s.layer is not None:
            layer = net.layers[s.layer]
            idx = str(len(layers))
            layers.append(layer.merged())  # a low-rank layer's update folded in
            layer_info.append(
                {"name": s.layer, "src": shape_to_json(layer.src), "dst": shape_to_json(layer.dst)}
            )
        new_steps.append(Step(k, s.start, s.stop, idx))
    cost = net.cost(stitch)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "stitch": str(stitch),
        "path": net.describe(stitch),
        "macs": cost.macs,
        "params": cost.params,
        "anchors": [
            {
                "index": s.anchor,
                "name": net.anchors[s.anchor].name,
                "family": net.anchors[s.anchor].family,
                "input_size": list(net.anchors[s.anchor].input_size),
                "source": net.anchors[s.anchor].source,
                **p,
            }
            for s, p in zip(steps, parts, strict=True)
        ],
        "layers": layer_info,
        "steps": [list(s) for s in new_steps],
    }
    if net.data_config is not None:  # what snnet train / demo recorded: deployment must match it
        info["data"] = net.data_config.to_json()
    dense, dense_parts = None, ()
    if net.dense is not None:
        renamed = {s.layer: n.layer for s, n in zip(steps, new_steps, strict=True) if s.layer}
        dense, dense_parts, info["dense"] = _dense_export(net, stitch, renamed)
    model = StitchedModel(anchors, layers, new_steps, info=info, dense=dense, parts=dense_parts)
    return model.train(net.training)


def _dense_export(
    net: SNNet, stitch: Stitch, renamed: dict[str, str]
) -> tuple[DenseHead, tuple[Part, ...], dict[str, Any]]:
    """A dense stitch's head (the decoder and only the tap layers it runs), and its parts as
    the export names them (anchors by their place on the route, stitching layers ``renamed``),
    and their JSON."""
    parts, k = [], -1
    for p in net.parts(stitch):
        if p.kind == "stem" or (p.kind == "block" and parts and parts[-1].kind == "layer"):
            k += 1  # each stretch between stitching layers is one anchor of the export
        if p.kind == "layer":
            parts.append(replace(p, layer=renamed[p.layer]))
        else:
            parts.append(replace(p, anchor=k) if p.anchor is not None else p)
    taps = {p.layer: net.dense.taps[p.layer] for p in parts if p.kind == "tap" and p.layer}
    shapes = {key: (t.src, t.dst) for key, t in taps.items()}
    head = DenseHead(net.task, net.dense.levels, shapes, net.dense.size)
    with torch.no_grad():
        head.decoder.load_state_dict(net.dense.decoder.state_dict())
        for key, tap in taps.items():
            head.taps[key].load_state_dict(tap.merged().state_dict())
    head = head.to(next(net.dense.parameters()).device).train(net.training)
    info = {
        "task": net.task.to_json(),
        "levels": [shape_to_json(s) for s in net.dense.levels],
        "size": list(net.dense.size),
        "taps": {key: [shape_to_json(a), shape_to_json(b)] for key, (a, b) in shapes.items()},
        "parts": [[p.kind, p.anchor, p.block, p.layer, p.level] for p in parts],
    }
    return head, tuple(parts), info


def shape_to_json(shape: FeatureShape) -> dict[str, Any]:
    return {
        "layout": shape.layout,
        "channels": shape.channels,
        "rows": shape.rows,
        "grid": list(shape.grid) if shape.grid else None,
    }


def shape_from_json(d: dict[str, Any]) -> FeatureShape:
    return FeatureShape(
        d["layout"], d["channels"], d["rows"], tuple(d["grid"]) if d["grid"] else None
    )
