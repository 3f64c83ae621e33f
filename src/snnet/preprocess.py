"""What an image goes through before the network sees it: :class:`DataConfig` (size, crop,
normalisation, class names) and :class:`Augment` (the training-only randomness).

A network's ``DataConfig`` is taken once from timm's data config of its anchors
(``timm.data.resolve_model_data_config``), recorded by ``snnet train`` in the saved network's
``config.json`` under ``"data"``, and read back by ``snnet evaluate``, ``snnet serve`` and anyone
preprocessing images for an exported stitch, so all of them use exactly what training used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image

    from snnet.network import SNNet

AUGMENTS = ("none", "light", "timm")

# Fashion-MNIST's statistics (of the 60k training images, pixels scaled to [0, 1]): the
# normalisation snnet's demo anchors (the zoo family) were trained with.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: ``none`` (the evaluation transform), ``light`` (random shifts
    of up to 1/16 of the side, flips only with ``hflip``: a flip changes the meaning of digits and
    text) or ``timm`` (timm's ImageNet recipe: random resized crop of ``scale``, flips,
    colour jitter, optional ``auto_augment``, via ``timm.data.create_transform``).

    ``None`` knobs take the kind's default (timm: scale (0.08, 1), hflip 0.5, colour jitter 0.4;
    light: hflip 0). ``auto``: the kind :func:`default_augment` picks for the data, with these
    knobs.

    Example:
        >>> Augment("timm", scale=(0.5, 1.0), auto_augment="rand-m9-mstd0.5")
    """

    kind: str = "none"
    scale: tuple[float, float] | None = None
    hflip: float | None = None
    color_jitter: float | None = None
    auto_augment: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*AUGMENTS, "auto"):
            raise ValueError(f"unknown augmentation {self.kind!r}; choose {', '.join(AUGMENTS)}")
        if self.hflip is None and self.kind in ("light", "timm"):  # equal values, equal recipes
            object.__setattr__(self, "hflip", 0.5 if self.kind == "timm" else 0.0)
        if self.kind == "none" and self.hflip:
            raise ValueError("--hflip needs an augmentation: add --augment light or timm")
        if self.hflip is not None and not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        only_timm = {"scale": self.scale, "color_jitter": self.color_jitter}
        only_timm["auto_augment"] = self.auto_augment
        given = [k.replace("_", "-") for k, v in only_timm.items() if v is not None]
        if given and self.kind != "timm":  # auto too: these knobs choose timm
            raise ValueError(
                f"--{', --'.join(given)} apply to timm's augmentation only: add --augment timm "
                f"(or drop them for --augment {self.kind})"
            )

    @property
    def flip(self) -> float:
        """Probability of a horizontal flip."""
        if self.hflip is not None:
            return self.hflip
        return 0.5 if self.kind == "timm" else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scale": list(self.scale) if self.scale else None,
            "hflip": self.flip,
            "color_jitter": self.color_jitter,
            "auto_augment": self.auto_augment,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Augment:
        scale = d.get("scale")
        return cls(
            d.get("kind", "none"),
            scale=tuple(scale) if scale else None,
            hflip=d.get("hflip"),
            color_jitter=d.get("color_jitter"),
            auto_augment=d.get("auto_augment"),
        )


