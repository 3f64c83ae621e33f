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
    """Set every stitching layer to its least-squares solution on ``images``.

    ``images`` is a tensor ``(N, C, H, W)`` or an iterable of such batches (labels, if the items
    are tuples, are ignored). The anchors run in eval mode, so the result does not depend on
    dropout. Returns each layer's relative residual ``||[X,1]A - Y|| / ||Y||`` on the data.

    Example:
        >>> residuals = snnet.init_least_squares(net, calibration_images)   # a few hundred images
    """
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    gram: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    y_sq: dict[str, torch.Tensor] = {}
    seen = 0
    for batch in tqdm(images, desc="least squares", unit="batch", disable=not progress):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = batch.to(device)
        seen += batch.shape[0]
        feats = [anchor.boundaries(batch) for anchor in net.anchors]
        # Cuts share front outputs and end inputs: rows, Gram and norm are built once per boundary.
        fronts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        ends: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for (f, e), positions in net.space.positions.items():
            for p in positions:
                layer = net.layers[p.layer]
                if (f, p.cut.out_block) not in fronts:
                    x = to_rows(feats[f][p.cut.out_block + 1], layer.src.layout).double()
                    x = _with_ones(x)  # (rows, C_front + 1)
                    fronts[(f, p.cut.out_block)] = (x, x.T @ x)
                if (e, p.cut.in_block) not in ends:
                    y = to_rows(
                        feats[e][p.cut.in_block], layer.dst.layout
                    ).double()  # (rows, C_end)
                    ends[(e, p.cut.in_block)] = (y, (y * y).sum())
                x, g = fronts[(f, p.cut.out_block)]
                y, yy = ends[(e, p.cut.in_block)]
                gram[p.layer] = gram.get(p.layer, 0) + g
                cross[p.layer] = cross.get(p.layer, 0) + x.T @ y
                y_sq[p.layer] = y_sq.get(p.layer, 0) + yy
    if seen == 0:
        raise ValueError("least-squares init needs at least one calibration image")
    residuals = {}
    for key, g in gram.items():
        # gelsd: SVD-based, gives the minimum-norm solution even when features are rank-deficient.
        a = torch.linalg.lstsq(g.cpu(), cross[key].cpu(), driver="gelsd").solution
        net.layers[key].set_affine(a[:-1].T.float(), a[-1].float())
        # ||XA - Y||² = AᵀGA - 2AᵀXᵀY + YᵀY, all from the accumulated sums.
        a = a.to(g.device)
        err = (a * (g @ a)).sum() - 2 * (a * cross[key]).sum() + y_sq[key]
        residuals[key] = float(err.clamp_min(0).sqrt() / y_sq[key].sqrt())
    net.train(was_training)
    return residuals
