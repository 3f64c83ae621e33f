"""Why least squares on a GPU gives ResNet stitching layers ~4 % away from the CPU's: likely TF32.

``bench_cuda.py`` solves the stitching layers on both devices from the same images under
PyTorch's default settings, where cuDNN may run float32 convolutions in TF32 (inputs rounded to
a 10-bit mantissa). This script needs no GPU: it rounds every convolution's input and weight the
way TF32 does, on the CPU, while least squares collects its features, and compares the layers
with those of plain float32. It then runs both networks in plain float32 on a few images: if
the stitches' logits agree while the layers differ, the least-squares problem is ill-posed in
some directions (the features feeding a layer are rank-deficient, which it also counts) and the
difference is harmless. The emulation rounds more than cuDNN does: DeiT's patch-embedding
convolution moves its layers by 4e-4 here, by 1e-6 on an H100. So it supports the cause, it
does not prove it; a GPU run with ``torch.backends.cudnn.allow_tf32 = False`` would.

    .venv/bin/python benchmarks/bench_tf32_lstsq.py [--families resnet resnet-swin deit]

Writes benchmarks/results/tf32_lstsq.json and prints one line per family.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import snnet
from bench_cuda import build, images, relative, sample  # this folder: run as a script
from snnet.files import atomic_write

OUT = Path(__file__).parent / "results" / "tf32_lstsq.json"


def to_tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32's 10-bit mantissa (round to nearest), still stored as float32."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def tf32_convolutions():
    """Every ``F.conv2d`` call sees TF32-rounded input and weight, as cuDNN's TF32 kernels do
    (they accumulate in float32)."""
    conv2d = F.conv2d

    def rounded(x, weight, *args, **kwargs):
        return conv2d(to_tf32(x), to_tf32(weight), *args, **kwargs)

    F.conv2d = rounded
    try:
        yield
    finally:
        F.conv2d = conv2d


@contextlib.contextmanager
def gram_ranks(out: list[tuple[int, int]]):
    """Records (columns, numerical rank) of every normal-equations matrix least squares solves."""
    lstsq = torch.linalg.lstsq

    def recorded(gram, cross, **kwargs):
        s = torch.linalg.svdvals(gram)
        out.append((gram.shape[0], int((s > s[0] * 1e-10).sum())))
        return lstsq(gram, cross, **kwargs)

    torch.linalg.lstsq = recorded
    try:
        yield
    finally:
        torch.linalg.lstsq = lstsq


def check(family: str) -> dict:
    fp32, tf32 = build(family), build(family)  # the same random anchors (seeded)
    x = images(fp32, 32, seed=1)  # bench_cuda's least-squares images
    ranks: list[tuple[int, int]] = []
    with gram_ranks(ranks):
        snnet.init_least_squares(fp32, x)
    with tf32_convolutions():
        snnet.init_least_squares(tf32, x)
    a, b = fp32.layers.state_dict(), tf32.layers.state_dict()
    xs = images(fp32, 4, seed=2)
    with torch.inference_mode():
        logits = max(
            relative(tf32(xs, stitch=s), fp32(xs, stitch=s)) for s in sample(fp32.stitches, 6)
        )
    return {
        "family": family,
        "lstsq_max_rel_diff": max(relative(b[k], v) for k, v in a.items()),
        "logits_max_rel_diff_fp32": logits,
        "layers": len(ranks),
        "layers_rank_deficient": sum(rank < cols for cols, rank in ranks),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["resnet", "resnet-swin", "deit"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families:
        rows.append(check(family))
        print(json.dumps(rows[-1]))
    figures = {"emulated": "TF32 convolutions (cuDNN's default), CPU", "families": rows}
    atomic_write(args.out, lambda f: f.write(json.dumps(figures, indent=2) + "\n"))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
