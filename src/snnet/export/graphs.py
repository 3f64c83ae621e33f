"""An exported stitch as a deployable graph: ONNX (checked in onnxruntime) and ``torch.export``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snnet.export.stitched import StitchedModel
from snnet.files import atomic_write


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
        lambda p: write_onnx(model, p, dynamic_batch=dynamic_batch, check=check, atol=atol),
        mode="path",
    )
    return path


def write_onnx(
    model: StitchedModel,
    path: str,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> None:
    _onnx_program(model, dynamic_batch=dynamic_batch).save(path)
    if check:
        check_onnx(model, path, atol=atol)


def onnx_model(model: StitchedModel, *, dynamic_batch: bool = True) -> Any:
    """``model`` as an in-memory ``onnx.ModelProto`` (input ``x``, output ``logits``), as
    :func:`export_onnx` writes it; for joining stitches into one graph (:mod:`.switch`)."""
    require("onnx", "onnxscript", purpose="ONNX export")
    return _onnx_program(model, dynamic_batch=dynamic_batch).model_proto


def _onnx_program(model: StitchedModel, *, dynamic_batch: bool) -> Any:
    model = model.eval()
    x = _example(model, 2)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        return torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=["x"],
            output_names=[_output_name(model)],
            verbose=False,
        )


def _output_name(model: StitchedModel) -> str:
    """``logits`` (classes, or classes per pixel) or ``depth`` (metres per pixel)."""
    task = (model.info.get("dense") or {}).get("task") or {}
    return "depth" if task.get("kind") == "depth" else "logits"


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
    atomic_write(path, lambda p: write_pt2(model, p, dynamic_batch=dynamic_batch), mode="path")
    return path


def write_pt2(model: StitchedModel, path: str, *, dynamic_batch: bool = True) -> None:
    model = model.eval()
    x = _example(model, 2)  # batch 2: an example batch of 1 would be specialised to 1
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    torch.export.save(program, path)
