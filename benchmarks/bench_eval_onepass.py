"""Evaluating every stitch in one pass (snnet.evaluate_all) vs one pass over the data per stitch.

Two settings (issue 3):
  (a) the demo family (3 Fashion-MNIST ViTs, 71 stitches) read from an ImageFolder of PNGs, where
      every pass decodes every image again: goal >= 5x;
  (b) DeiT-Ti/S/B at 224x224 (random init, 71 stitches) on a few in-memory images, where compute
      dominates and sharing prefixes bounds the gain: goal >= 1.2x.
Both paths give the same counts (checked). Also reported: the blocks and multiply-adds one pass
runs against one pass per stitch (the bound on the compute gain), and one decoding pass. Timed in
the order one pass, per stitch, per stitch, one pass after a warm-up; speedup = total per-stitch
time / total one-pass time.

    .venv/bin/python benchmarks/bench_eval_onepass.py [--threads 1] [--images 1000] [--deit-images 8]

Writes benchmarks/results/eval_onepass.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import snnet
from snnet.cli.evaluate import open_data
from snnet.cost import count_macs
from snnet.data import fashion_mnist, write_image_folder
from snnet.files import atomic_write
from snnet.measure.evaluate import StitchTree, evaluate_all

OUT = Path(__file__).parent / "results" / "eval_onepass.json"


def per_stitch(net: snnet.SNNet, make_batches) -> dict[str, tuple[int, int]]:
    """The reference's way: a full pass over the data (decoding included) for every stitch."""
    counts = {}
    with torch.inference_mode():
        for s in net.stitches:
            c1 = c5 = 0
            for x, y in make_batches():
                top = net(x, stitch=s).topk(5, dim=-1).indices
                c1 += (top[:, 0] == y).sum().item()
                c5 += (top == y[:, None]).any(-1).sum().item()
            counts[str(s)] = (c1, c5)
    return counts


def one_pass(net: snnet.SNNet, data, **kwargs) -> dict[str, tuple[int, int]]:
    results = evaluate_all(net, data, progress=False, device="cpu", **kwargs)
    n = results.meta["accuracy"]["images"]
    return {str(r.stitch): (round(r.top1 * n / 100), round(r.top5 * n / 100)) for r in results}


def abba(one, each) -> tuple[list[float], list[float], dict, dict]:
    """Time ``one`` and ``each`` in the order one, each, each, one, so that a load that drifts
    during the run hits both alike; returns both times and both outputs."""
    times: dict[str, list[float]] = {"one": [], "each": []}
    outs = {}
    for name in ("one", "each", "each", "one"):
        t = time.perf_counter()
        outs[name] = (one if name == "one" else each)()
        times[name].append(time.perf_counter() - t)
    return times["one"], times["each"], outs["one"], outs["each"]


def speed(t_one: list[float], t_each: list[float]) -> dict:
    return {
        "one_pass_s": [round(t, 2) for t in t_one],
        "per_stitch_s": [round(t, 2) for t in t_each],
        "speedup": round(sum(t_each) / sum(t_one), 3),
    }


def sharing(net: snnet.SNNet, meta_net: snnet.SNNet, x_meta: torch.Tensor) -> dict:
    """Blocks and multiply-adds of one pass of the tree vs every stitch on its own (per image)."""
    tree = StitchTree(meta_net)
    with torch.inference_mode():
        macs, _ = count_macs(lambda x: [lg for _, lg in tree.run(x)], x_meta)
    separate = sum(meta_net.cost(s).macs for s in meta_net.stitches)
    return {
        "blocks_one_pass": tree.block_runs,
        "blocks_per_stitch": tree.block_runs_per_stitch,
        "gmacs_one_pass": round(macs / 1e9, 4),
        "gmacs_per_stitch": round(separate / 1e9, 4),
        "compute_bound_speedup": round(separate / macs, 3),
    }


def demo_family(images: int, batch_size: int, workers: int) -> dict:
    from snnet.zoo import create_demo_anchor, demo_family_names

    names = demo_family_names()
    try:
        anchors, pretrained = [create_demo_anchor(n) for n in names], True
    except FileNotFoundError:  # weights not built yet: timing does not depend on them
        anchors, pretrained = [create_demo_anchor(n, pretrained=False) for n in names], False
    net = snnet.SNNet(anchors).eval()
    meta = snnet.SNNet([create_demo_anchor(n, pretrained=False) for n in names]).eval()
    folder = Path(tempfile.mkdtemp(prefix="snnet-bench-fmnist-"))
    try:
        write_image_folder(fashion_mnist("test"), folder, limit=images)
        data, _ = open_data(net, folder)  # what `snnet evaluate --data FOLDER` reads

        def loader():
            return DataLoader(data, batch_size=batch_size, num_workers=workers)

        one_pass(net, data, batch_size=batch_size, num_workers=workers, max_images=16)  # warm-up
        t = time.perf_counter()
        sum(len(y) for _, y in loader())
        t_decode = time.perf_counter() - t
        t_one, t_each, a, b = abba(
            lambda: one_pass(net, data, batch_size=batch_size, num_workers=workers),
            lambda: per_stitch(net, loader),
        )
    finally:
        shutil.rmtree(folder)
    assert a == b, "one pass and per-stitch passes disagree"
    return {
        "anchors": names,
        "pretrained": pretrained,
        "stitches": len(net.stitches),
        "images": images,
        "batch_size": batch_size,
        "loader_workers": workers,
        "decode_one_pass_s": round(t_decode, 3),
        **speed(t_one, t_each),
        "goal": ">= 5x",
        **sharing(net, meta, torch.zeros(1, 1, 28, 28)),
    }


def deit(images: int) -> dict:
    import timm

    names = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    torch.manual_seed(0)
    net = snnet.SNNet([timm.create_model(n, pretrained=False).eval() for n in names]).eval()
    meta = snnet.SNNet([snnet.timm_anchor(n, device="meta") for n in names])
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randn(images, 3, 224, 224, generator=g), torch.randint(0, 1000, (images,)))]
    one_pass(net, [(batch[0][0][:1], batch[0][1][:1])], batch_size=1)  # warm-up: every module
    t_one, t_each, a, b = abba(
        lambda: one_pass(net, batch, batch_size=images), lambda: per_stitch(net, lambda: batch)
    )
    assert a == b, "one pass and per-stitch passes disagree"
    return {
        "anchors": names,
        "stitches": len(net.stitches),
        "images": images,
        **speed(t_one, t_each),
        "goal": ">= 1.2x",
        **sharing(net, meta, torch.zeros(1, 3, 224, 224, device="meta")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=1000, help="PNGs in the demo image folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the PNGs")
    p.add_argument("--deit-images", type=int, default=8)
    p.add_argument("--skip-deit", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    # Parts can be re-measured separately: each keeps the machine state it was measured in, and a
    # run updates only the parts it measured.
    report = json.loads(OUT.read_text()) if OUT.exists() else {}
    report.pop("machine", None)

    def machine() -> dict:
        return {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load": [round(v, 2) for v in os.getloadavg()],
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    if not args.skip_demo:
        before = machine()
        report["demo_image_folder"] = demo_family(args.images, args.batch_size, args.workers)
        report["demo_image_folder"]["machine"] = {**before, "load_after": machine()["load"]}
        print(json.dumps(report["demo_image_folder"], indent=2))
    if not args.skip_deit:
        before = machine()
        report["deit_224"] = deit(args.deit_images)
        report["deit_224"]["machine"] = {**before, "load_after": machine()["load"]}
        print(json.dumps(report["deit_224"], indent=2))
    atomic_write(OUT, lambda f: json.dump(report, f, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
