"""Where anchors come from: timm names, local checkpoint files, family presets, or your modules."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snnet import zoo
from snnet.adapters import Anchor, as_anchor
from snnet.data.config import PREPROCESSING
from snnet.presets import PRESETS

logger = logging.getLogger(__name__)


def _zoo_anchor(source: dict[str, Any], pretrained: bool) -> nn.Module:
    size = source.get("img_size")
    return zoo.create_demo_anchor(source["name"], pretrained=pretrained, img_size=size)


#: Builders for anchors that are not timm names, keyed by the ``kind`` of an anchor's source.
#: Each takes the source dict and ``pretrained`` and returns a model.
SOURCES: dict[str, Callable[[dict[str, Any], bool], nn.Module]] = {"zoo": _zoo_anchor}


def from_zoo(anchors: Sequence[Any]) -> bool:
    """Whether every anchor is one of snnet's shipped Fashion-MNIST anchors (its recorded source
    is the zoo): their preprocessing and class names are known without a data record."""
    return all((getattr(a, "source", None) or {}).get("kind") == "zoo" for a in anchors)


def timm_anchor(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> Anchor:
    """A timm model as an anchor.

    ``pretrained=True`` takes timm's weights (downloaded by timm where a hub is reachable);
    ``checkpoint`` loads a local ``.pth`` / ``.safetensors`` file instead, with the
    preprocessing of a hub-style ``config.json`` beside it when there is one. Weights whose
    classifier or position embeddings do not fit ``num_classes`` / ``img_size`` are re-headed:
    the rest loads, the classifier is initialised anew and the position embeddings resampled,
    and one warning line says so. Everything initialised here draws from ``seed`` (torch's
    global generator when None), so two builds give the same weights. ``device="meta"`` builds
    the model without memory or initialisation: enough to count costs, instantly.

    Example:
        >>> anchor = timm_anchor("deit_small_patch16_224", checkpoint="deit_s.pth", num_classes=10)
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models()."
        raise ValueError(f"unknown timm model {name!r}.{hint}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    source = {"kind": "timm", "name": name, "kwargs": dict(kwargs)}
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} for {name} does not exist")
        overlay = {"file": str(path), **hub_preprocessing(path)}
        shapes = _checkpoint_shapes(path)
        classes = _checkpoint_classes(name, shapes)
        if classes is not None and classes == kwargs.get("num_classes", classes):
            # timm drops the classifier when num_classes differs from the hub's config; a local
            # file whose head already has the requested size keeps it.
            overlay["num_classes"] = classes
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    if device is not None and str(device) == "meta" and pretrained:
        raise ValueError(
            "a model on the meta device holds no weights; drop pretrained or the device"
        )
    try:
        with (
            torch.device(device) if device is not None else contextlib.nullcontext(),
            torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext(),
        ):
            if seed is not None:
                torch.manual_seed(seed)
            model = _create(name, pretrained, kwargs)
    except Exception as e:  # no hub (the hub's own error types vary), bad file, wrong shapes
        if checkpoint is not None:
            raise ValueError(f"could not load {checkpoint} into {name}: {_first_line(e)}") from e
        if pretrained:
            raise OSError(
                f"could not fetch pretrained weights for {name} ({type(e).__name__}: "
                f"{_first_line(e)}). Offline? Give a local file as '{name}=PATH' (CLI) or "
                "checkpoint=PATH, or use pretrained=False"
            ) from e
        raise
    if checkpoint is not None:
        _report_reheading(name, Path(checkpoint), shapes, model)
    input_size = None
    if img_size is not None:  # CNNs take any size: the anchor, not the model, must know it
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        input_size = (int(kwargs.get("in_chans", 3)), int(h), int(w))
    return as_anchor(model, name=name, source=source, input_size=input_size)


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        # Models without a fixed input size (CNNs such as ResNet) do not take img_size.
        if "img_size" not in kwargs or "img_size" not in str(e):
            raise
        rest = {k: v for k, v in kwargs.items() if k != "img_size"}
        return timm.create_model(name, pretrained=pretrained, **rest)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a checkpoint file stores (timm's reader: .pth or .safetensors,
    a plain state dict or one under ``state_dict`` / ``model``)."""
    import timm

    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:
        raise ValueError(f"could not read checkpoint {path}: {_first_line(e)}") from e
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _classifier_name(name: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    classifier = getattr(cfg, "classifier", None) if cfg is not None else None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    return classifier or None


def _checkpoint_classes(name: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Rows of the classifier weight stored in a checkpoint, if it has one."""
    classifier = _classifier_name(name)
    weight = shapes.get(f"{classifier}.weight") if classifier else None
    return int(weight[0]) if weight else None


