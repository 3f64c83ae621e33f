"""The whole training pipeline that ``snnet train`` runs: :func:`fit`.

The anchors are scored alone on held-out images first (a wrong preprocessing shows here, before
any training), optionally fine-tuned alone (``anchor_epochs``: anchors re-headed for the user's
classes), the stitching layers initialised by least squares, the SN-Net trained with one stitch
per step, and the anchors scored again inside the trained network. Both scores go to
``RUN/summary.json`` (``anchors_before``, ``anchors_after``: the task's metric in anchor order,
top-1 % for classification; a dense task's head starts untrained, so it has no
``anchors_before``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import snnet.train.distributed as distributed
from snnet.data.batches import EpochBatches, default_workers
from snnet.data.images import ImageSet
from snnet.data.resolve import Data, check_classes
from snnet.files import atomic_write
from snnet.lstsq import init_least_squares
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.train.checkpoint import check_run, load_checkpoint
from snnet.train.config import TrainConfig
from snnet.train.distributed import World
from snnet.train.loop import LoopOptions, TrainResult, run_loop
from snnet.train.monitor import Validation

logger = logging.getLogger("snnet.train")

#: Where a run with ``anchor_epochs`` fine-tunes its anchors alone (a run directory of its own).
ANCHOR_PHASE = "anchors"


def num_outputs(net: SNNet) -> int:
    """Classes the anchors' heads predict (they share the classifier size by construction)."""
    size = net.anchors[0].input_size
    p = next(net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, *size, device=p.device, dtype=p.dtype), stitch=Stitch.anchor(0))
    net.train(was_training)
    return out.shape[-1]


def check_data(net: SNNet, images: ImageSet, what: str) -> None:
    """The images fit the anchors: not empty, their input size, their number of classes (or
    the dense targets the task needs)."""
    if len(images) == 0:
        raise ValueError(f"{what} is empty")
    expected = tuple(net.anchors[0].input_size)
    if images.config.input_size != expected:
        raise ValueError(
            f"the anchors take {expected} inputs but {what} gives {images.config.input_size}: "
            "pick data of that size (--img-size for an image folder) or anchors that fit the data"
        )
    task = net.task
    if not task.dense:
        if images.dense is not None:
            raise ValueError(f"{what} has {images.dense.kind} targets: train with --task")
        check_classes(images, num_outputs(net), what=what)
        return
    want = "mask" if task.kind == "segmentation" else "depth"
    if images.dense is None or images.dense.kind != want:
        has = f"{images.dense.kind} targets" if images.dense is not None else "class labels"
        raise ValueError(
            f"{what} has {has} but --task {task.kind} needs {want} targets: give a folder "
            "root/img_dir + root/ann_dir (segmentation) or root/depth_dir (depth)"
        )
    if task.kind == "segmentation":
        check_classes(images, task.num_classes, what=what)


