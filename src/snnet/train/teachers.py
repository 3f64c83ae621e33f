"""Soft distillation from the network's own anchors: frozen copies of the anchors as the run
started, and their logits of every training image computed once (:class:`TeacherLogits`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from snnet.data.batches import EpochBatches, in_order, load_batches
from snnet.files import atomic_write
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.train.config import TrainConfig
from snnet.train.distributed import World

#: The anchors' weights at the start of a run with soft distillation: the teachers' source on resume.
TEACHER_FILE = "teacher.safetensors"


def teacher_anchor(stitch: Stitch, config: TrainConfig, num_anchors: int) -> int:
    """The anchor whose frozen copy teaches ``stitch`` under soft distillation: the anchor the
    stitch ends in (``"end"``; an anchor's own path is taught by its starting self, which holds
    it near its pretrained function), or the largest, last anchor (``"largest"``)."""
    return stitch.route[-1] if config.distill == "end" else num_anchors - 1


def make_teachers(net: SNNet, world: World, run_dir: Path | None, *, resume: bool) -> SNNet:
    """A frozen copy of ``net`` whose anchors are the anchors as this run started (after
    least-squares init, which moves only the stitching layers). A fresh run writes those weights
    to ``run_dir/teacher.safetensors``; a resumed run reads them back, so its teachers are the
    ones the interrupted run used. The copy never enters the checkpoint."""
    from safetensors.torch import load_file, save_file

    teachers = copy.deepcopy(net)
    path = RunDir(run_dir).training / TEACHER_FILE if run_dir is not None else None
    if resume and path is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"--resume with --distill needs the run's {path} (the anchors as the run started); "
                "it is missing: start a new run"
            )
        teachers.anchors.load_state_dict(load_file(str(path)))
    elif path is not None and world.is_main:
        state = {k: v.detach().cpu().contiguous() for k, v in net.anchors.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp), mode="path")
    return teachers.eval().requires_grad_(False)


class TeacherLogits:
    """The frozen teachers' logits of every training image, each anchor's computed once, the
    first time it teaches (with ``distill="largest"`` only the last anchor ever does).

    Why: a teacher is frozen and un-augmented images are the same every epoch, so its logits
    are too; on the demo family the teacher's forward was a third of a step. Computed in fixed
    chunks in image order, so a resumed run reads exactly what the uninterrupted one read (but
    not bit for bit what a forward over the step's batch would give).
    """

    def __init__(
        self, teachers: SNNet, batches: EpochBatches, device: torch.device, autocast: Any
    ) -> None:
        images = getattr(batches, "images", None)
        if images is None or getattr(images, "augment", True) is not None:
            raise ValueError(
                "cache_teachers needs training images without augmentation (their logits are "
                "the same every epoch); drop --cache-teachers, or train without --augment"
            )
        self.teachers, self.batches = teachers, batches
        self.device, self.autocast = device, autocast
        self.logits: dict[int, torch.Tensor] = {}  # anchor -> (N, classes)
        self._order: tuple[int, torch.Tensor] | None = None

    def __call__(self, anchor: int, epoch: int, position: int) -> torch.Tensor:
        """Anchor ``anchor``'s logits of batch ``position`` of ``epoch``."""
        if anchor not in self.logits:
            images = self.batches.images
            rows = in_order(len(images), 1024)
            stitch = Stitch.anchor(anchor)
            with torch.no_grad(), self.autocast:
                self.logits[anchor] = torch.cat(
                    [
                        self.teachers(x.to(self.device), stitch=stitch)
                        for x, _ in load_batches(images, rows, num_workers=self.batches.num_workers)
                    ]
                ).float()
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.batches.order(epoch).to(self.device))
        return self.logits[anchor][self._order[1][position]]