def _report_reheading(
    name: str, path: Path, shapes: dict[str, tuple[int, ...]], model: nn.Module
) -> None:
    """One warning line when the checkpoint's classifier or position embeddings did not fit."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    classifier = _classifier_name(name)
    notes = []
    head = f"{classifier}.weight" if classifier else None
    if head in own and head in shapes and own[head] != shapes[head]:
        notes.append(
            f"classifier initialised anew for {own[head][0]} classes (the checkpoint's "
            f"predicts {shapes[head][0]})"
        )
    elif head in own and head not in shapes:
        notes.append("classifier initialised anew (the checkpoint has none)")
    resized = [k for k in own if k in shapes and k != head and own[k] != shapes[k]]
    resized = [k for k in resized if not (classifier and k.startswith(classifier + "."))]
    for key in resized:
        notes.append(f"{key} resampled from {_shape(shapes[key])} to {_shape(own[key])}")
    if notes:
        logger.warning("%s (%s): %s", name, path, "; ".join(notes))


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def hub_preprocessing(checkpoint: str | Path) -> dict[str, Any]:
    """The preprocessing in a hub-style ``config.json`` beside ``checkpoint`` (timm's
    ``push_to_hub`` layout: ``{"architecture": ..., "pretrained_cfg": {"mean": ...}}``), or {}.
    snnet's own ``config.json`` (a saved network, with a ``format`` key) gives {}."""
    path = Path(checkpoint).with_name("config.json")
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    cfg = doc.get("pretrained_cfg") if isinstance(doc, dict) and "format" not in doc else None
    if not isinstance(cfg, dict):
        return {}
    return {k: cfg[k] for k in PREPROCESSING if cfg.get(k) is not None}


def from_source(source: dict[str, Any], *, pretrained: bool = False) -> Anchor:
    """Rebuild an anchor from the ``source`` recorded in a saved network's config."""
    kind = source.get("kind")
    if kind == "timm":
        return timm_anchor(source["name"], pretrained=pretrained, **source.get("kwargs", {}))
    if kind in SOURCES:
        return as_anchor(SOURCES[kind](source, pretrained), source=source, name=source.get("name"))
    raise ValueError(
        f"cannot rebuild an anchor of kind {kind!r}; pass the anchors to load() yourself"
    )


def resolve_anchors(
    specs: str | Sequence[str | Path | nn.Module | Anchor],
    *,
    pretrained: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[list[Anchor], dict[str, Any]]:
    """Anchors from a preset name, or from a list of timm names (``name=PATH`` loads a local
    checkpoint), models or anchors; also returns the preset's stitching options. Anchor ``i``
    initialises whatever its weights do not hold (a random-init model, a new classifier) from
    ``seed`` and ``i``, so two calls give the same anchors.

    Example:
        >>> anchors, options = resolve_anchors("deit", num_classes=10, img_size=32)
    """
    options: dict[str, Any] = {}
    if isinstance(specs, str):
        specs = [specs]
    if len(specs) == 1 and isinstance(specs[0], str) and specs[0] in PRESETS:
        names, options = PRESETS[specs[0]]
        specs = list(names)
    elif any(isinstance(s, str) and s in PRESETS for s in specs):
        raise ValueError("a preset name stands alone; list timm names to build your own family")
    if len(specs) == 1 and isinstance(specs[0], str) and "=" not in specs[0]:
        _check_preset_or_model(specs[0])
    size = kwargs.get("img_size")
    if isinstance(size, int) and size < 1:
        raise ValueError(f"img_size (--img-size) must be a positive number of pixels, got {size}")
    anchors = []
    for i, spec in enumerate(specs):
        if isinstance(spec, nn.Module):
            anchors.append(as_anchor(spec))
            continue
        name, _, path = str(spec).partition("=")
        if name in SOURCES:
            source = {"kind": name, "name": path or name}
            if name == "zoo" and size is not None:  # resampled to the size: see _zoo_anchor
                source["img_size"] = size
            anchor = from_source(source, pretrained=True)
            _check_fixed(anchor, str(spec), kwargs)
            if "img_size" in source:
                _report_resampling(anchor, str(spec))
            anchors.append(anchor)
            continue
        anchor = timm_anchor(
            name,
            pretrained=pretrained,
            checkpoint=path or None,
            seed=seed * 1_000 + i,
            **kwargs,
        )
        anchors.append(anchor)
    return anchors, dict(options)


def _check_preset_or_model(name: str) -> None:
    """A lone unknown name is most likely a mistyped preset: say so, with suggestions."""
    import timm

    if name in SOURCES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, [*PRESETS, *timm.list_models()], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor a timm model.{hint} A family "
        "is a preset or two or more timm names, small to large"
    )


def _report_resampling(anchor: Anchor, spec: str) -> None:
    rows, cols = anchor.model.patch_embed.grid_size
    zoo_cfg = zoo.demo_anchor_config(anchor.source["name"])
    side = zoo_cfg.img_size // zoo_cfg.patch_size
    if (rows, cols) != (side, side):
        logger.warning(
            "%s: pos_embed resampled from %d×%d to %d×%d patches for %d×%d images",
            spec, side, side, rows, cols, *anchor.input_size[1:],
        )  # fmt: skip


def _check_fixed(anchor: Anchor, spec: str, kwargs: dict[str, Any]) -> None:
    """An anchor rebuilt from its source keeps the input size and classifier its weights were
    trained with (a zoo anchor resamples its position embeddings to another size instead):
    asking for others is an error, never silently ignored."""
    size, classes = kwargs.get("img_size"), kwargs.get("num_classes")
    c, h, w = anchor.input_size
    wanted = (size, size) if isinstance(size, int) else tuple(size or (h, w))
    if wanted != (h, w):
        raise ValueError(
            f"{spec} takes {c}×{h}×{w} images and cannot be resized: drop --img-size {size} "
            "(img_size), or use timm anchors"
        )
    have = getattr(anchor.model, "num_classes", None)
    if classes is not None and have is not None and classes != have:
        raise ValueError(
            f"{spec} predicts {have} classes and its classifier cannot be replaced: drop "
            f"--num-classes {classes} (num_classes), or use timm anchors"
        )
