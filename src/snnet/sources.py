"""Where anchors come from: timm names, local checkpoint files, family presets, or your modules."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snnet import zoo
from snnet.adapters import Anchor, as_anchor
from snnet.presets import PRESETS


def _zoo_anchor(source: dict[str, Any], pretrained: bool) -> nn.Module:
    return zoo.create_demo_anchor(source["name"], pretrained=pretrained)


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
    **kwargs: Any,
) -> Anchor:
    """A timm model as an anchor.

    ``pretrained=True`` takes timm's weights (downloaded by timm where a hub is reachable);
    ``checkpoint`` loads a local ``.pth`` / ``.safetensors`` file instead. With ``num_classes``
    different from the weights', timm drops the classifier as usual. ``device="meta"`` builds the
    model without memory or initialisation: enough to count costs, instantly.

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
        overlay = {"file": str(path)}
        classes = _checkpoint_classes(name, path)
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
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = _create(name, pretrained, kwargs)
    except (RuntimeError, OSError, ValueError) as e:  # no hub, bad file, wrong architecture
        if checkpoint is not None:
            raise ValueError(f"could not load {checkpoint} into {name}: {e}") from e
        if pretrained:
            raise RuntimeError(
                f"could not fetch pretrained weights for {name} ({type(e).__name__}: {e}). "
                f"Offline? Give a local file as '{name}=PATH' (CLI) or checkpoint=PATH, "
                "or use pretrained=False"
            ) from e
        raise
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


def _checkpoint_classes(name: str, path: Path) -> int | None:
    """Rows of the classifier weight stored in a checkpoint file, if it has one."""
    import timm

    classifier = timm.models.get_pretrained_cfg(name)
    classifier = getattr(classifier, "classifier", None) if classifier is not None else None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    if not classifier:
        return None
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:
        raise ValueError(f"could not read checkpoint {path}: {e}") from e
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None else None


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
    **kwargs: Any,
) -> tuple[list[Anchor], dict[str, Any]]:
    """Anchors from a preset name, or from a list of timm names (``name=PATH`` loads a local
    checkpoint), models or anchors; also returns the preset's stitching options.

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
    for spec in specs:
        if isinstance(spec, nn.Module):
            anchors.append(as_anchor(spec))
            continue
        name, _, path = str(spec).partition("=")
        if name in SOURCES:
            anchor = from_source({"kind": name, "name": path or name}, pretrained=True)
            _check_fixed(anchor, str(spec), kwargs)
            anchors.append(anchor)
            continue
        anchors.append(timm_anchor(name, pretrained=pretrained, checkpoint=path or None, **kwargs))
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


def _check_fixed(anchor: Anchor, spec: str, kwargs: dict[str, Any]) -> None:
    """An anchor rebuilt from its source (e.g. a zoo anchor) keeps the input size and classifier
    its weights were trained with: asking for others is an error, never silently ignored."""
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
