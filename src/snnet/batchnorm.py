"""BatchNorm statistics per stitch, for anchors with BatchNorm (ResNet, LeViT).

A stitch feeds the end anchor's BatchNorm layers with activations that come through a stitching
layer, not from that anchor's own blocks, so the running mean and variance the anchor learned no
longer describe their inputs. :func:`recalibrate_batchnorm` re-estimates them for one stitch and
:func:`batchnorm_stats` applies them while that stitch runs.

Design: the statistics live outside the network, one small dict per stitch keyed by state-dict
names (two floats per channel of every BatchNorm the stitch runs after its first stitching layer:
about 0.2 MB for ResNet-18 → ResNet-50). The BatchNorm layers are shared by every stitch into that
anchor and by the anchor itself, so re-estimating them in place would silently change all those
networks; storing per-stitch statistics keeps every other stitch exactly as it was. The price:
switching stitch with statistics copies a few buffers, and because it writes buffers it is not safe
for concurrent callers running different stitches (``net(x, stitch=...)`` on its own is). To deploy
one stitch, load its statistics for good into the exported copy:
``copy.load_state_dict(stats, strict=False)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from snnet.network import SNNet
from snnet.stitch import Stitch

Scope = Literal["after_stitch", "all"]
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(
    net: SNNet, stitch: Stitch | str, *, scope: Scope = "after_stitch"
) -> dict[str, _BatchNorm]:
    """The BatchNorm layers (with running statistics) that ``stitch`` runs, by name in ``net``.

    ``scope="after_stitch"`` (default) keeps those after the first stitching layer: the front
    anchor's layers see exactly the inputs they see in that anchor, so their statistics stay
    right. A route back (``0:3-1:4:7-0:8``) re-enters its first anchor behind a stitching layer,
    so that anchor's later layers are recalibrated too; no block runs twice on a route, so each
    layer has one set of statistics per stitch. ``scope="all"`` takes every one the stitch runs (an anchor on its own included).

    Example:
        >>> sorted(batchnorm_layers(net, "0:3-1:5"))[:1]
        ['anchors.1.model.layer2.1.bn1']
    """
    if scope not in ("after_stitch", "all"):
        raise ValueError(f"scope must be 'after_stitch' or 'all', not {scope!r}")
    parts = net.parts(stitch)
    if scope == "after_stitch":
        first_layer = next((i for i, p in enumerate(parts) if p.kind == "layer"), len(parts))
        parts = parts[first_layer + 1 :]
    out: dict[str, _BatchNorm] = {}
    for part in parts:
        for path, obj in net.part_members(part).items():
            if not isinstance(obj, torch.nn.Module):  # a bare parameter, e.g. a ViT's cls_token
                continue
            for name, m in obj.named_modules(prefix=path):
                if isinstance(m, _BatchNorm) and m.track_running_stats:
                    out.setdefault(name, m)
    return out


def _batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    for batch in images:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        if batch.shape[0]:
            yield batch


@torch.no_grad()
def recalibrate_batchnorm(
    net: SNNet,
    stitch: Stitch | str,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 64,
    scope: Scope = "after_stitch",
) -> dict[str, torch.Tensor]:
    """Re-estimate the running statistics of the BatchNorm layers ``stitch`` runs (see
    :func:`batchnorm_layers` for ``scope``) on ``images``, and return them; ``net`` is left
    exactly as it was.

    Each layer's statistics are the plain average over the batches (PyTorch's ``momentum=None``),
    computed in one pass with every other module in eval mode. ``images`` is a tensor
    ``(N, C, H, W)`` or an iterable of batches (labels in tuples are ignored). Returns state-dict
    entries (``running_mean``, ``running_var``, ``num_batches_tracked`` per layer); empty when the
    stitch runs no such layer.

    Example:
        >>> stats = {s: snnet.recalibrate_batchnorm(net, s, images) for s in net.stitches}
        >>> with snnet.batchnorm_stats(net, stats[s]):
        ...     logits = net(x, stitch=s)
    """
    layers = batchnorm_layers(net, stitch, scope=scope)
    if not layers:
        return {}
    device = next(net.parameters()).device
    modes = {m: m.training for m in net.modules()}
    saved = {
        n: ({b: getattr(m, b).clone() for b in _BUFFERS}, m.momentum) for n, m in layers.items()
    }
    try:
        net.eval()
        for m in layers.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        seen = 0
        for batch in _batches(images, batch_size):
            net(batch.to(device), stitch=stitch)
            seen += batch.shape[0]
        if seen == 0:
            raise ValueError("BatchNorm recalibration needs at least one image")
        return {f"{n}.{b}": getattr(m, b).clone() for n, m in layers.items() for b in _BUFFERS}
    finally:
        for n, m in layers.items():
            buffers, m.momentum = saved[n]
            for b, value in buffers.items():
                getattr(m, b).copy_(value)
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def batchnorm_stats(net: SNNet, stats: dict[str, torch.Tensor]) -> Iterator[SNNet]:
    """Use ``stats`` (from :func:`recalibrate_batchnorm`) inside the block; the network's own
    statistics come back on exit, even on error.

    Example:
        >>> with snnet.batchnorm_stats(net, stats), net.using("0:3-1:5"):
        ...     logits = net(images)
    """
    buffers = {name: net.get_buffer(name) for name in stats}
    previous = {name: b.clone() for name, b in buffers.items()}
    try:
        with torch.no_grad():
            for name, b in buffers.items():
                b.copy_(stats[name])
        yield net
    finally:
        with torch.no_grad():
            for name, b in buffers.items():
                b.copy_(previous[name])


__all__ = ["batchnorm_layers", "batchnorm_stats", "recalibrate_batchnorm"]
