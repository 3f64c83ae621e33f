"""Saving a stitched network as ``config.json`` + ``model.safetensors``; loading never unpickles.

The pair is written as one unit (:func:`snnet.files.save_unit`): the config records the weights'
sha256 and is committed last, so a kill during a save leaves the old network or the new one, and
weights that do not belong to their config are refused on load. :func:`read_state` is the one
reader of a safetensors file into a module, shared with exported stitches. :func:`saved_state` is
what a save or a checkpoint of a network holds: everything, or in parameter-efficient mode only
what was trained (the anchors are rebuilt from their sources and checked by :func:`anchor_digest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from snnet import artifact
from snnet.adapters import Anchor
from snnet.data.config import DataConfig
from snnet.files import CONFIG, HASHES, WEIGHTS, read_json_config, save_unit, unit_file
from snnet.network import SNNet
from snnet.peft import AdapterConfig
from snnet.rundir import RunDir
from snnet.sources import from_source
from snnet.space import SpaceConfig
from snnet.task import Task

FORMAT = "snnet"
VERSION = 2


def network_config(net: SNNet) -> dict[str, Any]:
    """The JSON that rebuilds ``net``'s structure (weights go separately)."""
    extra: dict[str, Any] = {}
    if not net.adapter_config.is_default:
        extra["adapters"] = net.adapter_config.to_json()
    if net.adapter_config.frozen_anchors:
        # The anchors are not in the weights file: loading checks it rebuilt these very ones.
        extra["anchor_sha256"] = [anchor_digest(a) for a in net.anchors]
    if net.task.dense:  # what the network predicts (absent: classification)
        extra["task"] = net.task.to_json()
    return {
        "format": FORMAT,
        "version": VERSION,
        **extra,
        "anchors": [
            {
                "name": a.name,
                "family": a.family,
                "input_size": list(a.input_size),
                "source": a.source,
            }
            for a in net.anchors
        ],
        "space": net.space_config.to_json(),  # as given: PEFT mode derives per-cut layers
        "layers": sorted(net.layers.keys()),
        "num_stitches": len(net.stitches),
        # a network restricted to some stitches (a front) keeps only them: listed to rebuild it
        **({"stitches": [str(s) for s in net.stitches]} if net.space.restricted else {}),
        # how images become inputs (what training used): read back by evaluate and serve
        **({"data": net.data_config.to_json()} if net.data_config is not None else {}),
    }


