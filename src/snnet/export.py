"""One stitch as a standalone model: only the weights it runs, saved, reloaded and exported.

:func:`export_stitch` copies from the SN-Net only what the stitch runs: the parts of the anchors
on its route (the first anchor's stem, each anchor's block range, the last anchor's head) and
its stitching layers. Parts it skips are never copied, so memory follows the stitch, not the
family. The result, a :class:`StitchedModel`, computes exactly what ``net(x, stitch=...)``
computes, and saves as ``config.json`` + ``model.safetensors`` that load back without the SN-Net
and without unpickling. :func:`export_onnx` and :func:`export_pt2` write deployable graphs.

An export directory holds one export: its config lists (with their sha256) the files written with
it, and writing an export removes the artefacts of an earlier one, so a ``model.onnx`` never
computes another stitch than its ``config.json`` names.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from snnet.adapters import Anchor, FeatureShape, as_anchor
from snnet.data.config import DataConfig
from snnet.files import (
    CONFIG,
    FORMATS,
    HASHES,
    ONNX,
    PT2,
    WEIGHTS,
    atomic_write,
    read_json_config,
    save_unit,
    unit_file,
)
from snnet.layers import StitchingLayer
from snnet.network import SNNet, run_plan
from snnet.parts import Part, Step
from snnet.peft import merge_lora
from snnet.serialize import read_state
from snnet.sources import from_source
from snnet.stitch import Stitch

FORMAT = "snnet-stitch"
VERSION = 1
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
    HASHES,
}


class StitchedModel(nn.Module):
    """One stitch of an SN-Net as a plain module holding only the weights that stitch runs.

    ``anchors`` are the (pruned) anchors of the route in order; ``steps`` index into them and
    into ``layers``, like :meth:`SNNet.plan` does into the network. Build one with
    :func:`export_stitch` or :func:`load_stitch`.

    Example:
        >>> model = snnet.export_stitch(net, "0:5-1:6")
        >>> torch.equal(model(x), net(x, stitch="0:5-1:6"))
        True
    """

    def __init__(
        self,
        anchors: Sequence[Anchor],
        layers: Sequence[StitchingLayer],
        steps: Sequence[Step],
        *,
        info: dict[str, Any],
    ) -> None:
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        # Keyed "0", "1", ... like the steps' layer names (state-dict keys as a ModuleList's).
        self.layers = nn.ModuleDict({str(i): layer for i, layer in enumerate(layers)})
        self.steps = tuple(Step(*s) for s in steps)
        self.info = info  # JSON: the stitch, its source anchors and parts, its cost

    @property
    def stitch(self) -> Stitch:
        return Stitch.parse(self.info["stitch"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.anchors[0].input_size)

    @property
    def data_config(self) -> DataConfig | None:
        """The preprocessing the SN-Net was trained and evaluated with (size, crop,
        normalisation, class names), so a deployed stitch sees images as training did; None
        for a network that never recorded one (built by hand and not trained by snnet)."""
        data = self.info.get("data")
        return DataConfig.from_json(data) if data else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_plan(self.steps, self.anchors, self.layers, x)

    def extra_repr(self) -> str:
        return f"stitch='{self.info['stitch']}', path={self.info['path']!r}"


def _copy_parts(anchor: Anchor, *, stem: bool, blocks: Sequence[int], head: bool) -> Anchor:
    """A copy of ``anchor`` holding only the listed parts; the others are never copied.

    Dropped modules and parameters are put in ``deepcopy``'s memo as their replacement
    (``nn.Identity`` / ``None``, what :meth:`Anchor.prune` puts there), so copying skips them;
    anything a kept part also uses is copied as usual.
    """
    kept_parts = (["stem"] if stem else []) + sorted(set(blocks)) + (["head"] if head else [])
    kept: set[int] = set()
    for part in kept_parts:
        for _, obj in anchor.part_members(part):
            if isinstance(obj, nn.Module):
                kept.update(id(m) for m in obj.modules())
                kept.update(id(t) for t in obj.parameters())
            else:
                kept.add(id(obj))
    memo: dict[int, Any] = {}
    for path in anchor.dropped_names(stem=stem, blocks=blocks, head=head):
        obj = anchor._resolve(path)
        if id(obj) in kept or obj is None:
            continue
        if isinstance(obj, nn.Module):
            memo[id(obj)] = nn.Identity()
        elif isinstance(obj, nn.Parameter):
            memo[id(obj)] = None
    part = copy.deepcopy(anchor, memo)
    part.prune(stem=stem, blocks=sorted(set(blocks)), head=head)
    return part


def _route_parts(parts: Sequence[Part]) -> list[dict[str, Any]]:
    """What each anchor on the route keeps, in route order: the parts between two stitching
    layers belong to one anchor. An anchor a route visits twice (``1:3-0:4:7-1:8``) is kept as
    two copies holding disjoint parts (no block runs twice on a route), so the export still
    holds each parameter the stitch runs exactly once."""
    kept: list[dict[str, Any]] = []
    new_anchor = True
    for p in parts:
        if p.kind == "layer":
            new_anchor = True
            continue
        if new_anchor:
            kept.append({"stem": False, "blocks": [], "head": False})
            new_anchor = False
        if p.kind == "block":
            kept[-1]["blocks"].append(p.block)
        else:
            kept[-1][p.kind] = True
    return kept


def export_stitch(net: SNNet, stitch: Stitch | str) -> StitchedModel:
    """A standalone module running ``stitch``, holding copies of only the weights it uses.

    The network is not changed and not copied as a whole: only the parts on the stitch's route
    are copied, so exporting needs memory for the stitch, not for the family. The module's
    parameter count is ``net.cost(stitch).params`` and its output equals
    ``net(x, stitch=stitch)`` exactly. Low-rank stitching layers and the anchors' LoRA (PEFT
    mode) are folded into plain weights, the very weights the network runs for the stitch (only
    the kernels' float rounding may differ, within 1e-6).

    Example:
        >>> model = export_stitch(net, "0:5-1:6")
        >>> save_stitch(model, "deploy/ti-s")
    """
    stitch = net.space.check(stitch)
    steps = net.plan(stitch)
    parts = _route_parts(net.parts(stitch))
    anchors = [_copy_parts(net.anchors[s.anchor], **p) for s, p in zip(steps, parts, strict=True)]
    for k, anchor in enumerate(anchors):
        # The anchors' LoRA (PEFT mode) runs after the first stitching layer: folded into the
        # weights there, dropped before it; either way the export is a plain model.
        merge_lora(anchor, merge=k > 0)
    layers, new_steps, layer_info = [], [], []
    for k, s in enumerate(steps):
        idx = None
        if s.layer is not None:
            layer = net.layers[s.layer]
            idx = str(len(layers))
            layers.append(layer.merged())  # a low-rank layer's update folded in
            layer_info.append(
                {"name": s.layer, "src": _shape_json(layer.src), "dst": _shape_json(layer.dst)}
            )
        new_steps.append(Step(k, s.start, s.stop, idx))
    cost = net.cost(stitch)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "stitch": str(stitch),
        "path": net.describe(stitch),
        "macs": cost.macs,
        "params": cost.params,
        "anchors": [
            {
                "index": s.anchor,
                "name": net.anchors[s.anchor].name,
                "family": net.anchors[s.anchor].family,
                "input_size": list(net.anchors[s.anchor].input_size),
                "source": net.anchors[s.anchor].source,
                **p,
            }
            for s, p in zip(steps, parts, strict=True)
        ],
        "layers": layer_info,
        "steps": [list(s) for s in new_steps],
    }
    if net.data_config is not None:  # what snnet train / demo recorded: deployment must match it
        info["data"] = net.data_config.to_json()
    return StitchedModel(anchors, layers, new_steps, info=info).train(net.training)


def _shape_json(shape: FeatureShape) -> dict[str, Any]:
    return {
        "layout": shape.layout,
        "channels": shape.channels,
        "rows": shape.rows,
        "grid": list(shape.grid) if shape.grid else None,
    }


def _shape_from_json(d: dict[str, Any]) -> FeatureShape:
    return FeatureShape(
        d["layout"], d["channels"], d["rows"], tuple(d["grid"]) if d["grid"] else None
    )


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, so a model built on the meta device can be
    filled completely from the file."""
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


# -- files ------------------------------------------------------------------------------------
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
            part = _copy_parts(as_anchor(anchors[entry["index"]]), **keep)
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
            StitchingLayer(_shape_from_json(d["src"]), _shape_from_json(d["dst"]))
            for d in config["layers"]
        ]
    steps = [Step(*s) for s in config["steps"]]
    info = {k: v for k, v in config.items() if k != HASHES}  # the hashes describe the files
    model = StitchedModel(parts, layers, steps, info=info)
    _fill(model, weights, map_location)
    return model.eval()


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


