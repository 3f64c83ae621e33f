"""snnet on a CUDA GPU: the paths the CPU-only tests cannot reach, checked and timed.

For each family preset at its real size (random-initialised timm models; pretrained weights do
not change these paths) and the shipped demo family:

1. least squares on the GPU gives the stitching layers the CPU gives (relative difference);
2. anchors and a sample of stitches give the CPU's logits on the GPU in fp32 (TF32 off), and the
   same top-1 class under bfloat16 autocast (the share of images that agree);
3. every stitch runs on the GPU (one batch each), and its latency is measured there
   (``measure_latency``, batch ``--batch``, PyTorch's default TF32 settings): the latency table a
   GPU user gets;
4. an exported stitch saved and reloaded on the GPU gives the network's logits;
5. DeiT (``--train-family``) trains 12 steps under AMP with distillation on the GPU, straight through and stopped by
   SIGTERM then resumed (the two runs' losses compared).

    python benchmarks/bench_cuda.py [--families deit swin ...] [--batch 64]

Writes benchmarks/results/cuda.json (after every family, so a kill keeps what was done) and
prints a summary. A failure in one family is recorded with its traceback and the rest still run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import signal
import tempfile
import time
import traceback
from pathlib import Path

import torch

import snnet
from snnet.data import EpochBatches
from snnet.files import atomic_write
from snnet.measure.results import Results
from snnet.train import TrainConfig, train_loop
from snnet.train.pipeline import num_outputs
from snnet.train.step import amp_dtype

OUT = Path(__file__).parent / "results" / "cuda.json"
FAMILIES = ("fmnist", "fmnist-xs-sm-l", "deit", "swin", "resnet", "resnet-swin", "levit")


def build(family: str) -> snnet.SNNet:
    torch.manual_seed(0)
    kwargs = {} if family.startswith("fmnist") else {"pretrained": False}
    anchors, options = snnet.resolve_anchors(family, **kwargs)
    return snnet.SNNet(anchors, **options).eval()


def images(net: snnet.SNNet, n: int, seed: int = 0) -> torch.Tensor:
    shape = net.anchors[0].input_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def sample(stitches: tuple, k: int) -> list:
    """The anchors and ``k`` stitches spread over the list."""
    anchors = [s for s in stitches if s.is_anchor]
    others = [s for s in stitches if not s.is_anchor]
    step = max(1, len(others) // k)
    return anchors + others[::step][:k]


@contextlib.contextmanager
def fp32_only():
    """TF32 off, for fp32 results comparable with the CPU's; PyTorch's defaults restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@torch.inference_mode()
def agreement(net_cpu, net_gpu, x: torch.Tensor, stitches: list, device: torch.device) -> dict:
    worst_fp32, worst_amp, worst_amp_top1 = 0.0, 0.0, 1.0
    for s in stitches:
        ref = net_cpu(x, stitch=s)
        out = net_gpu(x.to(device), stitch=s).cpu()
        worst_fp32 = max(worst_fp32, relative(out, ref))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            amp = net_gpu(x.to(device), stitch=s).float().cpu()
        worst_amp = max(worst_amp, relative(amp, ref))
        same = (amp.argmax(-1) == ref.argmax(-1)).float().mean().item()
        worst_amp_top1 = min(worst_amp_top1, same)
    return {
        "stitches_compared": len(stitches),
        "max_rel_diff_fp32": worst_fp32,
        "max_rel_diff_bf16": worst_amp,
        "min_top1_agreement_bf16": worst_amp_top1,  # random weights: near-ties flip under bf16
    }


