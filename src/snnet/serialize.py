"""Saving a stitched network as ``config.json`` + ``model.safetensors``; loading never unpickles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from snnet.adapters import Anchor
from snnet.anchors import from_source
from snnet.files import CONFIG, WEIGHTS, atomic_write, read_json_config
from snnet.network import SNNet
from snnet.space import SpaceConfig

FORMAT = "snnet"
VERSION = 1


def network_config(net: SNNet) -> dict[str, Any]:
    """The JSON that rebuilds ``net``'s structure (weights go separately)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "anchors": [
            {
                "name": a.name,
                "family": a.family,
                "input_size": list(a.input_size),
                "source": a.source,
            }
            for a in net.anchors
        ],
        "space": net.space.config.to_json(),
        "layers": sorted(net.layers.keys()),
        "num_stitches": len(net.stitches),
    }


def save(net: SNNet, directory: str | Path) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``.

    Example:
        >>> snnet.save(net, "runs/deit-snnet")
        >>> net2 = snnet.load("runs/deit-snnet")
    """
    directory = Path(directory)
    config = network_config(net)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write(
        directory / WEIGHTS,
        lambda p: save_file(tensors, p, metadata={"format": FORMAT}),
        mode="path",
    )
    atomic_write(directory / CONFIG, lambda f: json.dump(config, f, indent=2, sort_keys=True))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {directory} a directory written by snnet.save?"
        )
    return read_json_config(path, FORMAT, VERSION, what="an snnet config")


def load(
    directory: str | Path,
    *,
    anchors: Sequence[nn.Module | Anchor] | None = None,
    map_location: str = "cpu",
) -> SNNet:
    """Rebuild the network saved in ``directory`` and load its weights.

    Anchors recorded from timm (or snnet's demo family) are rebuilt without downloading; anchors
    that were your own modules must be passed again as ``anchors``.
    """
    config = read_config(directory)
    if anchors is None:
        missing = [a["name"] for a in config["anchors"] if a.get("source") is None]
        if missing:
            raise ValueError(
                f"anchors {missing} were given as modules, so snnet cannot rebuild them; pass "
                "anchors=[...] to load() (build them as before; the weights come from the file)"
            )
        anchors = [from_source(a["source"], pretrained=False) for a in config["anchors"]]
    net = SNNet(anchors, config=SpaceConfig.from_json(config["space"]))
    load_weights(net, Path(directory) / WEIGHTS, map_location=map_location, expected=config)
    return net


def load_weights(
    net: SNNet,
    path: str | Path,
    *,
    map_location: str = "cpu",
    expected: dict[str, Any] | None = None,
) -> None:
    """Load a ``model.safetensors`` into ``net``; a file from another network is a clear error."""
    if expected is not None and sorted(net.layers.keys()) != expected.get("layers"):
        raise ValueError(
            f"{path} belongs to a network with stitching layers {expected.get('layers')[:4]}..., "
            f"this one has {sorted(net.layers.keys())[:4]}...: build the network with the same "
            "anchors and stitching options"
        )
    state = load_file(str(path), device=map_location)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(
                f"shape of {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here"
            )
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise ValueError(
            f"{path} does not fit this network ({'; '.join(parts)}): it was saved from other anchors "
            "or stitching options"
        )
    net.load_state_dict(state)