def fit(
    net: SNNet,
    data: Data | ImageSet,
    config: TrainConfig,
    *,
    val: ImageSet | None = None,
    anchor_images: ImageSet | None = None,
    teacher: nn.Module | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    ls_init: int = 256,
    save_every: int = 0,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    val_every: int = 1,
    val_images: int | None = 1000,
) -> TrainResult:
    """Train ``net`` on ``data``: a :class:`~snnet.data.Data` from
    :func:`~snnet.data.resolve_data` (training and held-out images), or an
    :class:`~snnet.data.ImageSet` of training images (``val``: held-out images).

    In order: the anchors are scored alone on a seeded stratified sample of ``val_images``
    held-out images (without held-out images, of training images, and the log says so); with
    ``config.anchor_epochs``, each anchor is fine-tuned alone; the stitching layers are
    initialised by least squares on ``ls_init`` training images (a seeded stratified sample,
    without augmentation); the SN-Net trains; the anchors are scored again inside it
    (``anchor_images`` names other images to score them on, e.g. a whole test set). With
    held-out images the anchors and three stitches are also validated every ``val_every``
    epochs (``val.csv``, TensorBoard). The preprocessing (``data.config``) is saved with the
    network, so evaluate, export and serve use what training used. Every option and the data
    are checked before anything is computed or written.

    Example:
        >>> anchors, options = snnet.resolve_anchors("fmnist")
        >>> net = snnet.SNNet(anchors, **options)
        >>> result = fit(net, resolve_data("fmnist", DataConfig.fashion_mnist()),
        ...              TrainConfig(epochs=2), run_dir="runs/fmnist")
        >>> result.anchors_before, result.anchors_after
    """
    world = distributed.setup(device)
    train = data.train if isinstance(data, Data) else data
    val = val if val is not None else (data.val if isinstance(data, Data) else None)
    if train is None:
        raise ValueError("the data has no training images")
    workers = default_workers(train) if num_workers is None else num_workers
    run_dir, main_resume = check_run_dir(run_dir, resume, save_every, ls_init, workers)
    _check_inputs(net, train, val, val_every, val_images)
    check_free_space(net, run_dir, config)
    net.data_config = train.config
    net.to(world.device)
    checks = anchor_images or _check_images(train, val, val_images, config.seed, say=not resume)
    anchors = [Stitch.anchor(i) for i in range(len(net.anchors))]
    score = Validation(net, checks, stitches=anchors, max_images=None, num_workers=workers)
    before = _anchors_before(net, score, run_dir, world, resume=resume)
    batches = EpochBatches(
        train, config.batch_size, seed=config.seed, rank=world.rank,
        world_size=world.world_size, num_workers=workers,
    )  # fmt: skip
    options = LoopOptions(run_dir=run_dir, resume=main_resume, save_every=save_every)
    if config.anchor_epochs and not main_resume:
        phase = _tune_anchors(net, batches, config, world, options, resume, progress)
        if phase.interrupted:
            return replace(phase, anchors_before=before)
    if not main_resume and ls_init > 0:
        x, _ = train.tensors(ls_init, seed=config.seed, num_workers=workers)
        init_least_squares(net, x, progress=progress and world.is_main)
    validation = val and Validation(net, val, max_images=val_images, seed=config.seed)
    desc = "training the SN-Net" if progress else None
    options = replace(
        options, progress=progress, val=validation, val_every=val_every, teacher=teacher, desc=desc
    )
    result = run_loop(net, batches, config, world, options)
    result.anchors_before = before
    if not result.interrupted:
        result.anchors_after = _anchors_after(net, score, run_dir, world)
    return result


def check_run_dir(
    run_dir: str | Path | None, resume: bool, save_every: int, ls_init: int, workers: int
) -> tuple[Path | None, bool]:
    """Every check of ``run_dir`` and the run's options that needs neither network nor data
    (:func:`snnet.train.checkpoint.check_run`), and whether the SN-Net's own run resumes: a run
    stopped while its anchors trained alone (``--anchor-epochs``) has no main checkpoint yet."""
    run = RunDir(run_dir) if run_dir is not None else None
    main_resume = resume and run is not None and run.checkpoint.is_file()
    phase_started = run is not None and RunDir(run.training / ANCHOR_PHASE).checkpoint.is_file()
    checked = check_run(
        run_dir,
        resume=resume and not (phase_started and not main_resume),
        save_every=save_every,
        ls_init=ls_init,
        num_workers=workers,
    )
    return checked, main_resume


def _check_inputs(
    net: SNNet, train: ImageSet, val: ImageSet | None, val_every: int, val_images: int | None
) -> None:
    check_data(net, train, "the training data")
    if val is not None:
        check_data(net, val, val.name or "the validation data")
    if val_every < 1:
        raise ValueError(f"--val-every must be at least 1 epoch, got {val_every}")
    if val_images is not None and val_images < 1:
        raise ValueError(f"--val-images must be at least 1, got {val_images}")


def _check_images(
    train: ImageSet, val: ImageSet | None, n: int | None, seed: int, *, say: bool
) -> ImageSet:
    """The images the anchors are scored on: a stratified sample of ``n`` held-out images, or of
    the training images (without augmentation) when there are none."""
    if val is not None:
        images = val.sample(n, seed=seed) if n else val
        if say:
            logger.info("scoring the anchors on %d images of %s", len(images), val.name)
        return images
    images = train.plain().sample(n or len(train), seed=seed)
    if say:
        logger.info(
            "no held-out images (root/val or --val): scoring the anchors on %d training images of %s "
            "instead, which flatters them",
            len(images),
            train.name,
        )
    return images


def _anchors_before(
    net: SNNet, score: Validation, run_dir: Path | None, world: World, *, resume: bool
) -> list[float] | None:
    """Each anchor's top-1 alone, measured now (a fresh run) or read back (a resumed one: its
    anchors may have trained already)."""
    path = RunDir(run_dir).summary if run_dir is not None else None
    if resume:  # measured when the run started: its anchors may have trained since
        saved = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        return saved.get("anchors_before")
    if net.task.dense:
        logger.info("the dense head starts untrained: the anchors are scored after training")
        return None
    scores = [s.value for s in score(net).values()]
    logger.info(_table(net, scores, None))
    if path is not None and world.is_main:
        _write_summary(path, net, score, before=scores, after=None)
    return scores


