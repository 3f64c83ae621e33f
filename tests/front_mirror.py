"""A stand-in for `snnet export RUN --front --format onnx` (built on another branch), for the
ONNX Runtime server's tests and benchmark until it lands, in its format: one ONNX file with
inputs ``pixels`` (uint8, N×C×H×W, normalised inside) and ``stitch`` (an int64 index into the
config's stitch list) and output ``logits``, every front stitch inside as one branch of a chain
of ``If`` nodes over shared initializers (equal weights stored once), and a ``config.json``
beside it with ``"format": "snnet-front"``, the stitches (cheapest first, with their costs and
accuracy) and the preprocessing with the class names.

Run: python tests/front_mirror.py RUN OUT [--stitches 0 1:3-2:3 ...] (default: the run's
front of top-1 against GMACs).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


class FromPixels(torch.nn.Module):
    """uint8 pixels -> logits: the normalisation, then the stitch."""

    def __init__(self, model, data) -> None:
        super().__init__()
        self.model, self.data = model, data

    def forward(self, x):
        return self.model(self.data.normalize(x))


def single_stitch_onnx(net, stitch, path: Path, data) -> None:
    from snnet.export.stitched import export_stitch

    model = FromPixels(export_stitch(net, stitch), data).eval()
    x = torch.zeros(2, *net.anchors[0].input_size, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )


def combine(paths: list[Path], input_size: tuple[int, ...]):
    """One model: ``If(stitch == 0, branch 0, If(stitch == 1, branch 1, ...))``, initializers
    shared by content."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shared: dict[str, onnx.TensorProto] = {}
    branches = []
    for i, path in enumerate(paths):
        m = onnx.compose.add_prefix(onnx.load(str(path)), f"s{i}_")
        g = m.graph
        rename = {}
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            key = hashlib.sha1(arr.tobytes() + str((arr.dtype, arr.shape)).encode()).hexdigest()
            name = f"w_{key[:16]}"
            rename[init.name] = name
            if name not in shared:
                shared[name] = numpy_helper.from_array(arr, name)
        rename[f"s{i}_x"] = "pixels"
        nodes = []
        for node in g.node:
            node.input[:] = [rename.get(n, n) for n in node.input]
            nodes.append(node)
        out = helper.make_tensor_value_info(f"s{i}_logits", TensorProto.FLOAT, None)
        branches.append(helper.make_graph(nodes, f"stitch_{i}", [], [out]))
    # the chain from the last stitch back: the last one is the else of the one before it
    else_graph = branches[-1]
    for i in range(len(branches) - 2, -1, -1):
        cond = helper.make_node("Equal", ["stitch", f"index_{i}"], [f"is_{i}"])
        const = helper.make_node(
            "Constant", [], [f"index_{i}"], value=numpy_helper.from_array(torch.tensor(i).numpy())
        )
        branch = helper.make_node(
            "If",
            [f"is_{i}"],
            [f"out_{i}"],
            then_branch=branches[i],
            else_branch=else_graph,
        )
        out = helper.make_tensor_value_info(f"out_{i}", TensorProto.FLOAT, None)
        else_graph = helper.make_graph([const, cond, branch], f"chain_{i}", [], [out])
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", *input_size])
    stitch = helper.make_tensor_value_info("stitch", TensorProto.INT64, [])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])
    nodes = list(else_graph.node)
    last = else_graph.output[0].name
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes, "snnet_front", [pixels, stitch], [logits], initializer=list(shared.values())
    )
    opset = onnx.load(str(paths[0])).opset_import
    return helper.make_model(graph, opset_imports=opset)


def make_front(run: Path, out: Path, stitches: list[str] | None = None) -> Path:
    """The front file of ``run`` (or of ``stitches``) and its config, in ``out``."""
    import onnx

    import snnet
    from snnet.data.anchors import network_preprocessing
    from snnet.files import sha256_file
    from snnet.measure.results import Results
    from snnet.rundir import RunDir
    from snnet.serialize import read_config
    from snnet.serve.model import class_names

    rd = RunDir.find(run)
    net = snnet.load(rd.model).eval()
    res = Results.load(rd.results)
    rows = [res[s] for s in stitches] if stitches else res.pareto("gmacs", "top1")
    rows = sorted(rows, key=lambda r: r.gmacs)
    data = network_preprocessing(net)
    size = tuple(net.anchors[0].input_size)
    with torch.no_grad():
        n = net(torch.zeros(1, *size)).shape[-1]
    data = dataclasses.replace(data, classes=class_names(net, read_config(rd.model), n))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, r in enumerate(rows):
            paths.append(Path(tmp) / f"{i}.onnx")
            single_stitch_onnx(net, r.stitch, paths[-1], data)
        model = combine(paths, size)
    onnx.save(model, str(out / "model.onnx"))
    config = {
        "sha256": {"model.onnx": sha256_file(out / "model.onnx")},
        "format": "snnet-front",
        "version": 1,
        "stitches": [{"index": i, **r.to_json()} for i, r in enumerate(rows)],
        "data": data.to_json(),
        "inputs": [
            {"name": "pixels", "dtype": "uint8", "shape": ["batch", *size]},
            {"name": "stitch", "dtype": "int64", "shape": []},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", n]}],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--stitches", nargs="*", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    make_front(args.run, args.out, args.stitches)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
