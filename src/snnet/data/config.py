"""How an image becomes the network's input, as values: :class:`DataConfig`, and the training
augmentation it records, :class:`Augment` (its transforms live in :mod:`snnet.data.augment`).

A network's ``DataConfig`` is resolved once from its anchors and the user's overrides
(:mod:`snnet.data.anchors`), recorded in the saved network's ``config.json`` under ``"data"``,
and read back by ``snnet evaluate``, ``snnet export`` and ``snnet serve``, so all of them
preprocess exactly as training did.

The transform has two halves. The per-image half (decode, resize, crop, augmentation) keeps
uint8 pixels; the elementwise half (to [0, 1], then mean/std) runs once per batch
(:meth:`DataConfig.normalize`): the one normalisation every path shares. uint8 pixels are also
4× smaller to queue or send between processes than floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: The fields of a DataConfig a user may set (``--mean`` ..., ``--data-config FILE.json``).
PREPROCESSING = ("mean", "std", "crop_pct", "crop_mode", "interpolation")
AUGMENTS = ("none", "light", "timm")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")

# Fashion-MNIST's statistics (of the 60k training images, pixels scaled to [0, 1]): the
# normalisation snnet's shipped demo anchors were trained with.
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
    """``none``, ``light`` (random shifts of up to 1/16 of the side with zero fill, flips only
    with ``hflip``: a flip changes the meaning of digits and text) or ``timm`` (timm's ImageNet
    recipe: random resized crop of ``scale``, flips, colour jitter, optional ``auto_augment``).

    ``None`` knobs take the kind's default (timm: scale (0.08, 1), hflip 0.5, colour jitter 0.4;
    light: hflip 0). ``auto``: the kind :func:`default_augment` picks for the data.

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

    @property
    def active(self) -> bool:
        """Whether it changes any image."""
        return self.kind in ("light", "timm")

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
    """``channels`` and ``size`` (H, W) of the input; timm's resize-then-crop (the short side to
    ``size / crop_pct`` with ``interpolation``, then a ``crop_mode`` crop to ``size``);
    ``mean``/``std`` normalisation; the ``classes`` when known. ``augment`` records what training
    applied on top (inference never augments). Two configs are equal when they preprocess alike
    (``classes`` and ``augment`` are records, not compared).

    Example:
        >>> cfg = DataConfig(3, (224, 224), (0.5,) * 3, (0.5,) * 3, crop_pct=1.0)
        >>> x = cfg(Image.open("cat.jpg"))            # (3, 224, 224) float
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
                f"the network takes {self.channels}-channel images: give {self.channels} values "
                f"of --mean and --std, got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"--std values must be positive, got {list(self.std)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop-pct must lie in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown --interpolation {self.interpolation!r}; choose one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise ValueError(
                f"unknown --crop-mode {self.crop_mode!r}; choose one of {', '.join(CROP_MODES)}"
            )

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to before the transform."""
        return "L" if self.channels == 1 else "RGB"

    @classmethod
    def fashion_mnist(cls) -> DataConfig:
        """Fashion-MNIST as snnet reads it: 1×28×28, its own statistics, no resizing."""
        return cls(
            1,
            (28, 28),
            (FASHION_MNIST_MEAN,),
            (FASHION_MNIST_STD,),
            interpolation="bicubic",
            classes=FASHION_MNIST_CLASSES,
        )

    def describe(self) -> str:
        """One line a person reads: what every image goes through."""
        c, h, w = self.input_size
        crop = {
            "center": f"short side to {round(min(h, w) / self.crop_pct)} px, centre crop",
            "squash": f"squashed to {round(h / self.crop_pct)}×{round(w / self.crop_pct)}, "
            "centre crop",
            "border": "resized inside the frame, border padded",
        }[self.crop_mode]
        values = ", ".join(f"{v:.4g}" for v in self.mean), ", ".join(f"{v:.4g}" for v in self.std)
        return (
            f"{c}×{h}×{w}, {crop} (crop_pct {self.crop_pct:g}, {self.interpolation}), "
            f"mean ({values[0]}), std ({values[1]})"
        )

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

    # -- the transform -------------------------------------------------------------------------
    def pixels(self, img: Image.Image) -> torch.Tensor:
        """One image resized and cropped for the network, not yet normalised: a (C, H, W) uint8
        tensor (normalise a batch of them with :meth:`normalize`). The resize and crop are
        timm's evaluation transform, on PIL alone (:func:`snnet.data.geometry.pixels_array`)."""
        import torch

        from snnet.data.geometry import pixels_array

        return torch.from_numpy(pixels_array(img, self))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ((C, H, W) or a batch of them), on any device, to the network's float
        input: ``(x / 255 - mean) / std``, the one normalisation of snnet."""
        import torch

        if x.dtype != torch.uint8:
            raise TypeError(f"normalize takes uint8 pixels (DataConfig.pixels), got {x.dtype}")
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x.to(torch.get_default_dtype()).div(255).sub_(mean).div_(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """One image through the evaluation transform: a (C, H, W) float tensor."""
        return self.normalize(self.pixels(img))


def pil_steps(steps: list[Any]) -> list[Any]:
    """A timm transform's steps without its final conversion to a normalised tensor."""
    names = [type(t).__name__ for t in steps[-2:]]
    if names not in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"]):
        raise RuntimeError(f"unexpected timm transform ending in {names}")
    return steps[:-2]


def to_uint8(img: Image.Image) -> torch.Tensor:
    """A PIL image as a (C, H, W) uint8 tensor."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
