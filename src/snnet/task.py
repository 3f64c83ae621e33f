"""What a network predicts, as a value: :class:`Task` (classification, semantic segmentation or
monocular depth), recorded in a saved network's config.

A task says what the head outputs and how it is scored. Classification is the anchors' own
heads; a dense task replaces them by one head shared by every stitch (:mod:`snnet.dense`), which
reads feature ``levels`` of whichever anchors a stitch runs. No torch at import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

TASKS = ("classification", "segmentation", "depth")
DENSE = ("segmentation", "depth")
#: Decoders of a dense head: ``naive`` (SETR-naive: the last level only) and ``fpn`` (a feature
#: pyramid over the levels: lateral 1×1 convolutions, top-down sums, 3×3 smoothing, fused).
HEADS = ("naive", "fpn")
#: mmsegmentation's ignore index: pixels with this label count in neither loss nor metric.
IGNORE_INDEX = 255
#: Fields of :data:`snnet.measure.results.FIELDS` each task measures, its primary one first.
METRICS = {
    "classification": ("top1", "top5"),
    "segmentation": ("miou", "pixel_acc"),
    "depth": ("absrel", "rmse", "delta1"),
}


@dataclass(frozen=True)
class Task:
    """``kind``: ``classification`` (the anchors' own heads), ``segmentation`` (``num_classes``
    per pixel; label 255 is ignored; ``reduce_zero_label``: mmsegmentation's, label 0 becomes
    255 and the others move down by one) or ``depth`` (metres per pixel, in ``(0, max_depth]``;
    0 in a target marks a pixel without depth).

    A dense task's head (``head``: ``naive`` or ``fpn``) reads ``levels`` feature levels
    (default 1 for ``naive``, 4 for ``fpn``) and works at ``channels`` channels.

    Example:
        >>> task = Task("segmentation", num_classes=11, head="fpn")
        >>> task.levels, task.metric, Task.from_json(task.to_json()) == task
        (4, 'miou', True)
    """

    kind: str = "classification"
    num_classes: int | None = None
    head: str = "naive"
    levels: int | None = None
    channels: int = 64
    max_depth: float = 10.0
    reduce_zero_label: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"unknown task {self.kind!r}; choose {', '.join(TASKS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose {', '.join(HEADS)}")
        if self.levels is None:
            object.__setattr__(self, "levels", 1 if self.head == "naive" else 4)
        if self.levels < 1 or (self.head == "naive" and self.levels != 1):
            raise ValueError(
                f"the {self.head} head reads {'1 level' if self.head == 'naive' else '1 or more levels'}"
                f", got levels={self.levels}"
            )
        if self.kind == "segmentation" and not (self.num_classes and self.num_classes >= 2):
            raise ValueError(
                f"segmentation needs 2 or more classes (--num-classes N or --classes ...), got "
                f"{self.num_classes}"
            )
        if self.kind == "segmentation" and self.num_classes > IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX} classes: label {IGNORE_INDEX} is ignored")
        if self.channels < 1 or not self.max_depth > 0:
            raise ValueError("the head needs channels >= 1 and max_depth > 0")

    @property
    def dense(self) -> bool:
        """Whether a head shared by every stitch predicts per pixel."""
        return self.kind in DENSE

    @property
    def metrics(self) -> tuple[str, ...]:
        """The result fields this task measures."""
        return METRICS[self.kind]

    @property
    def metric(self) -> str:
        """The field stitches are ranked and selected by (``top1``, ``miou`` or ``absrel``)."""
        return METRICS[self.kind][0]

    @property
    def outputs(self) -> int:
        """Channels the head predicts per pixel: one per class, or one depth."""
        return self.num_classes if self.kind == "segmentation" else 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Task:
        """Inverse of :meth:`to_json`; ``None`` (a network saved without a task) is
        classification."""
        if not d:
            return cls()
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown task keys {sorted(unknown)}; was it saved by a newer snnet?")
        return cls(**d)


def metric_of(kind: str | None) -> str:
    """The primary metric of a task kind (None: classification's ``top1``)."""
    return METRICS[kind or "classification"][0]
