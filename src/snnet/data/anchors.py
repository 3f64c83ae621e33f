"""The preprocessing a family of anchors expects, where each value comes from, and the user's
overrides: :func:`resolve_preprocessing`.

Each anchor says what it was trained with: snnet's shipped Fashion-MNIST anchors their own
statistics; a timm model its pretrained config (``model.pretrained_cfg``: timm's defaults for
the architecture, or the hub-style ``config.json`` found beside a local checkpoint). The user
overrides any value (``--mean``, ``--std``, ``--crop-pct``, ``--crop-mode``,
``--interpolation``, or ``--data-config FILE.json``), as timm's own scripts allow. Anchors whose
values disagree are an error that names both values and the option to set: one anchor's
preprocessing is never picked silently for the others.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snnet.data.config import PREPROCESSING, DataConfig
from snnet.sources import from_zoo, hub_preprocessing

#: Where a hub-style config.json (timm's ``push_to_hub``) keeps the preprocessing.
HUB_KEY = "pretrained_cfg"


@dataclass(frozen=True)
class Preprocessing:
    """A resolved :class:`DataConfig` and, for each value a user may set, where it came from.

    Example:
        >>> pre = resolve_preprocessing(anchors, {"mean": (0.5,) * 3, "std": (0.5,) * 3})
        >>> print(pre.describe())
    """

    config: DataConfig
    origin: Mapping[str, str]

    def describe(self) -> str:
        """The resolved preprocessing and the origin of each value, for a person to check."""
        by_origin: dict[str, list[str]] = {}
        for key in PREPROCESSING:
            by_origin.setdefault(self.origin[key], []).append(key)
        lines = [f"preprocessing: {self.config.describe()}"]
        lines += [f"  {', '.join(keys)}: {where}" for where, keys in by_origin.items()]
        return "\n".join(lines)


def resolve_preprocessing(
    anchors: Sequence[Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    origin: Mapping[str, str] | None = None,
) -> Preprocessing:
    """The preprocessing of ``anchors`` (all at one input size), with ``overrides`` (any of
    ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``) taking precedence;
    ``origin`` names where each override came from (default "given").

    Example:
        >>> resolve_preprocessing(net.anchors, {"crop_pct": 1.0}).config.crop_pct
        1.0
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(PREPROCESSING))
    if unknown:
        raise ValueError(f"unknown preprocessing keys {unknown}; valid: {', '.join(PREPROCESSING)}")
    sizes = {tuple(a.input_size) for a in anchors}
    if len(sizes) > 1:
        raise ValueError(
            f"the anchors take different input sizes {sorted(sizes)}: give them one (--img-size)"
        )
    channels, height, width = (int(v) for v in next(iter(sizes)))
    own = [anchor_preprocessing(a, channels) for a in anchors]
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    disagree = []
    for key in PREPROCESSING:
        if key in overrides:
            values[key] = _typed(key, overrides[key])
            where[key] = (origin or {}).get(key, "given")
            continue
        seen = {repr(v[key]): (name, where) for name, v, where in own}
        if len(seen) > 1:
            disagree.append(key)
            continue
        values[key] = own[0][1][key]
        where[key] = "; ".join(dict.fromkeys(w for *_, w in own))
    if disagree:
        raise ValueError(_disagreement(disagree, own))
    return Preprocessing(DataConfig(channels, (height, width), **values), where)


def anchor_preprocessing(anchor: Any, channels: int) -> tuple[str, dict[str, Any], str]:
    """``(name, values, origin)``: what one anchor was trained with, for ``channels``-channel
    input. A one-channel timm anchor takes the average of the RGB statistics: timm adapts an
    RGB stem to one channel by summing its filters over the channels, so a grey pixel then
    stands for all three."""
    name = getattr(anchor, "name", None) or type(anchor).__name__
    if from_zoo([anchor]):
        fm = DataConfig.fashion_mnist()
        values = {k: getattr(fm, k) for k in PREPROCESSING}
        values["mean"], values["std"] = fm.mean * channels, fm.std * channels
        return name, values, "snnet's Fashion-MNIST anchors"
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(anchor.model)
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    values = {
        "mean": mean,
        "std": std,
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
        "interpolation": cfg.get("interpolation") or "bilinear",
        "crop_mode": cfg.get("crop_mode") or "center",
    }
    file = (getattr(anchor.model, "pretrained_cfg", None) or {}).get("file")
    if file and hub_preprocessing(file):
        where = f"the config.json beside {file}"
    else:
        where = "timm's pretrained config of the architecture"
    return name, values, where


def with_overrides(config: DataConfig, overrides: Mapping[str, Any]) -> DataConfig:
    """``config`` with the preprocessing values in ``overrides`` (``--mean`` ... on a network
    that recorded its own)."""
    return replace(config, **{k: _typed(k, v) for k, v in overrides.items() if v is not None})


def _typed(key: str, value: Any) -> Any:
    if key in ("mean", "std"):
        return tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    if key == "crop_pct":
        return float(value)
    return str(value)


def _disagreement(keys: list[str], own: list[tuple[str, dict[str, Any], str]]) -> str:
    parts = []
    for key in keys:
        shown = " but ".join(f"{_show(v[key])} for {name}" for name, v, _ in own)
        parts.append(f"{key} is {shown}")
    options = " ".join(f"--{k.replace('_', '-')} ..." for k in keys)
    return (
        f"the anchors were trained with different preprocessing ({'; '.join(parts)}): say which "
        f"the images get with {options} (or --data-config FILE.json)"
    )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def read_data_config(path: str | Path) -> dict[str, Any]:
    """The preprocessing in a JSON file: its keys of ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``, ``interpolation`` at the top level (timm's data-config names), or under
    ``pretrained_cfg`` (a hub-style ``config.json``), or under ``data`` (a network snnet saved).

    Example: ``read_data_config("data.json")  # {"mean": [0.5, 0.5, 0.5], "crop_pct": 1.0}``
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--data-config {path} is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"--data-config {path} must hold a JSON object")
    for nested in (HUB_KEY, "data"):
        if isinstance(doc.get(nested), dict):
            doc = doc[nested]
            break
    found = {k: doc[k] for k in PREPROCESSING if doc.get(k) is not None}
    if not found:
        raise ValueError(
            f"--data-config {path} sets none of {', '.join(PREPROCESSING)}: write e.g. "
            '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0}'
        )
    return found


def network_preprocessing(net: Any) -> DataConfig:
    """``net``'s preprocessing: the one recorded when it was trained (``net.data_config``), else
    what its anchors say (:func:`resolve_preprocessing`)."""
    recorded = getattr(net, "data_config", None)
    if recorded is not None:
        return recorded
    pre = resolve_preprocessing(net.anchors)
    classes = None
    if from_zoo(net.anchors):
        classes = DataConfig.fashion_mnist().classes
    return replace(pre.config, classes=classes)
