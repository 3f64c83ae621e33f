"""How a task's predictions are scored: one :class:`Scorer` per task, whose statistics add up over
batches (so an evaluation can stop and resume, and every stitch keeps its own sums).

- classification: top-1 and top-5 hits;
- segmentation: the confusion matrix, from which mIoU (mean over the classes present in the
  targets or the predictions, as mmsegmentation averages) and pixel accuracy come; pixels
  labelled 255 are left out;
- depth: over pixels with a known depth (target > 0), AbsRel (mean ``|d - g| / g``), RMSE in
  metres and δ<1.25 (the share with ``max(d/g, g/d) < 1.25``).

Every value is a percentage except AbsRel (a ratio) and RMSE (metres).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from snnet.task import IGNORE_INDEX, Task

#: Targets at or below this many metres have no depth.
MIN_DEPTH = 1e-3


class Scorer:
    """Sums of one task's statistics: ``zeros(n)`` for ``n`` stitches, ``batch`` for one
    output, ``values`` the fields of :data:`snnet.measure.results.FIELDS` they give, ``loss``
    the training loss's value (validation reports it).

    Example:
        >>> scorer = scorer_for(net.task)
        >>> stats = scorer.zeros(1)
        >>> stats[0] += scorer.batch(net(x, stitch="0"), y)
        >>> scorer.values(stats[0], images=len(y))     # {"miou": 61.2, "pixel_acc": 90.3}
    """

    shape: tuple[int, ...] = ()
    dtype = torch.long

    def zeros(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(n, *self.shape, dtype=self.dtype, device=device)

    def batch(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def values(self, stats: torch.Tensor, images: int) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The summed loss of one batch (mean per image: divide by the images)."""
        raise NotImplementedError


class Classification(Scorer):
    shape = (2,)

    def batch(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        top = output.topk(min(5, output.shape[-1]), dim=-1).indices  # (B, k)
        hits = top == target[:, None]
        return torch.stack([hits[:, 0].sum(), hits.any(dim=-1).sum()])

    def values(self, stats: torch.Tensor, images: int) -> dict[str, float]:
        c1, c5 = stats.tolist()
        return {"top1": 100.0 * c1 / images, "top5": 100.0 * c5 / images}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), target, reduction="sum")


class Segmentation(Scorer):
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.shape = (num_classes, num_classes)

    def batch(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = self.num_classes
        target = target.long()
        valid = target != IGNORE_INDEX
        pred = output.argmax(1)  # (B, H, W)
        pairs = target[valid] * k + pred[valid]
        return torch.bincount(pairs, minlength=k * k).view(k, k)  # rows: truth, cols: prediction

    def values(self, stats: torch.Tensor, images: int) -> dict[str, float]:
        confusion = stats.double()
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        present = union > 0
        iou = hits[present] / union[present]
        total = float(confusion.sum())
        return {
            "miou": 100.0 * float(iou.mean()) if len(iou) else float("nan"),
            "pixel_acc": 100.0 * float(hits.sum()) / total if total else float("nan"),
        }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            output.float(), target.long(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return per_pixel.flatten(1).mean(1).sum()


class Depth(Scorer):
    shape = (4,)  # valid pixels, sum of |d-g|/g, sum of (d-g)^2, pixels with delta < 1.25
    dtype = torch.float64

    def batch(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target > MIN_DEPTH
        d, g = output[valid].double().clamp_min(MIN_DEPTH), target[valid].double()
        ratio = torch.maximum(d / g, g / d)
        return torch.stack(
            [valid.sum().double(), ((d - g).abs() / g).sum(), ((d - g) ** 2).sum(),
             (ratio < 1.25).sum().double()]
        )  # fmt: skip

    def values(self, stats: torch.Tensor, images: int) -> dict[str, float]:
        n, rel, sq, close = stats.tolist()
        if n == 0:
            return {"absrel": float("nan"), "rmse": float("nan"), "delta1": float("nan")}
        return {"absrel": rel / n, "rmse": math.sqrt(sq / n), "delta1": 100.0 * close / n}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [silog(o[None], t[None]) for o, t in zip(output, target, strict=True)]
        ).sum()


def silog(output: torch.Tensor, target: torch.Tensor, variance_focus: float = 0.85) -> torch.Tensor:
    """The scale-invariant log loss of monocular depth (Eigen et al.; as the depth toolboxes
    train DPT): ``sqrt(mean(e²) - λ·mean(e)²)`` with ``e = log d - log g`` over pixels with a
    known depth, ``λ = variance_focus``. Zero when no pixel has a depth."""
    valid = target > MIN_DEPTH
    if not valid.any():
        return output.sum() * 0
    e = torch.log(output[valid].float().clamp_min(MIN_DEPTH)) - torch.log(target[valid].float())
    return torch.sqrt((e**2).mean() - variance_focus * e.mean() ** 2 + 1e-8)


def scorer_for(task: Task | None) -> Scorer:
    """The scorer of ``task`` (None: classification)."""
    kind = task.kind if task is not None else "classification"
    if kind == "segmentation":
        return Segmentation(task.num_classes)
    if kind == "depth":
        return Depth()
    return Classification()
