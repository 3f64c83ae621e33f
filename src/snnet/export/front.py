"""Several stitches of an SN-Net as one switchable artifact: the Pareto front (or any list) in one
ONNX file, one ``torch.export`` program, or a smaller SN-Net, each weight stored once. A dense
network's front holds its stitches with the shared head: per-pixel logits or depth out.

:func:`export_front` writes the directory :mod:`snnet.artifact` describes. Each graph takes uint8
pixels and normalises them inside, so a server needs only to decode, resize and crop (the
``data`` of the config) and never repeats the normalisation or gets it wrong; uint8 images are
also a quarter of the bytes of float ones to pass in. Every stitch of every graph is checked
against the SN-Net's own output before anything is written.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from snnet import artifact
from snnet.data.anchors import network_preprocessing
from snnet.data.config import DataConfig
from snnet.export.front_pt2 import PEFT_PT2, front_program
from snnet.export.graphs import onnx_model, require
from snnet.export.serialize import FILES
from snnet.export.stitched import export_stitch
from snnet.files import FORMATS, ONNX, PT2, WEIGHTS, save_unit
from snnet.measure.results import Record, Results
from snnet.network import SNNet
from snnet.serialize import network_config, write_weights
from snnet.stitch import Stitch


def front_stitches(results: Results) -> list[Stitch]:
    """The stitches on the Pareto front of the task's metric (top-1, mIoU or AbsRel) against
    GMACs, cheapest first: the front the demo's table marks.

    Example:
        >>> front_stitches(Results.load("runs/demo/results.json"))
        [Stitch('0'), Stitch('0:9-1:10'), Stitch('1'), Stitch('2')]
    """
    front = results.pareto("gmacs")
    if not front:
        results.require(results.metric)  # says which command measures it
    return [r.stitch for r in front]


def front_network(net: SNNet, stitches: Sequence[Stitch | str]) -> SNNet:
    """A copy of ``net`` that keeps only ``stitches`` (:meth:`SNNet.restrict`): the anchors'
    parts and the stitching layers they run, with the network's preprocessing recorded."""
    front = copy.deepcopy(net).restrict(stitches)
    front.data_config = network_preprocessing(net)
    return front


def export_front(
    net: SNNet,
    directory: str | Path,
    formats: Sequence[str] = ("onnx",),
    *,
    stitches: Sequence[Stitch | str] | None = None,
    results: Results | None = None,
    atol: float = 1e-4,
) -> dict[str, Path]:
    """Write ``stitches`` (default: the front of ``results``) into ``directory`` as one artifact
    in each of ``formats``: ``onnx`` (one graph, the stitch an input), ``pt2`` (one
    ``torch.export`` program, likewise) and ``safetensors`` (a smaller SN-Net for
    :func:`snnet.load`), with ``config.json``. Every stitch of every graph is checked against
    the network's own output (max abs difference ≤ ``atol``) before anything is written.

    Example:
        >>> results = Results.load("runs/demo/results.json")
        >>> export_front(net, "deploy/front", ["onnx", "safetensors"], results=results)
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats:
        require("onnx", "onnxscript", "onnxruntime", purpose="ONNX export")
    if "pt2" in formats and net.adapter_config.frozen_anchors:
        raise ValueError(PEFT_PT2)
    if results is not None:
        results.check_network(net)
    chosen = _chosen(net, stitches, results)
    front = front_network(net, chosen)
    data = front.data_config
    config = _config(net, front, chosen, results)
    writers: dict[str, Callable[[str], Any]] = {}
    config["checked"] = {}
    if "onnx" in formats:
        model = front_onnx(net, chosen, data, config)
        config["checked"]["onnx"] = check_front_onnx(model, net, chosen, data, atol=atol)
        writers[ONNX] = lambda p: Path(p).write_bytes(model.SerializeToString())
    if "pt2" in formats:
        program = _saved(front_program(front, chosen, data))
        config["checked"]["pt2"] = check_front_pt2(program, net, chosen, data, atol=atol)
        writers[PT2] = lambda p: Path(p).write_bytes(program)
    if "safetensors" in formats:
        writers[WEIGHTS] = lambda p: write_weights(front, p)
    written = save_unit(directory, config, writers, members=FILES.values())
    return {f: written[FILES[f]] for f in formats}


def _chosen(
    net: SNNet, stitches: Sequence[Stitch | str] | None, results: Results | None
) -> list[Stitch]:
    """The stitches to export, each in the network, none twice, cheapest first."""
    if stitches is None:
        if results is None:
            raise ValueError("give the stitches to export, or the results to take the front of")
        stitches = front_stitches(results)
    chosen = [net.space.check(s) for s in stitches]
    if not chosen:
        raise ValueError("no stitches to export")
    twice = [s for i, s in enumerate(chosen) if s in chosen[:i]]
    if twice:
        raise ValueError(f"stitch {twice[0]} is listed twice")
    return sorted(chosen, key=lambda s: net.cost(s).macs)


def _config(
    net: SNNet, front: SNNet, stitches: list[Stitch], results: Results | None
) -> dict[str, Any]:
    rows = []
    for i, s in enumerate(stitches):
        cost = net.cost(s)
        known = results.records.get(s) if results is not None else None
        record = known or Record(s, round(cost.gmacs, 6), cost.params)
        rows.append({"index": i, **record.to_json(), "macs": cost.macs, "path": net.describe(s)})
    data = front.data_config
    with torch.no_grad():
        x = torch.zeros(1, *data.input_size, device=next(net.parameters()).device)
        shape = tuple(front.eval()(x, stitch=stitches[0]).shape[1:])
    output = artifact.DEPTH if net.task.kind == "depth" else artifact.LOGITS
    meta = results.meta if results is not None else {}
    return {
        "format": artifact.FORMAT,
        "version": artifact.VERSION,
        "stitches": rows,
        "data": data.to_json(),
        "task": net.task.to_json(),
        **artifact.io_spec(data.input_size, output, shape),
        "measured": {k: meta[k] for k in ("accuracy", "latency") if k in meta},
        "network": network_config(front),
    }


def front_onnx(net: SNNet, stitches: list[Stitch], data: DataConfig, config: dict[str, Any]) -> Any:
    """The front as one ONNX model (:func:`snnet.export.switch.switch_graph`) from each stitch's
    own graph, as :func:`~snnet.export.export_onnx` writes it, with the config's metadata."""
    from snnet.export.switch import switch_graph

    models = [onnx_model(export_stitch(net, s)) for s in stitches]
    return switch_graph(models, mean=data.mean, std=data.std, metadata=artifact.metadata(config))