def save(net: SNNet, directory: str | Path) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` as one unit: a kill
    at any moment leaves the network saved before or this one, never a mix.

    Example:
        >>> snnet.save(net, "runs/deit-snnet")
        >>> net2 = snnet.load("runs/deit-snnet")
    """
    directory = Path(directory)
    save_unit(directory, network_config(net), {WEIGHTS: lambda p: write_weights(net, p)})
    return directory


def write_weights(net: SNNet, path: str | Path) -> None:
    """Write what a save of ``net`` holds (:func:`saved_state`) as safetensors at ``path``."""
    # PEFT mode: only what was trained (the anchors come back from their sources on load).
    tensors = {k: v.detach().contiguous().cpu() for k, v in saved_state(net).items()}
    save_file(tensors, str(path), metadata={"format": FORMAT})


def read_config(directory: str | Path) -> dict[str, Any]:
    """The network config in ``directory``: a saved network's, or the one an exported front
    holds under ``"network"`` (with the unit's sha256, which covers ``model.safetensors``)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {directory} a directory written by snnet.save?"
        )
    if _format_of(path) == artifact.FORMAT:
        front = artifact.read_front_config(directory)
        config = front["network"]
        if config.get("format") != FORMAT or config.get("version", VERSION + 1) > VERSION:
            raise ValueError(f"{path} holds no network this snnet can read; upgrade snnet")
        return {**config, HASHES: front[HASHES]}
    return read_json_config(
        path,
        FORMAT,
        VERSION,
        what="an snnet config",
        hints={"snnet-stitch": " (an exported stitch: load it with snnet.load_stitch)"},
    )


def _format_of(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("format")
    except (ValueError, AttributeError):
        return None  # read_json_config says what is wrong


def load(
    path: str | Path,
    *,
    anchors: Sequence[nn.Module | Anchor] | None = None,
    map_location: str | torch.device = "cpu",
) -> SNNet:
    """Rebuild the network saved at ``path`` and load its weights.

    ``path`` is a directory written by :func:`save`, a run directory of ``snnet train`` /
    ``snnet demo`` (its ``model/``), or a front exported with ``--format safetensors`` (a
    smaller network holding only its stitches, see :meth:`SNNet.restrict`). Anchors recorded
    from timm (or snnet's demo family) are rebuilt without downloading; anchors that were your
    own modules must be passed again as
    ``anchors``. A network saved in parameter-efficient mode holds no anchor weights: its
    anchors are rebuilt with their pretrained weights (timm's hub or cache, the local
    checkpoint file, the demo family's weights) or taken from ``anchors``, and must be the very
    anchors it was trained on (checked by their sha256). The network is returned on
    ``map_location`` (``"cuda"``: on the GPU).

    Example:
        >>> net = snnet.load("runs/demo")            # the same as snnet.load("runs/demo/model")
    """
    directory = RunDir.find(path).model
    config = read_config(directory)
    weights = unit_file(directory, config, WEIGHTS)  # checked before anything is built
    adapters = AdapterConfig.from_json(config.get("adapters", {}))
    if anchors is None:
        missing = [a["name"] for a in config["anchors"] if a.get("source") is None]
        if missing:
            raise ValueError(
                f"anchors {missing} were given as modules, so snnet cannot rebuild them; pass "
                "anchors=[...] to load() (built as for the save; the weights come from the file)"
            )
        anchors = [
            _rebuild(a, pretrained=adapters.frozen_anchors, path=directory)
            for a in config["anchors"]
        ]
    net = SNNet(
        anchors,
        config=SpaceConfig.from_json(config["space"]),
        task=Task.from_json(config.get("task")),
        **adapters.to_json(),
    )
    if "stitches" in config:  # a front: the anchors' parts and layers it keeps
        net.restrict(config["stitches"])
    if "anchor_sha256" in config:
        for anchor, digest in zip(net.anchors, config["anchor_sha256"], strict=True):
            if anchor_digest(anchor) != digest:
                raise ValueError(
                    f"{directory} was trained on other weights of {anchor.name} than the ones "
                    "rebuilt now (it holds only what was trained, not the anchors): pass the "
                    "anchors it was trained on as anchors=[...]"
                )
    if config.get("data"):  # the preprocessing training recorded
        net.data_config = DataConfig.from_json(config["data"])
    load_weights(net, weights, map_location=map_location, expected=config)
    return net.to(map_location)  # where the weights were read to is where the network runs


def _rebuild(entry: dict[str, Any], *, pretrained: bool, path: Path) -> Anchor:
    try:
        return from_source(entry["source"], pretrained=pretrained)
    except (RuntimeError, OSError) as e:
        raise ValueError(
            f"{path} holds only what was trained on top of {entry['name']}, and its pretrained "
            f"weights could not be rebuilt ({e}); pass the anchors as anchors=[...]"
        ) from e


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
    state = read_state(
        path,
        saved_state(net),
        map_location=map_location,
        misfit="does not fit this network",
        why="it was saved from other anchors or stitching options",
    )
    load_saved_state(net, state)


def read_state(
    path: str | Path,
    own: dict[str, torch.Tensor],
    *,
    map_location: str | torch.device = "cpu",
    misfit: str,
    why: str,
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at ``path``, checked to have exactly the names and
    shapes of ``own``; otherwise one clear error: ``"{path} {misfit} (...): {why}"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the save is incomplete; save it again")
    try:
        state = load_file(str(path), device=str(map_location))
    except SafetensorError as e:
        raise ValueError(
            f"{path} is not a complete safetensors file ({e}): it was truncated or damaged; "
            "save it again (or copy it again)"
        ) from e
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(
                f"shape of {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                f"{tuple(own[wrong[0]].shape)} here"
            )
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise ValueError(f"{path} {misfit} ({'; '.join(parts)}): {why}")
    return state


# -- what a save holds -------------------------------------------------------------------------
def is_saved(name: str, net: SNNet) -> bool:
    """Whether the state-dict entry ``name`` is saved: everything in full mode; in PEFT mode the
    stitching layers (their frozen least-squares ``W0`` too: no source can rebuild it) and the
    LoRA, not the frozen anchors, which are rebuilt from their sources."""
    if not net.adapter_config.frozen_anchors:
        return True
    return name.startswith("layers.") or name.endswith((".lora_A", ".lora_B"))


def saved_state(net: SNNet) -> dict[str, torch.Tensor]:
    """The tensors a save or checkpoint of ``net`` holds (see :func:`is_saved`); a weight shared
    by several cuts' layers is held once, under its first name."""
    if not net.adapter_config.frozen_anchors:
        return net.state_dict()
    aliases = _aliases(net)
    return {k: v for k, v in net.state_dict().items() if is_saved(k, net) and k not in aliases}


def load_saved_state(net: SNNet, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`saved_state` gave; anything missing or extra is a ``RuntimeError``."""
    own = saved_state(net)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    net.load_state_dict(state, strict=False)


def anchor_digest(anchor: Anchor) -> str:
    """sha256 of an anchor's own (frozen) tensors, LoRA excluded: a PEFT network saved on top of
    these anchors refuses to load onto others."""
    h = hashlib.sha256()
    for name, t in sorted(anchor.model.state_dict().items()):
        if name.endswith((".lora_A", ".lora_B")):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _aliases(net: SNNet) -> set[str]:
    """State-dict names of parameters registered a second time (weights shared across cuts)."""
    every = {n for n, _ in net.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in net.named_parameters()}