# -- graphs -----------------------------------------------------------------------------------
def require(*packages: str, purpose: str) -> None:
    """Raise a one-line ImportError naming the pip extra when an optional package is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"{purpose} needs {', '.join(missing)}: pip install 'snnet[export]'")


def _example(model: StitchedModel, batch_size: int) -> torch.Tensor:
    p = next(model.parameters())
    g = torch.Generator(device=p.device).manual_seed(0)
    return torch.randn(batch_size, *model.input_size, generator=g, device=p.device, dtype=p.dtype)


def export_onnx(
    model: StitchedModel,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` as ONNX (``torch.onnx.export``, the dynamo exporter) with a dynamic batch
    dimension, and with ``check`` run it in onnxruntime against PyTorch (max abs error ≤ ``atol``)
    before it replaces ``path``.

    Example:
        >>> export_onnx(export_stitch(net, "0:5-1:6"), "deploy/ti-s/model.onnx")
    """
    require("onnx", "onnxscript", purpose="ONNX export")
    if check:
        require("onnxruntime", purpose="checking the ONNX export")
    path = Path(path)
    atomic_write(
        path,
        lambda p: _write_onnx(model, p, dynamic_batch=dynamic_batch, check=check, atol=atol),
        mode="path",
    )
    return path


def _write_onnx(
    model: StitchedModel,
    path: str,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> None:
    model = model.eval()
    x = _example(model, 2)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=["x"],
            output_names=["logits"],
            verbose=False,
        )
    program.save(path)
    if check:
        check_onnx(model, path, atol=atol)