def example_pixels(data: DataConfig, batch_size: int = 3) -> torch.Tensor:
    """Seeded random uint8 images of ``data``'s size: what an export is checked on."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch_size, *data.input_size), generator=g, dtype=torch.uint8)


@torch.no_grad()
def reference_logits(
    net: SNNet, stitches: Sequence[Stitch], data: DataConfig, pixels: torch.Tensor
) -> list[torch.Tensor]:
    """Each stitch's output in ``net`` (in eval mode) on ``pixels``, normalised by ``data``:
    logits, or a dense network's per-pixel logits or depth."""
    was = net.training
    net.eval()
    try:
        p = next(net.parameters())
        x = data.normalize(pixels.to(p.device)).to(p.dtype)
        return [net(x, stitch=s).float().cpu() for s in stitches]
    finally:
        net.train(was)


def check_front_onnx(
    model: Any, net: SNNet, stitches: Sequence[Stitch], data: DataConfig, *, atol: float = 1e-4
) -> list[float]:
    """Run each stitch of the front ``model`` (an ``onnx.ModelProto`` or a path) in onnxruntime
    and compare with ``net``; returns each stitch's max abs difference, or raises a
    ``ValueError`` naming the first stitch off by more than ``atol``."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, str | Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    pixels = example_pixels(data)
    wants = reference_logits(net, stitches, data, pixels)
    errors = []
    for i, (s, want) in enumerate(zip(stitches, wants, strict=True)):
        feeds = {artifact.PIXELS: pixels.numpy(), artifact.STITCH: torch.tensor(i).numpy()}
        got = torch.from_numpy(session.run(None, feeds)[0])
        errors.append(_difference(got, want, s, "ONNX", atol))
    return errors


def _saved(program: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def check_front_pt2(
    program: bytes, net: SNNet, stitches: Sequence[Stitch], data: DataConfig, *, atol: float = 1e-4
) -> list[float]:
    """Load the saved front ``program`` (the bytes of a ``.pt2``) and compare each stitch with
    ``net``, like :func:`check_front_onnx`."""
    module = torch.export.load(io.BytesIO(program)).module()
    pixels = example_pixels(data).to(next(net.parameters()).device)
    wants = reference_logits(net, stitches, data, pixels)
    errors = []
    with torch.no_grad():
        for i, (s, want) in enumerate(zip(stitches, wants, strict=True)):
            got = module(pixels, torch.tensor(i)).float().cpu()
            errors.append(_difference(got, want, s, "pt2", atol))
    return errors


def _difference(got: torch.Tensor, want: torch.Tensor, s: Stitch, what: str, atol: float) -> float:
    err = float((got - want).abs().max())
    if not err <= atol:
        raise ValueError(
            f"stitch {s} of the {what} front differs from the SN-Net by {err:.3g} (> {atol}): "
            "nothing was written"
        )
    return err