def check_family(family: str, batch: int, repeats: int, device: torch.device) -> dict:
    row: dict = {"family": family}
    t0 = time.perf_counter()
    net_cpu = build(family)
    net_gpu = build(family).to(device)
    row["stitches"] = len(net_cpu.stitches)
    x_ls = images(net_cpu, 32, seed=1)

    # 1. least squares: the same layers from the same images on both devices
    snnet.init_least_squares(net_cpu, x_ls)
    snnet.init_least_squares(net_gpu, x_ls.to(device))
    cpu_state = net_cpu.layers.state_dict()
    gpu_state = {k: v.cpu() for k, v in net_gpu.layers.state_dict().items()}
    row["lstsq_max_rel_diff"] = max(
        (relative(gpu_state[k], v) for k, v in cpu_state.items()), default=0.0
    )

    # 2. the same logits (fp32), the same classes (bf16 autocast)
    x = images(net_cpu, 4, seed=2)
    with fp32_only():
        row.update(agreement(net_cpu, net_gpu, x, sample(net_cpu.stitches, 6), device))

    # 3. every stitch on the GPU, then its latency there
    xb = images(net_cpu, batch, seed=3).to(device)
    with torch.inference_mode():
        finite = all(torch.isfinite(net_gpu(xb, stitch=s)).all().item() for s in net_gpu.stitches)
    row["every_stitch_finite"] = finite
    t = time.perf_counter()
    results = snnet.measure_latency(
        net_gpu,
        Results.for_network(net_gpu),
        batch_size=batch,
        repeats=repeats,
        warmup=3,
        settle_s=1.0,
        progress=False,
    )
    row["latency_seconds"] = round(time.perf_counter() - t, 1)
    lat = {str(r.stitch): r.latency_ms for r in results}
    row["latency_ms_anchors"] = [lat[str(i)] for i in range(len(net_gpu.anchors))]
    row["latency_ms_range_stitches"] = [
        min(v for k, v in lat.items() if "-" in k),
        max(v for k, v in lat.items() if "-" in k),
    ]
    row["latency_ms"] = lat

    # 4. export one stitch in the middle, save, reload on the GPU
    s = net_gpu.stitches[len(net_gpu.stitches) // 2]
    model = snnet.export_stitch(net_gpu, s)
    with tempfile.TemporaryDirectory() as tmp:
        snnet.save_stitch(model, tmp)
        loaded = snnet.load_stitch(tmp, map_location=device)
        with torch.inference_mode():
            row["export_rel_diff"] = relative(loaded(xb[:8]), net_gpu(xb[:8], stitch=s))
    row["export_stitch"] = str(s)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


class _StopAfter:
    """Epoch batches that send this process SIGTERM after ``k`` batches (a pre-empted job)."""

    def __init__(self, batches: EpochBatches, k: int) -> None:
        self.batches, self.k, self.served = batches, k, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, epoch: int, start: int = 0):
        for batch in self.batches(epoch, start):
            self.served += 1
            if self.served == self.k:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def check_training(device: torch.device, family: str) -> dict:
    """Train under AMP with distillation on the device: once straight through, once stopped by
    SIGTERM and resumed. GPU kernels need not be bit-reproducible, so the losses are compared."""
    net = build(family)
    x = images(net, 96, seed=4)
    y = torch.randint(0, num_outputs(net), (96,), generator=torch.Generator().manual_seed(5))
    batches = EpochBatches(torch.utils.data.TensorDataset(x, y), 16, seed=0)  # 6 per epoch
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-4, amp="auto", distill="end")
    net.to(device)
    snnet.init_least_squares(net, x[:32].to(device))
    start = copy.deepcopy(net.state_dict())
    t = time.perf_counter()
    whole = train_loop(net, batches, config, device=device, progress=False)
    seconds = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        net.load_state_dict(start)
        first = train_loop(
            net, _StopAfter(batches, 7), config, run_dir=tmp, device=device, progress=False
        )
        other = build(family)
        rest = train_loop(
            other, batches, config, run_dir=tmp, resume=True, device=device, progress=False
        )
    diff = max(abs(a - b) for a, b in zip(rest.losses, whole.losses, strict=True))
    return {
        "family": family,
        "amp_dtype": str(amp_dtype("auto", device)),
        "steps": whole.steps,
        "seconds": round(seconds, 2),
        "losses": [round(v, 4) for v in whole.losses],
        "interrupted_at": first.steps if first.interrupted else None,
        "resumed_steps": rest.steps,
        "resumed_same_stitches": rest.stitches == whole.stitches,
        "resumed_max_loss_diff": diff,
        "finite": all(map(math.isfinite, rest.losses)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--batch", type=int, default=64, help="latency batch size (default 64)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per stitch (default 20)")
    p.add_argument("--cpu-threads", type=int, default=8, help="threads of the CPU reference")
    p.add_argument("--train-family", default="deit", choices=FAMILIES, help="family of check 5")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only dry-runs the script")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark checks snnet on a GPU")
    torch.set_num_threads(args.cpu_threads)  # the CPU reference of check 2
    figures: dict = {
        "machine": {
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "platform": platform.platform(),
        },
        "latency_batch": args.batch,
        "families": {},
    }

    def save() -> None:
        atomic_write(args.out, lambda f: json.dump(figures, f, indent=2))

    for family in args.families:
        try:
            row = check_family(family, args.batch, args.repeats, device)
        except Exception:
            row = {"family": family, "error": traceback.format_exc()}
        figures["families"][family] = row
        save()
        brief = {k: v for k, v in row.items() if k != "latency_ms"}
        print(json.dumps(brief), flush=True)
    try:
        figures["training"] = check_training(device, args.train_family)
    except Exception:
        figures["training"] = {"error": traceback.format_exc()}
    save()
    print(json.dumps(figures["training"]), flush=True)


if __name__ == "__main__":
    main()