def check_onnx(
    model: nn.Module, path: str | Path, *, atol: float = 1e-4, batch_size: int = 3
) -> float:
    """Run the ONNX file in onnxruntime and compare with ``model``; returns the max abs error."""
    require("onnxruntime", purpose="checking the ONNX export")
    import onnxruntime as ort

    x = _example(model, batch_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.cpu().float().numpy()})[0]
    with torch.no_grad():
        want = model(x).float().cpu()
    err = float((torch.from_numpy(got) - want).abs().max())
    if not err <= atol:
        raise ValueError(f"the ONNX model in {path} differs from PyTorch by {err:.3g} (> {atol})")
    return err


def export_pt2(model: StitchedModel, path: str | Path, *, dynamic_batch: bool = True) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``), batch dimension dynamic.

    Load with ``torch.export.load(path).module()``. (TorchScript is deprecated in current
    PyTorch; ``torch.export`` is its successor.)
    """
    path = Path(path)
    atomic_write(path, lambda p: _write_pt2(model, p, dynamic_batch=dynamic_batch), mode="path")
    return path


def _write_pt2(model: StitchedModel, path: str, *, dynamic_batch: bool = True) -> None:
    model = model.eval()
    x = _example(model, 2)  # batch 2: an example batch of 1 would be specialised to 1
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    torch.export.save(program, path)


_WRITERS: dict[str, Callable[[StitchedModel, str], None]] = {
    "safetensors": _write_safetensors,
    "onnx": _write_onnx,
    "pt2": _write_pt2,
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