def _anchors_after(
    net: SNNet, score: Validation, run_dir: Path | None, world: World
) -> list[float]:
    scores = [s.value for s in score(net).values()]
    path = RunDir(run_dir).summary if run_dir is not None else None
    before = None
    if path is not None and path.is_file():
        before = json.loads(path.read_text()).get("anchors_before")
    if path is not None and world.is_main:
        _write_summary(path, net, score, before=before, after=scores)
    return scores


def _write_summary(
    path: Path,
    net: SNNet,
    score: Validation,
    *,
    before: list[float] | None,
    after: list[float] | None,
) -> None:
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(
        {
            "anchors": [a.name for a in net.anchors],
            "anchors_before": before,
            "anchors_after": after,
            "anchor_images": {"data": score.images.name, "images": len(score)},
        }
    )
    atomic_write(path, lambda f: json.dump(summary, f, indent=2))


def _table(net: SNNet, before: list[float], after: list[float] | None) -> str:
    """The anchors' top-1, alone and (when known) inside the trained SN-Net, as the demo prints."""
    if after is None:
        lines = ["anchor accuracy, standalone (before training):"]
        lines += [f"  {a.name:<24} {b:6.2f} %" for a, b in zip(net.anchors, before, strict=True)]
        return "\n".join(lines)
    return anchor_table([a.name for a in net.anchors], before, after)


def anchor_table(names: list[str], before: list[float], after: list[float]) -> str:
    """``name  before % -> after % (change)`` per anchor: how much each anchor kept."""
    lines = ["anchor accuracy, standalone -> inside the trained SN-Net:"]
    width = max(14, *(len(n) for n in names))
    for name, b, a in zip(names, before, after, strict=True):
        lines.append(f"  {name:<{width}} {b:6.2f} % -> {a:6.2f} % ({a - b:+.2f})")
    return "\n".join(lines)


def _tune_anchors(
    net: SNNet,
    batches: EpochBatches,
    config: TrainConfig,
    world: World,
    options: LoopOptions,
    resume: bool,
    progress: bool,
) -> TrainResult:
    """Each anchor fine-tuned alone (its own path drawn at every step, one anchor a step) for
    ``config.anchor_epochs`` epochs of its own, in the run directory ``RUN/anchors``; a run
    already finished there is read back instead."""
    n = len(net.anchors)
    tune = replace(
        config,
        epochs=config.anchor_epochs * n,
        steps=None,
        anchor_epochs=0,
        sampling="uniform",
        distill="none",
        cache_teachers=False,
        anchor_probability=None,
    )
    phase_dir = RunDir(options.run_dir).training / ANCHOR_PHASE if options.run_dir else None
    has_checkpoint = phase_dir is not None and RunDir(phase_dir).checkpoint.is_file()
    if has_checkpoint and not resume:
        check_run(phase_dir)  # the error that says to pass --resume
    phase = replace(
        options,
        run_dir=phase_dir,
        resume=has_checkpoint,
        progress=progress,
        stitches=[Stitch.anchor(i) for i in range(n)],
        desc="fine-tuning the anchors alone" if progress else None,
    )
    if has_checkpoint and _finished(phase_dir):
        from snnet.serialize import load_saved_state

        load_saved_state(net, load_checkpoint(phase_dir)["model"])
        return TrainResult(net, 0, 0)
    result = run_loop(net, batches, tune, world, phase)
    return replace(result, stitches=[], losses=[])


def _finished(run_dir: Path) -> bool:
    record = RunDir(run_dir).train_record
    if not record.is_file():
        return False
    saved = json.loads(record.read_text())
    return saved.get("step") == saved.get("total_steps")


def check_free_space(net: SNNet, run_dir: Path | None, config: TrainConfig) -> None:
    """Refuse a run whose files would not fit in the free space of ``run_dir``'s file system:
    the network (``model/``), a checkpoint (weights, optimizer moments) and a temporary copy of
    the largest while it is written."""
    if run_dir is None:
        return
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    moments = sum(p.numel() * 4 * 2 for p in net.parameters() if p.requires_grad)
    need = 2 * weights + moments + max(weights, weights + moments)
    if config.distill != "none":
        need += weights  # the teachers' copy of the anchors
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < need:
        raise OSError(
            f"--out {run_dir}: this run writes about {need / 2**20:.0f} MiB of checkpoints but "
            f"only {free / 2**20:.0f} MiB are free there: free some space or choose another --out"
        )
