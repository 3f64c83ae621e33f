"""Deploy benchmark: an exported stitch against the same stitch inside the SN-Net.

Measures, on DeiT-Ti/S/B at 224² with random weights (timing and memory do not depend on the
weights' values):

1. speed: exported stitch vs in-network stitch, interleaved call by call (ABBA order), median
   of many calls, batch 1, one thread; goal: ratio ≤ 1.02;
2. memory: parameter bytes of an exported stitch vs the whole SN-Net, and process RSS measured
   in fresh subprocesses (load the SN-Net vs load the exported stitch), plus the peak RSS added
   by exporting vs by deep-copying the whole SN-Net and pruning it;
3. switching: ``net.stitch = ...`` vs rebuilding a model (timm.create_model + load_state_dict),
   exporting a stitch, or loading an exported stitch.

Run: python benchmarks/bench_deploy.py [--quick]; figures go to benchmarks/results/deploy.json.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import snnet  # noqa: E402
from snnet.export import check_onnx, export_stitch, load_stitch, save_stitch  # noqa: E402
from snnet.files import atomic_write  # noqa: E402
from snnet.measure.latency import machine, percentile, time_callable  # noqa: E402

NAMES = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Give freed heap back to the OS (else an export may reuse it unseen), then make VmHWM
    (peak RSS) start again from the current RSS (Linux ≥ 4.0)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


# -- children: each measurement of memory in a fresh process ----------------------------------
def child(kind: str, path: str, stitch: str) -> None:
    torch.set_num_threads(1)
    # Page in PyTorch's kernels first (a tiny ViT's forward): the first forward of any model maps
    # in library code, which is not the model's memory.
    warm = snnet.timm_anchor("vit_tiny_patch16_224", img_size=32, depth=1).eval()
    with torch.inference_mode():
        warm(torch.randn(1, 3, 32, 32))
    del warm
    reset_peak()
    base = status_kb("VmRSS")
    out: dict = {"kind": kind, "base_rss_mb": base / 1024}
    x = torch.randn(1, 3, 224, 224)
    # one forward pass, so every weight the stitch runs is resident (safetensors maps lazily)
    if kind == "load_network":
        net = snnet.load(path).eval()
        with torch.inference_mode():
            net(x, stitch=stitch)
        out["params"] = sum(p.numel() for p in net.parameters())
    elif kind == "load_stitch":
        model = load_stitch(path)
        with torch.inference_mode():
            model(x)
        out["params"] = sum(p.numel() for p in model.parameters())
    elif kind in ("export", "deepcopy_prune"):
        net = snnet.load(path)
        reset_peak()
        before = status_kb("VmRSS")
        if kind == "export":
            model = export_stitch(net, stitch)
        else:  # the naive way: copy everything, then drop what the stitch does not run
            whole = copy.deepcopy(net)
            model = whole  # (pruning frees memory afterwards but the peak has happened)
        out["peak_added_mb"] = (status_kb("VmHWM") - before) / 1024
        out["params"] = sum(p.numel() for p in model.parameters())
    out["rss_mb"] = status_kb("VmRSS") / 1024
    out["peak_rss_mb"] = status_kb("VmHWM") / 1024
    out["added_rss_mb"] = (status_kb("VmRSS") - base) / 1024
    print(json.dumps(out))


def run_child(kind: str, path: Path, stitch: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), stitch]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- speed ------------------------------------------------------------------------------------
def interleaved(a, b, x: torch.Tensor, repeats: int, warmup: int = 5) -> dict:
    """Median time of ``a(x)`` and ``b(x)`` timed call by call in ABBA order, so drifts in the
    machine's load hit both alike."""
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            a(x), b(x)
        for i in range(repeats):
            pair = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
            for fn, times in pair:
                start = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - start) * 1e3)
    ma, mb = statistics.median(ta), statistics.median(tb)
    # ratio of medians, and the median of per-pair ratios (robust to slow phases of the machine)
    pair_ratios = [p / q for p, q in zip(ta, tb, strict=True)]
    return {
        "exported_median_ms": round(ma, 3),
        "exported_p90_ms": round(percentile(ta, 90), 3),
        "in_network_median_ms": round(mb, 3),
        "in_network_p90_ms": round(percentile(tb, 90), 3),
        "ratio_of_medians": round(ma / mb, 4),
        "median_pair_ratio": round(statistics.median(pair_ratios), 4),
        "repeats": repeats,
    }


