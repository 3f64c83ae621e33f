"""Front benchmark: several stitches in one ONNX file against each stitch's own file.

On the demo family (a run of ``snnet demo``; the script trains a short one when none is given):

1. size: the front file against the bytes of the distinct tensors it holds (goal ≤ 1.1×), and
   against the stitches' own files together;
2. agreement: each stitch's max abs logit difference from the SN-Net (goal ≤ 1e-5);
3. speed: a batch-1 call of stitch i through the front file against the same stitch's own ONNX
   file (``export_onnx``, given pixels already normalised), interleaved call by call, medians
   over ``--calls`` calls each, 1 intra-op thread (goal: under 10 µs more per call). A third
   session runs the front with its shared weights read from the main graph by every branch
   (no ``Mul`` fold): what the fold saves; two more run the front and the own file with ONNX
   Runtime's weight prepacking off (``session.disable_prepacking``);
4. depth: fronts of 1..32 one-MatMul graphs against one such graph's own file, to show what
   the normalisation and each level of ``If`` add by themselves.

Two fronts: the run's Pareto front of top-1 against GMACs, and ``--wide`` stitches spread over
the costs (a deeper tree of ``If`` nodes). With ``--pt2`` it also times the ``.pt2`` front
(``torch.cond``) against each stitch's own ``.pt2``, in eager PyTorch.

Run timings under the shared lock:
    flock /tmp/snnet-bench.lock .venv/bin/python benchmarks/bench_front.py --run /tmp/front-demo
Figures go to benchmarks/results/front.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import snnet  # noqa: E402
from snnet.artifact import read_front_config  # noqa: E402
from snnet.export import export_onnx, export_stitch  # noqa: E402
from snnet.export.front import export_front, front_network  # noqa: E402
from snnet.export.graphs import write_pt2  # noqa: E402
from snnet.export.switch import tensor_bytes  # noqa: E402
from snnet.files import atomic_write  # noqa: E402
from snnet.measure.results import Results  # noqa: E402


def session(path: str | Path, *, prepack: bool = True) -> ort.InferenceSession:
    """One intra-op thread; ``prepack=False``: ONNX Runtime's weight prepacking off."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unfolded(path: Path, out: Path) -> Path:
    """The front with each branch reading its shared weights straight from the main graph (the
    ``Mul(w, 1)`` takes removed): ONNX Runtime then passes every one into the branch per call."""
    model = onnx.load(path)

    def strip(g: onnx.GraphProto) -> None:
        alias = {}
        keep = []
        for n in g.node:
            if n.op_type == "Mul" and n.input[1].startswith("one_"):
                alias[n.output[0]] = n.input[0]
                continue
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    strip(a.g)
            keep.append(n)
        for n in keep:
            n.input[:] = [alias.get(i, i) for i in n.input]
        del g.node[:]
        g.node.extend(keep)

    strip(model.graph)
    onnx.save(model, out)
    return out


