"""Least-squares initialisation of the stitching layers (as in the SN-Net paper, Sec. 3.3).

For a cut ``(j, k)`` from anchor ``f`` into anchor ``e``, X is what leaves block ``j`` of ``f`` and
Y what enters block ``k`` of ``e`` on the same images, both as rows × channels. Every cut of the
space counts, in either direction: with two-way routes the large→small layers are solved the same
way (routes back add no cuts of their own; their hops are one-hop cuts). A layer solves
``min ||[X, 1] A - Y||`` pooled over the rows of every cut it serves (one problem, not an average
of separate solutions). The normal equations are accumulated in float64 batch by batch, so the
number of calibration images is bounded by time, not memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from snnet.dense.levels import tap_key
from snnet.layers import to_rows
from snnet.network import SNNet


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


@torch.no_grad()
def init_least_squares(
    net: SNNet,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Set every stitching layer to its least-squares solution on ``images``; in a dense network
    also every tap layer, onto the head anchor's features at the tap's level.

    ``images`` is a tensor ``(N, C, H, W)`` or an iterable of such batches (labels, if the items
    are tuples, are ignored). The anchors run in eval mode, so the result does not depend on
    dropout. Returns each layer's relative residual ``||[X,1]A - Y|| / ||Y||`` on the data (tap
    layers as ``taps.KEY``).

    Example:
        >>> residuals = snnet.init_least_squares(net, calibration_images)   # a few hundred images
    """
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = _Sums()
    seen = 0
    for batch in tqdm(images, desc="least squares", unit="batch", disable=not progress):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = batch.to(device)
        seen += batch.shape[0]
        feats = [anchor.boundaries(batch) for anchor in net.anchors]
        _add_stitching_layers(net, feats, sums)
        if net.dense is not None:
            _add_taps(net, feats, sums)
    if seen == 0:
        raise ValueError("least-squares init needs at least one calibration image")
    residuals = {}
    for key, g in sums.gram.items():
        # gelsd: SVD-based, gives the minimum-norm solution even when features are rank-deficient.
        a = torch.linalg.lstsq(g.cpu(), sums.cross[key].cpu(), driver="gelsd").solution
        layer = net.dense.taps[key[5:]] if key.startswith("taps.") else net.layers[key]
        layer.set_affine(a[:-1].T.float(), a[-1].float())
        # ||XA - Y||² = AᵀGA - 2AᵀXᵀY + YᵀY, all from the accumulated sums.
        a = a.to(g.device)
        err = (a * (g @ a)).sum() - 2 * (a * sums.cross[key]).sum() + sums.y_sq[key]
        residuals[key] = float(err.clamp_min(0).sqrt() / sums.y_sq[key].sqrt())
    net.train(was_training)
    return residuals


class _Sums:
    """The normal equations of every layer, summed over batches in float64: ``[X,1]ᵀ[X,1]``,
    ``[X,1]ᵀY`` and ``||Y||²``."""

    def __init__(self) -> None:
        self.gram: dict[str, torch.Tensor] = {}
        self.cross: dict[str, torch.Tensor] = {}
        self.y_sq: dict[str, torch.Tensor] = {}

    def add(
        self, key: str, x: tuple[torch.Tensor, torch.Tensor], y: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        (rows, g), (target, yy) = x, y
        self.gram[key] = self.gram.get(key, 0) + g
        self.cross[key] = self.cross.get(key, 0) + rows.T @ target
        self.y_sq[key] = self.y_sq.get(key, 0) + yy


def _inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = _with_ones(x.double())  # (rows, C_front + 1)
    return x, x.T @ x


def _targets(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.double()  # (rows, C_end)
    return y, (y * y).sum()


def _add_stitching_layers(net: SNNet, feats: list[list[torch.Tensor]], sums: _Sums) -> None:
    # Cuts share front outputs and end inputs: rows, Gram and norm are built once per boundary.
    fronts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    ends: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for (f, e), positions in net.space.positions.items():
        for p in positions:
            layer = net.layers[p.layer]
            j, k = p.cut.out_block, p.cut.in_block
            if (f, j) not in fronts:
                fronts[(f, j)] = _inputs(to_rows(feats[f][j + 1], layer.src.layout))
            if (e, k) not in ends:
                ends[(e, k)] = _targets(to_rows(feats[e][k], layer.dst.layout))
            sums.add(p.layer, fronts[(f, j)], ends[(e, k)])


def _add_taps(net: SNNet, feats: list[list[torch.Tensor]], sums: _Sums) -> None:
    """Each tap layer maps its anchor's level onto the head anchor's same level."""
    blocks, head = net.dense.blocks, len(net.anchors) - 1

    def level(a: int, lv: int) -> torch.Tensor:
        b = blocks[a][lv]
        return to_rows(net.anchors[a].feature_map(feats[a][b + 1], b), "nchw")

    for a in range(head):
        for lv in range(len(blocks[a])):
            sums.add(f"taps.{tap_key(a, lv)}", _inputs(level(a, lv)), _targets(level(head, lv)))
