"""(A) Do the trained weights depend on machine load? Train the demo's SN-Net for a few steps.

Least-squares init (512 images), then ``--steps`` steps of the demo recipe (train.fit) at
``--threads`` intra-op threads; saves every weight to ``--out`` (a .pt state dict) and the time of
each step to ``--out``.json. Compare two runs with ``--compare A.pt B.pt`` (torch.equal per tensor).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/recipe/repro.py --threads 2 --steps 60 --out x.pt
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def compare(a: str, b: str) -> dict:
    sa, sb = torch.load(a), torch.load(b)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    worst = max((float((sa[k] - sb[k]).abs().max()) for k in differ), default=0.0)
    return {"tensors": len(sa), "differ": len(differ), "max_abs_diff": worst, "first": differ[:5]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default=None)
    p.add_argument("--compare", nargs=2, default=None)
    p.add_argument(
        "--mkl-set-dynamic",
        action="store_true",
        help="call MKL_Set_Dynamic(0) (C interface), exported by libtorch_cpu, after importing torch",
    )
    p.add_argument(
        "--mkl-static-in-python",
        action="store_true",
        help="set MKL_DYNAMIC=FALSE from Python after importing torch (is that early enough?)",
    )
    args = p.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return
    if args.mkl_static_in_python:
        os.environ["MKL_DYNAMIC"] = "FALSE"
    if args.mkl_set_dynamic:
        import ctypes

        lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
        ctypes.CDLL(str(lib)).MKL_Set_Dynamic(0)  # C interface, int by value
    torch.set_num_threads(args.threads)
    import snnet
    from snnet.data import EpochBatches, fashion_mnist
    from snnet.train import TrainConfig, train_loop

    anchors, options = snnet.resolve_anchors("fmnist")
    net = snnet.SNNet(anchors, **options)
    train = fashion_mnist("train")
    t = time.perf_counter()
    snnet.init_least_squares(net, train.tensors(512, seed=0)[0], progress=False)
    ls_seconds = time.perf_counter() - t
    torch.save(
        net.state_dict(), args.out + ".init.pt"
    )  # least squares alone, to localise a difference
    config = TrainConfig(epochs=5, steps=args.steps, lr=2e-3, anchor_lr_scale=0.2, seed=0)
    batches = EpochBatches(train, 128, seed=0)
    t = time.perf_counter()
    result = train_loop(net, batches, config, progress=False)
    seconds = time.perf_counter() - t
    torch.save(net.state_dict(), args.out)
    env = {
        k: os.environ.get(k)
        for k in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "MKL_DYNAMIC",
            "OMP_DYNAMIC",
            "OMP_WAIT_POLICY",
            "MKL_CBWR",
            "ONEDNN_DEFAULT_FPMATH_MODE",
            "DNNL_VERBOSE",
        )
    }
    record = {
        "threads": args.threads,
        "steps": args.steps,
        "ls_seconds": round(ls_seconds, 2),
        "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / args.steps, 4),
        "last_loss": result.losses[-1],
        "load_avg_1m_end": os.getloadavg()[0],
        "env": env,
        "losses": result.losses,  # per step: the first differing one locates a divergence
        "stitches": result.stitches,
    }
    Path(args.out + ".json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