def time_pairs(calls: list, rounds: int, warmup: int) -> list[list[int]]:
    """Per callable, ``rounds`` timings in ns, the callables interleaved call by call (their
    order rotating each round, so none always follows another)."""
    for _ in range(warmup):
        for f in calls:
            f()
    times: list[list[int]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for r in range(rounds):
        rot = order[r % len(order) :] + order[: r % len(order)]
        for k in rot:
            t = time.perf_counter_ns()
            calls[k]()
            times[k].append(time.perf_counter_ns() - t)
    return times


def demo_run(path: Path) -> Path:
    if not (path / "results.json").is_file():
        cmd = [sys.executable, "-m", "snnet", "demo", "--steps", "50", "--out", str(path)]
        subprocess.run(
            [*cmd, "--quiet"],
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")},
        )
    return path


def measure_front(net, stitches, results, work: Path, name: str, args) -> dict:
    out = work / name
    start = time.perf_counter()
    export_front(net, out, ["onnx"], stitches=stitches, results=results)
    export_s = time.perf_counter() - start
    config = read_front_config(out)
    rows = config["stitches"]
    front_file = out / "model.onnx"
    model = onnx.load(front_file)
    front = front_network(net, [r["stitch"] for r in rows])
    held = sum(t.numel() * t.element_size() for t in [*front.parameters(), *front.buffers()])
    singles = []
    for r in rows:
        single = work / f"{name}-{r['stitch'].replace(':', '_')}.onnx"
        export_onnx(export_stitch(net, r["stitch"]), single)
        singles.append(single)
    figures = {
        "stitches": [r["stitch"] for r in rows],
        "export_s": round(export_s, 1),
        "file_bytes": front_file.stat().st_size,
        "tensor_bytes": tensor_bytes(model),
        "distinct_parameter_bytes": held,
        "single_files_bytes": sum(p.stat().st_size for p in singles),
        "max_abs_error": config["checked"]["onnx"],
    }
    figures["size_ratio"] = round(figures["file_bytes"] / held, 4)
    data = front.data_config
    pixels = torch.randint(0, 256, (1, *data.input_size), dtype=torch.uint8)
    x = data.normalize(pixels).numpy()
    fronts = {
        "front": session(front_file),
        "unfolded": session(unfolded(front_file, work / f"{name}-unfolded.onnx")),
        "front_no_prepack": session(front_file, prepack=False),
    }
    load = os.getloadavg()[0]
    per_stitch = []
    for i, single in enumerate(singles):
        feeds = {"pixels": pixels.numpy(), "stitch": np.array(i, dtype=np.int64)}
        own, own_np = session(single), session(single, prepack=False)
        calls = [
            lambda f=fronts["front"], d=feeds: f.run(None, d),
            lambda s=own: s.run(None, {"x": x}),
            lambda f=fronts["unfolded"], d=feeds: f.run(None, d),
            lambda f=fronts["front_no_prepack"], d=feeds: f.run(None, d),
            lambda s=own_np: s.run(None, {"x": x}),
        ]
        med = [statistics.median(v) / 1e3 for v in time_pairs(calls, args.calls, args.warmup)]
        row = {"stitch": rows[i]["stitch"], "calls": args.calls}
        row.update(front_us=round(med[0], 1), single_us=round(med[1], 1))
        row["front_minus_single_us"] = round(med[0] - med[1], 1)
        row["unfolded_minus_single_us"] = round(med[2] - med[1], 1)
        row.update(front_no_prepack_us=round(med[3], 1), single_no_prepack_us=round(med[4], 1))
        row["front_minus_single_no_prepack_us"] = round(med[3] - med[4], 1)
        per_stitch.append(row)
        print(
            f"  {name} {rows[i]['stitch']:<10} front {med[0]:6.1f} µs, own file {med[1]:6.1f} µs: "
            f"{med[0] - med[1]:+5.1f} µs (unfolded {med[2] - med[1]:+5.1f}; "
            f"both without prepacking {med[3] - med[4]:+5.1f})",
            flush=True,
        )
    figures["latency"] = per_stitch
    figures["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return figures


def measure_pt2(net, stitches, work: Path, args) -> dict:
    out = work / "pt2"
    start = time.perf_counter()
    export_front(net, out, ["pt2"], stitches=stitches)
    export_s = time.perf_counter() - start
    rows = read_front_config(out)["stitches"]
    program = torch.export.load(out / "model.pt2").module()
    data = net.data_config
    pixels = torch.randint(0, 256, (1, *data.input_size), dtype=torch.uint8)
    x = data.normalize(pixels)
    per_stitch = []
    with torch.inference_mode():
        for i, r in enumerate(rows):
            single = work / f"pt2-{i}.pt2"
            write_pt2(export_stitch(net, r["stitch"]), str(single))
            own = torch.export.load(single).module()
            index = torch.tensor(i)
            calls = [lambda i=index: program(pixels, i), lambda m=own: m(x)]
            t = time_pairs(calls, max(args.calls // 10, 100), 20)
            med = [statistics.median(v) / 1e3 for v in t]
            per_stitch.append(
                {"stitch": r["stitch"], "front_us": round(med[0]), "single_us": round(med[1])}
            )
            print(
                f"  pt2 {r['stitch']:<10} front {med[0]:8.0f} µs  own file {med[1]:8.0f} µs",
                flush=True,
            )
    return {
        "stitches": [r["stitch"] for r in rows],
        "export_s": round(export_s, 1),
        "file_bytes": (out / "model.pt2").stat().st_size,
        "latency": per_stitch,
    }


def measure_large(work: Path, calls: int) -> dict:
    """A front of DeiT-Ti/S-sized ViTs (widths 192 and 384, depth 12, 224², random weights):
    anchor 0 and ``0:5-1:6`` through the front against their own files, with and without
    prepacking, ``calls`` interleaved calls each."""
    from snnet.data import DataConfig

    torch.manual_seed(0)
    anchors = [
        snnet.timm_anchor("vit_tiny_patch16_224", pretrained=False, embed_dim=d, num_heads=h)
        for d, h in ((192, 3), (384, 6))
    ]
    net = snnet.SNNet(anchors).eval()
    net.data_config = DataConfig(3, (224, 224), (0.5,) * 3, (0.25,) * 3)
    stitches = ["0", "0:5-1:6"]
    export_front(net, work / "large", ["onnx"], stitches=stitches)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    x = net.data_config.normalize(torch.from_numpy(pixels)).numpy()
    out = []
    for i, s in enumerate(stitches):
        own = work / f"large-{i}.onnx"
        export_onnx(export_stitch(net, s), own)
        sessions = [
            session(p, prepack=pp) for pp in (True, False) for p in (work / "large/model.onnx", own)
        ]
        feeds = [{"pixels": pixels, "stitch": np.array(i, dtype=np.int64)}, {"x": x}] * 2
        fns = [lambda o=o, d=d: o.run(None, d) for o, d in zip(sessions, feeds, strict=True)]
        med = [statistics.median(v) / 1e6 for v in time_pairs(fns, calls, 3)]
        row = {"stitch": s, "front_ms": round(med[0], 2), "single_ms": round(med[1], 2)}
        row.update(front_no_prepack_ms=round(med[2], 2), single_no_prepack_ms=round(med[3], 2))
        out.append(row)
        print(f"  large {s:<8} {row}", flush=True)
    return {"anchors": "ViT widths 192 / 384, depth 12, 224²", "calls": calls, "latency": out}


def spread(net, count: int) -> list[str]:
    """The anchors and ``count`` - anchors stitches spread evenly over the costs between."""
    anchors = [s for s in net.stitches if s.is_anchor]
    hops = sorted((s for s in net.stitches if not s.is_anchor), key=lambda s: net.cost(s).macs)
    k = count - len(anchors)
    picks = anchors + [hops[round((j + 0.5) * len(hops) / k)] for j in range(k)]
    return [str(s) for s in sorted(picks, key=lambda s: net.cost(s).macs)]


def tiny_graph(seed: int) -> onnx.ModelProto:
    """A single-stitch graph as small as one can be (a flatten and a 784×10 MatMul), so that
    what a front adds around it is all that is timed."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((784, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([-1, 784], np.int64), "shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def measure_depth(work: Path, args) -> dict:
    """What the front adds per call by its size: fronts of 1..32 tiny graphs (0..5 ``If``
    levels) against one tiny graph's own file, stitch 0, interleaved."""
    from snnet.export.switch import switch_graph

    pixels = np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    x = ((pixels.astype(np.float32) / 255 - 0.3) / 0.3).astype(np.float32)
    onnx.save(tiny_graph(0), work / "tiny.onnx")
    own = session(work / "tiny.onnx")
    sizes = (1, 2, 4, 8, 16, 32)
    calls = [lambda: own.run(None, {"x": x})]
    for n in sizes:
        path = work / f"tiny-front-{n}.onnx"
        onnx.save(switch_graph([tiny_graph(k) for k in range(n)], mean=[0.3], std=[0.3]), path)
        feeds = {"pixels": pixels, "stitch": np.array(0, dtype=np.int64)}
        front = session(path)
        calls.append(lambda s=front, d=feeds: s.run(None, d))
    med = [statistics.median(v) / 1e3 for v in time_pairs(calls, args.calls, args.warmup)]
    added = {str(n): round(m - med[0], 2) for n, m in zip(sizes, med[1:], strict=True)}
    print(f"  tiny graph {med[0]:.1f} µs; a front of n adds (µs): {added}", flush=True)
    return {"own_file_us": round(med[0], 2), "front_adds_us": added, "calls": args.calls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="/tmp/front-demo", help="a snnet demo run (trained if absent)")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per session and stitch")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--wide", type=int, default=8, help="stitches of the wide front (0: none)")
    p.add_argument("--pt2", action="store_true", help="also export and time the .pt2 front")
    p.add_argument(
        "--large", type=int, default=0, metavar="CALLS", help="also time a DeiT-Ti/S-sized front"
    )
    p.add_argument("--out", default=str(HERE / "results" / "front.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    run = demo_run(Path(args.run))
    net = snnet.load(run).eval()
    results = Results.load(run / "results.json")
    figures: dict = {
        "family": [a.name for a in net.anchors],
        "run": str(run),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        figures["depth"] = measure_depth(work, args)
        figures["front"] = measure_front(net, None, results, work, "front", args)
        if args.wide:
            wide = spread(net, args.wide)
            figures["wide"] = measure_front(net, wide, results, work, "wide", args)
        if args.large:
            figures["large"] = measure_large(work, args.large)
        if args.pt2:
            figures["pt2"] = measure_pt2(net, figures["front"]["stitches"], work, args)
    for key in ("front", "wide"):
        if key in figures:
            f = figures[key]
            worst = max(r["front_minus_single_us"] for r in f["latency"])
            worst_np = max(r["front_minus_single_no_prepack_us"] for r in f["latency"])
            print(
                f"{key}: {len(f['stitches'])} stitches; file {f['file_bytes']:,} B = "
                f"{f['size_ratio']:.3f}× the {f['distinct_parameter_bytes']:,} B of distinct "
                f"tensors (own files together {f['single_files_bytes']:,} B); max abs logit "
                f"difference {max(f['max_abs_error']):.2g}; front − own file at most {worst:+.1f} "
                f"µs per call ({worst_np:+.1f} without prepacking); load {f['load_avg_1min']}"
            )
    atomic_write(args.out, lambda fh: json.dump(figures, fh, indent=2, sort_keys=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