@dataclass(frozen=True)
class DataConfig:
    """How an image becomes the network's input, as a value: ``channels`` and ``size`` (H, W),
    timm's resize-then-centre-crop (short side to ``size / crop_pct``, ``interpolation``),
    ``mean``/``std`` normalisation, and the ``classes`` when known. ``augment`` records what
    training applied on top (inference never augments).

    Calling it on a PIL image gives the evaluation transform's ``(C, H, W)`` float tensor;
    :meth:`transform` gives the torchvision transform itself, augmenting or not. Two configs are
    equal when they preprocess alike (``classes`` and ``augment`` are records, not compared).

    Example:
        >>> cfg = DataConfig.for_anchors(net.anchors)
        >>> x = cfg(Image.open("cat.jpg"))            # (3, 224, 224)
        >>> DataConfig.from_json(cfg.to_json()) == cfg
        True
    """

    channels: int
    size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    crop_mode: str = "center"
    classes: tuple[str, ...] | None = field(default=None, compare=False)
    augment: Augment | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values, got {len(self.mean)} and {len(self.std)}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to before the transform."""
        return "L" if self.channels == 1 else "RGB"

    # -- where a config comes from -------------------------------------------------------------
    @classmethod
    def fashion_mnist(cls) -> DataConfig:
        """Fashion-MNIST as snnet reads it: 1×28×28, its own statistics, no resizing."""
        return cls(
            1,
            (28, 28),
            (FASHION_MNIST_MEAN,),
            (FASHION_MNIST_STD,),
            interpolation="bicubic",  # what evaluating other image sizes has always used
            classes=FASHION_MNIST_CLASSES,
        )

    @classmethod
    def for_anchors(cls, anchors: Sequence[Any]) -> DataConfig:
        """The preprocessing the anchors expect: timm's data config of the first (smallest)
        anchor at the anchors' own input size. snnet's demo anchors (source kind ``zoo``) were
        trained on Fashion-MNIST's statistics; other one-channel anchors take the average of the
        RGB statistics, because timm adapts an RGB stem to one channel by summing its filters
        over the channels, so a grey pixel then stands for all three."""
        from timm.data import resolve_model_data_config

        from snnet.sources import from_zoo

        c, h, w = (int(v) for v in anchors[0].input_size)
        if from_zoo(anchors):
            fm = cls.fashion_mnist()
            return replace(fm, size=(h, w), mean=fm.mean * c, std=fm.std * c)
        cfg = resolve_model_data_config(anchors[0].model)
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        if len(mean) != c:
            mean, std = (sum(mean) / len(mean),) * c, (sum(std) / len(std),) * c
        return cls(
            c,
            (h, w),
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            interpolation=cfg.get("interpolation") or "bilinear",
            crop_mode=cfg.get("crop_mode") or "center",
        )

    @classmethod
    def of_network(cls, net: SNNet, saved: dict[str, Any] | None = None) -> DataConfig:
        """``net``'s preprocessing: the one recorded at training (``net.data_config``, or
        ``saved["data"]`` of its ``config.json``). Networks saved before snnet recorded it get
        what training and evaluation used then: Fashion-MNIST's statistics for the demo anchors,
        0.5/0.5 for other one-channel anchors, timm's data config for RGB ones."""
        recorded = getattr(net, "data_config", None)
        if recorded is not None:
            return recorded
        data = (saved or {}).get("data")
        if data and "channels" in data:
            return cls.from_json(data)
        from snnet.sources import from_zoo

        cfg = cls.for_anchors(net.anchors)
        if cfg.channels == 1 and not from_zoo(net.anchors):
            cfg = replace(cfg, mean=(0.5,), std=(0.5,))
        if data:  # a partial record (mean/std/crop_pct, classes) written by hand
            cfg = replace(
                cfg,
                mean=tuple(data.get("mean", cfg.mean)),
                std=tuple(data.get("std", cfg.std)),
                crop_pct=float(data.get("crop_pct", cfg.crop_pct)),
                classes=tuple(data["classes"]) if data.get("classes") else cfg.classes,
            )
        return cfg

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "crop_mode": self.crop_mode,
            "classes": list(self.classes) if self.classes is not None else None,
            "augment": self.augment.to_json() if self.augment is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            int(d["channels"]),
            (int(d["size"][0]), int(d["size"][1])),
            tuple(float(v) for v in d["mean"]),
            tuple(float(v) for v in d["std"]),
            crop_pct=float(d.get("crop_pct", 1.0)),
            interpolation=d.get("interpolation", "bilinear"),
            crop_mode=d.get("crop_mode", "center"),
            classes=tuple(d["classes"]) if d.get("classes") else None,
            augment=Augment.from_json(d["augment"]) if d.get("augment") else None,
        )

    # -- transforms ----------------------------------------------------------------------------
    def transform(self, augment: Augment | None = None):
        """The torchvision transform, PIL image (in :attr:`mode`) -> normalised (C, H, W)
        tensor: timm's evaluation transform, or a training one for ``augment``."""
        from timm.data import create_transform

        common = dict(
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )
        if augment is not None and augment.kind == "timm":
            jitter = augment.color_jitter if augment.color_jitter is not None else 0.4
            return create_transform(
                **common,
                is_training=True,
                scale=augment.scale,
                hflip=augment.flip,
                color_jitter=jitter if self.channels == 3 else None,  # jitter assumes RGB
                auto_augment=augment.auto_augment,
            )
        evaluate = create_transform(
            **common, is_training=False, crop_pct=self.crop_pct, crop_mode=self.crop_mode
        )
        if augment is None or augment.kind == "none":
            return evaluate
        from torchvision import transforms as T

        # light: the evaluation transform's resize and crop, then a random shift (zero padding
        # and a random crop back to size) and an optional flip, before conversion to a tensor
        steps = list(evaluate.transforms)
        cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
        pad = max(1, round(min(self.size) / 16))
        shift = [T.RandomCrop(self.size, padding=pad)]
        if augment.flip > 0:
            shift.append(T.RandomHorizontalFlip(augment.flip))
        return T.Compose(steps[:cut] + shift + steps[cut:])

    @functools.cached_property
    def _evaluate(self):
        return self.transform()

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """One image through the evaluation transform: a (C, H, W) float tensor."""
        return self._evaluate(img.convert(self.mode))

    # The evaluation transform in two halves, for serving: the per-image half (resize and crop,
    # on PIL images) keeps uint8 pixels, and the elementwise half (to [0, 1], then mean/std)
    # runs once on a whole batch, on the network's device. normalize(stack(pixels(img)...))
    # equals stack(self(img)...) bit for bit: the same float operations in the same order.
    @functools.cached_property
    def _pil_steps(self):
        steps = list(self._evaluate.transforms)
        names = [type(t).__name__ for t in steps[-2:]]
        if names not in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"]):
            raise RuntimeError(f"unexpected evaluation transform {self._evaluate}")
        return steps[:-2]

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """One image resized and cropped as :meth:`__call__` does, not yet normalised: a
        (C, H, W) uint8 tensor, 4× smaller than the float one (for queues and transfers)."""
        import numpy as np

        img = img.convert(self.mode)
        for step in self._pil_steps:
            img = step(img)
        x = torch.from_numpy(np.array(img, dtype=np.uint8))
        return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels from :meth:`pixels` ((C, H, W) or a batch of them), on any device, to
        the network's float input."""
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize takes uint8 pixels (DataConfig.pixels), got {x.dtype}")
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x.to(torch.get_default_dtype()).div(255).sub_(mean).div_(std)


def default_augment(
    config: DataConfig, image_sizes: Sequence[tuple[int, int, str]], *, hflip: float | None = None
) -> Augment:
    """The augmentation for data whose images have ``(width, height, PIL mode)``
    ``image_sizes`` (a few samples): timm's ImageNet recipe only for natural RGB images of
    at least 128 px fed to RGB anchors; none for small or grey images, whose content a random
    crop of 8 % of the area would destroy, and where even ``light``'s shifts cost accuracy in
    the few epochs SN-Net trains (measured on 32 px digits, see README). ``hflip`` overrides
    the kind's flip rate (a flip alone makes it ``light``)."""
    rgb = config.channels == 3 and all(
        m not in ("1", "L", "LA", "I", "I;16", "F") for *_, m in image_sizes
    )
    large = bool(image_sizes) and min(min(w, h) for w, h, _ in image_sizes) >= 128
    if rgb and large:
        return Augment("timm", hflip=hflip)
    return Augment("light", hflip=hflip) if hflip else Augment("none")
