"""The offline dense demo: ``snnet demo --task segmentation`` (or ``depth``).

The shipped Fashion-MNIST anchors (``fmnist``: widths 8, 16, 32) become backbones of 56×56
canvases (their 28-px, 7-px-patch inputs resampled: position embeddings from a 4×4 to an 8×8
patch grid), one dense head is shared by every stitch, and the SN-Net trains on the canvases of
:mod:`snnet.data.canvas`: least squares (stitching and tap layers) -> training -> every stitch
evaluated in one pass -> table and plot. Like the classification demo, every stage resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snnet.demo import DemoReport, evaluate_demo, write_summary
from snnet.rundir import RunDir

#: Each dense demo's own run folder.
DEFAULT_OUT = {"segmentation": "runs/demo-segmentation", "depth": "runs/demo-depth"}


@dataclass(frozen=True, kw_only=True)
class DenseDemoSettings:
    """The dense demo's recipe: 56-px canvases of three Fashion-MNIST items, the SETR-naive head
    (64 channels) on the last block, least squares on 256 canvases, then ``steps`` steps of
    ``batch_size`` canvases with one stitch per step (half of them an anchor's own path: the
    anchors' early blocks train only there), anchors, stitching layers and head at one learning
    rate. Evaluated on the 2,000 test canvases (``eval_images``: a sample). Why: what fits the
    demo's ten minutes on two CPU cores (``benchmarks/README.md``, "Dense prediction", has the
    measurements)."""

    task: str = "segmentation"
    steps: int = 1600
    batch_size: int = 64
    lr: float = 5e-3
    anchor_lr_scale: float = 1.0
    head: str = "naive"
    channels: int = 64
    ls_images: int = 256
    eval_images: int | None = None
    anchor_probability: float | None = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in DEFAULT_OUT:
            raise ValueError(f"the dense demo is segmentation or depth, not {self.task!r}")


def demo_task(settings: DenseDemoSettings) -> Any:
    """The :class:`~snnet.task.Task` of the demo."""
    from snnet.data.canvas import CANVAS_CLASSES, MAX_DEPTH
    from snnet.task import Task

    seg = settings.task == "segmentation"
    return Task(
        settings.task,
        num_classes=len(CANVAS_CLASSES) if seg else None,
        head=settings.head,
        channels=settings.channels,
        max_depth=MAX_DEPTH,
    )


def build_demo_network(settings: DenseDemoSettings, *, size: int = 56) -> Any:
    """The shipped anchors at ``size`` px, stitched, with the demo's dense head."""
    from snnet.network import SNNet
    from snnet.sources import resolve_anchors

    anchors, options = resolve_anchors("fmnist", img_size=size, seed=settings.seed)
    return SNNet(anchors, task=demo_task(settings), **options)


def train_config(settings: DenseDemoSettings) -> Any:
    """The :class:`~snnet.train.TrainConfig` of the recipe (epochs: enough for ``steps``)."""
    from snnet.data.dense_data import CANVAS_TRAIN
    from snnet.train import TrainConfig

    per_epoch = CANVAS_TRAIN // settings.batch_size
    return TrainConfig(
        epochs=-(-settings.steps // per_epoch),
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        anchor_lr_scale=settings.anchor_lr_scale,
        seed=settings.seed,
        anchor_probability=settings.anchor_probability,
        label_smoothing=0.0,
    )


def run_dense_demo(
    out: str | Path | None = None,
    settings: DenseDemoSettings | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> DemoReport:
    """Run the dense demo into ``out`` (default ``runs/demo-segmentation`` or
    ``runs/demo-depth``) and return what it found; a run started there continues.

    Example:
        >>> report = run_dense_demo(settings=DenseDemoSettings(task="depth"))
    """
    from snnet.data.anchors import resolve_preprocessing
    from snnet.data.dense_data import CANVAS
    from snnet.data.resolve import resolve_data
    from snnet.train import fit

    settings = settings or DenseDemoSettings()
    run = RunDir(out or DEFAULT_OUT[settings.task])
    net = build_demo_network(settings)
    config = resolve_preprocessing(net.anchors).config
    data = resolve_data(CANVAS, config, task=net.task)
    test = data.val
    resume = run.checkpoint.exists()
    t = time.perf_counter()
    trained = fit(
        net,
        data.train,
        train_config(settings),
        anchor_images=test.sample(500, seed=settings.seed),
        run_dir=run.training,
        resume=resume,
        ls_init=settings.ls_images,
        device=device,
        progress=progress,
    )
    seconds = {"train (incl. least squares)": time.perf_counter() - t}
    report = DemoReport(
        run.path, run.results, run.plot, run.model, seconds, [], [], [],
        stopped=trained.interrupted, steps=trained.steps, total_steps=trained.total_steps,
    )  # fmt: skip
    if trained.interrupted:
        return report
    report = evaluate_demo(
        net, test, run, settings, report,
        data_name=f"Fashion-MNIST canvases ({settings.task}, test)",
        title=f"SN-Net {settings.task} on Fashion-MNIST canvases: {{}} stitches",
        device=device, progress=progress,
    )  # fmt: skip
    write_summary(run, report, settings, resume)
    return report