def onnx_figures(model, x: torch.Tensor, quick: bool) -> dict:
    """Export time, error against PyTorch and onnxruntime latency (1 thread) of one stitch."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return {"skipped": "onnxruntime not installed (pip install 'snnet[export]')"}
    import onnxruntime as ort

    from snnet.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, check=False)
        seconds = time.perf_counter() - start
        err = check_onnx(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        reps = 20 if quick else 100
        r = interleaved(lambda _: session.run(None, feed), model, x, reps)
    return {
        "stitch": model.info["stitch"],
        "export_seconds": round(seconds, 1),
        "max_abs_error_vs_torch": err,
        "onnxruntime_median_ms": r["exported_median_ms"],
        "torch_median_ms": r["in_network_median_ms"],
        "repeats": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "STITCH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    torch.set_num_threads(1)
    quick = args.quick
    report: dict = {"machine_at_start": machine(), "models": list(NAMES), "img_size": 224}

    torch.manual_seed(0)
    anchors = [snnet.timm_anchor(n) for n in NAMES]
    net = snnet.SNNet(anchors).eval()
    x = torch.randn(1, 3, 224, 224)
    stitches = {"ti_s": "0:5-1:6", "s_b": "1:7-2:8"}
    report["stitches"] = {k: {"stitch": s, "path": net.describe(s)} for k, s in stitches.items()}

    # 1. speed, exported vs in the network
    report["speed"] = {}
    for key, s in stitches.items():
        model = export_stitch(net, s).eval()
        with torch.no_grad():
            assert torch.equal(model(x), net(x, stitch=s))
        reps = {"ti_s": 30 if quick else 150, "s_b": 10 if quick else 50}[key]
        in_net = lambda x, s=s: net(x, stitch=s)  # noqa: E731
        r = interleaved(model, in_net, x, reps)
        # A/A control: the same function against itself shows the noise floor of this machine
        control = interleaved(in_net, in_net, x, reps)
        r["control_a_a_ratio_of_medians"] = control["ratio_of_medians"]
        r["control_a_a_median_pair_ratio"] = control["median_pair_ratio"]
        report["speed"][key] = {"stitch": s, "gmacs": round(net.cost(s).gmacs, 3), **r}
        print(f"speed {s}: {r}", flush=True)
    report["onnx"] = onnx_figures(export_stitch(net, stitches["ti_s"]).eval(), x, quick)
    print(f"onnx: {report['onnx']}", flush=True)

    # 3. switching vs rebuilding
    a, b = net.stitches[0], net.stitches[-1]

    def switch() -> None:
        net.stitch = a
        net.stitch = b

    n_switch = 20000
    start = time.perf_counter()
    for _ in range(n_switch):
        switch()
    switch_us = (time.perf_counter() - start) / (2 * n_switch) * 1e6
    state = anchors[1].model.state_dict()

    def rebuild() -> None:
        import timm

        m = timm.create_model(NAMES[1])
        m.load_state_dict(state)

    reps = 3 if quick else 7
    t_rebuild = time_callable(rebuild, repeats=reps, warmup=1)
    t_export = time_callable(lambda: export_stitch(net, "1:7-2:8"), repeats=reps, warmup=1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_stitch(export_stitch(net, "1:7-2:8"), tmp / "stitch")
        t_load = time_callable(lambda: load_stitch(tmp / "stitch"), repeats=reps, warmup=1)
        report["switching"] = {
            "set_stitch_us": round(switch_us, 3),
            "rebuild_deit_s_timm_create_and_load_ms": round(t_rebuild.median_ms, 1),
            "export_stitch_1:7-2:8_ms": round(t_export.median_ms, 1),
            "load_exported_stitch_1:7-2:8_ms": round(t_load.median_ms, 1),
        }
        print(f"switching: {report['switching']}", flush=True)

        # 2. memory
        full = sum(p.numel() * p.element_size() for p in net.parameters())
        memory: dict = {"snnet_param_mb": round(full / 2**20, 1), "stitches": {}}
        for s in stitches.values():
            m = export_stitch(net, s)
            own = sum(p.numel() * p.element_size() for p in m.parameters())
            memory["stitches"][s] = {
                "param_mb": round(own / 2**20, 1),
                "share_of_snnet": round(own / full, 3),
            }
        snnet.save(net, tmp / "net")
        net = anchors = state = None  # free the SN-Net before the subprocesses run
        s = "1:7-2:8"
        save_stitch(export_stitch(snnet.load(tmp / "net"), s), tmp / "s_b")
        rows = {
            "load_network": run_child("load_network", tmp / "net", s),
            "load_stitch": run_child("load_stitch", tmp / "s_b", s),
            "export": run_child("export", tmp / "net", s),
            "deepcopy_whole_snnet": run_child("deepcopy_prune", tmp / "net", s),
        }
        memory["rss_subprocess_mb"] = {
            "load_snnet_added": round(rows["load_network"]["added_rss_mb"], 1),
            f"load_exported_{s}_added": round(rows["load_stitch"]["added_rss_mb"], 1),
            "interpreter_with_torch_timm_snnet": round(rows["load_network"]["base_rss_mb"], 1),
            f"peak_added_by_export_stitch_{s}": round(rows["export"]["peak_added_mb"], 1),
            "peak_added_by_deepcopy_of_snnet": round(
                rows["deepcopy_whole_snnet"]["peak_added_mb"], 1
            ),
        }
        report["memory"] = memory
        print(f"memory: {memory}", flush=True)

    report["machine_at_end"] = machine()
    out = HERE / "results" / "deploy.json"
    atomic_write(out, lambda f: json.dump(report, f, indent=2, sort_keys=True))
    print(json.dumps(report, indent=2, sort_keys=True))
    print(f"written to {out}")


if __name__ == "__main__":
    if os.environ.get("OMP_NUM_THREADS") is None:
        os.environ["OMP_NUM_THREADS"] = "1"  # children too
    main()
