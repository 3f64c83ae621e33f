"""An exported stitch's files: ``config.json`` + ``model.safetensors`` (and ONNX, ``.pt2``) as one
unit, loaded back without the SN-Net and without unpickling.

An export directory holds one export: its config lists (with their sha256) the files written with
it, and writing an export removes the artefacts of any other, so a ``model.onnx`` never computes
another stitch than its ``config.json`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from snnet.adapters import Anchor, as_anchor
from snnet.dense.head import DenseHead
from snnet.export.graphs import require, write_onnx, write_pt2
from snnet.export.stitched import (
    FORMAT,
    VERSION,
    StitchedModel,
    copy_parts,
    shape_from_json,
)
from snnet.files import (
    CONFIG,
    FORMATS,
    HASHES,
    ONNX,
    PT2,
    WEIGHTS,
    read_json_config,
    save_unit,
    unit_file,
)
from snnet.layers import StitchingLayer
from snnet.parts import Part, Step
from snnet.peft import merge_lora
from snnet.serialize import read_state
from snnet.sources import from_source
from snnet.task import Task

#: The file each format writes into an export directory; writing an export removes the others.
FILES = {"safetensors": WEIGHTS, "onnx": ONNX, "pt2": PT2}
_CONFIG_KEYS = {
    "format",
    "version",
    "stitch",
    "path",
    "macs",
    "params",
    "anchors",
    "layers",
    "steps",
    "data",
    "dense",
    HASHES,
}


def save_stitch(model: StitchedModel, directory: str | Path) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` as one unit (a kill
    leaves the earlier export or this one; see :func:`export` for the other formats).

    Example:
        >>> save_stitch(export_stitch(net, "0:5-1:6"), "deploy/ti-s")
        >>> model = load_stitch("deploy/ti-s")
    """
    export(model, directory, ["safetensors"])
    return Path(directory)


def _write_safetensors(model: StitchedModel, path: str) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in _tensors(model).items()}
    save_file(tensors, path, metadata={"format": FORMAT, "stitch": model.info["stitch"]})


def read_stitch_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {directory} a directory written by snnet export?"
        )
    config = read_json_config(
        path,
        FORMAT,
        VERSION,
        what="an exported stitch",
        hints={"snnet": " (a whole SN-Net: load it with snnet.load)"},
    )
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        raise ValueError(
            f"{path} has unknown keys {sorted(unknown)}; was it written by a newer snnet?"
        )
    return config


def load_stitch(
    directory: str | Path,
    *,
    anchors: Sequence[nn.Module | Anchor] | None = None,
    map_location: str | torch.device = "cpu",
) -> StitchedModel:
    """Rebuild an exported stitch from ``directory`` without the SN-Net and without unpickling.

    Anchors recorded from timm (or snnet's demo family) are rebuilt on the meta device, pruned
    and then filled from the file, so loading too needs memory only for the stitch. Anchors that
    were your own modules must be passed again: ``anchors`` lists the network's anchors as given
    to ``SNNet`` (their weights are not used; the file's are).
    """
    config = read_stitch_config(directory)
    weights = unit_file(directory, config, WEIGHTS)  # checked before anything is built
    parts = []
    for entry in config["anchors"]:
        keep = {"stem": entry["stem"], "blocks": entry["blocks"], "head": entry["head"]}
        if anchors is not None:
            if entry["index"] >= len(anchors):
                raise ValueError(
                    f"the stitch uses anchor {entry['index']} ({entry['name']}) but only "
                    f"{len(anchors)} anchors were passed: pass the network's anchors in order"
                )
            part = copy_parts(as_anchor(anchors[entry["index"]]), **keep)
            merge_lora(part, merge=False)  # anchors of a PEFT network: the file has the merge
            parts.append(part)
            continue
        if entry.get("source") is None:
            raise ValueError(
                f"anchor {entry['name']} was given as a module, so snnet cannot rebuild it; pass "
                "anchors=[...] to load_stitch() (the network's anchors, in order)"
            )
        with torch.device("meta"):  # structure only: the weights come from the file
            anchor = from_source(entry["source"], pretrained=False)
        anchor.prune(**keep)
        parts.append(anchor)
    with torch.device("meta"):
        layers = [
            StitchingLayer(shape_from_json(d["src"]), shape_from_json(d["dst"]))
            for d in config["layers"]
        ]
    steps = [Step(*s) for s in config["steps"]]
    info = {k: v for k, v in config.items() if k != HASHES}  # the hashes describe the files
    dense, dense_parts = _dense_head(config.get("dense"))
    model = StitchedModel(parts, layers, steps, info=info, dense=dense, parts=dense_parts)
    _fill(model, weights, map_location)
    return model.eval()


def _dense_head(d: dict[str, Any] | None) -> tuple[DenseHead | None, list[Part]]:
    """A dense stitch's head, on the meta device (filled from the file), and its parts."""
    if d is None:
        return None, []
    taps = {k: (shape_from_json(a), shape_from_json(b)) for k, (a, b) in d["taps"].items()}
    levels = [shape_from_json(s) for s in d["levels"]]
    with torch.device("meta"):
        head = DenseHead(Task.from_json(d["task"]), levels, taps, d["size"])
    return head, [Part(*p) for p in d["parts"]]


@torch.no_grad()
def _fill(model: nn.Module, path: Path, map_location: str | torch.device) -> None:
    """Put the file's tensors into ``model`` in place of its own (assigned, not copied, so
    memory holds one copy of the weights); tied tensors stay tied."""
    own = _tensors(model)
    state = read_state(
        path,
        own,
        map_location=map_location,
        misfit="does not fit its config",
        why="the anchors rebuilt from their source differ from the exported ones",
    )
    name_of = {id(t): k for k, t in own.items()}
    new: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for leaf, t in slots.items():
                if t is None:
                    continue
                if id(t) not in new:
                    loaded = state.pop(name_of[id(t)])
                    if loaded.data_ptr() % 64:
                        # safetensors hands out tensors at 8-byte offsets; vectorised kernels
                        # take other paths on unaligned data and round differently, so move
                        # each into an aligned allocation (one at a time: peak stays ~1 copy)
                        loaded = loaded.clone()
                    new[id(t)] = (
                        nn.Parameter(loaded, requires_grad=t.requires_grad)
                        if isinstance(t, nn.Parameter)
                        else loaded
                    )
                slots[leaf] = new[id(t)]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, so a model built on the meta device can be
    filled completely from the file."""
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


_WRITERS: dict[str, Callable[[StitchedModel, str], None]] = {
    "safetensors": _write_safetensors,
    "onnx": write_onnx,
    "pt2": write_pt2,
}


def export(
    model: StitchedModel, directory: str | Path, formats: Sequence[str] = ("safetensors",)
) -> dict[str, Path]:
    """Write ``model`` into ``directory`` in each of ``formats`` (``safetensors``, ``onnx``,
    ``pt2``) with its ``config.json``, as one unit: a kill leaves the earlier export or this one,
    and files of an earlier export that this one does not write are removed. Returns the path
    written per format.

    Example:
        >>> export(export_stitch(net, "0:5-1:6"), "deploy/ti-s", ["safetensors", "onnx"])
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats:  # fail before writing anything
        require("onnx", "onnxscript", "onnxruntime", purpose="ONNX export")
    writers = {FILES[f]: (lambda p, f=f: _WRITERS[f](model, p)) for f in formats}
    written = save_unit(directory, model.info, writers, members=FILES.values())
    return {f: written[FILES[f]] for f in formats}
