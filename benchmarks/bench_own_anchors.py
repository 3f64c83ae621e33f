"""A user's own anchors on a user's own data, through the command line as a user runs it.

The data: an RGB image folder this script generates (``folder``): Fashion-MNIST items of four
classes (trouser, dress, sneaker, bag), scaled, tinted and placed on noisy colour gradients,
72x72 PNGs in ``train/<class>/`` (6,000) and ``val/<class>/`` (1,200, from the test split).

1. ``preprocessing``: two timm anchors (DeiT-Ti, DeiT-S at 64 px, 4 classes) trained with plain
   PyTorch as a user would have them, with mean/std 0.5 and no crop (``anchors``). Then
   ``snnet train`` with ``--mean 0.5 ... --std 0.5 ... --crop-pct 1`` over several seeds: each
   anchor's ``anchors_before`` (scored alone by snnet on the 1,200 held-out images) against the
   user's own standalone accuracy (goal: within 0.3 point), and ``anchors_after`` (goal: no
   anchor loses more than 1 point). A run without the options shows what wrong preprocessing
   costs before any training.
2. ``reheading``: "ImageNet-style" anchors (the same architectures trained elsewhere on another
   task: 10 classes at 64 px, with a 1000-class head) re-headed for the 4-class folder at 48 px
   (a stratified 3,000 of its training images)
   (classifier initialised anew, position embeddings resampled), trained (a) only inside the
   SN-Net, (b) after ``--anchor-epochs`` of each anchor alone, (c) only inside the SN-Net for
   as many epochs as (b) spends in all, (d) as (b), then with soft distillation from the tuned
   anchors. Anchors after training and the mean stitch, per seed.

    .venv/bin/python benchmarks/bench_own_anchors.py all --seeds 0 1 2 --jobs 2

Writes benchmarks/results/own_anchors.json and prints the tables. Every run uses one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "own_anchors.json"
WORK = ROOT / "runs" / "bench-own-anchors"
CLASSES = {1: "trouser", 3: "dress", 7: "sneaker", 8: "bag"}
ARCHS = ("deit_tiny_patch16_224", "deit_small_patch16_224")
USER_PREPROCESSING = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
USER_PREPROCESSING += ["--crop-pct", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


# -- the data ------------------------------------------------------------------------------------
def canvas(item, rng, size: int = 72):
    """One Fashion-MNIST item (28x28 uint8) scaled, tinted bright and placed on a darker noisy
    gradient."""
    import numpy as np
    from PIL import Image

    side = int(rng.integers(40, 66))
    mask = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), np.float32) / 255
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    top, bottom = rng.uniform(0, 110, 3), rng.uniform(0, 110, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    img = (1 - t) * top + t * bottom + rng.normal(0, 8, (size, size, 3))
    img = np.broadcast_to(img, (size, size, 3)).copy()
    tint = rng.uniform(150, 255, 3)
    region = img[y0 : y0 + side, x0 : x0 + side]
    img[y0 : y0 + side, x0 : x0 + side] = region * (1 - mask[..., None]) + tint * mask[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_folder(root: Path, classes: dict[int, str], per_class: dict[str, int], seed: int) -> Path:
    """``root/{train,val}/<class>/*.png`` from Fashion-MNIST's train and test splits."""
    import numpy as np

    from snnet.data import fashion_mnist

    rng = np.random.default_rng(seed)
    for split, source in (("train", "train"), ("val", "test")):
        images = fashion_mnist(source)
        for label, name in classes.items():
            folder = root / split / f"{label:02d}_{name}"
            if folder.is_dir() and len(list(folder.glob("*.png"))) == per_class[split]:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            members = (images.targets == label).nonzero().flatten()[: per_class[split]]
            for i in members.tolist():
                canvas(images.memory[i, 0].numpy(), rng).save(folder / f"{i:05d}.png")
    return root


# -- anchors trained elsewhere -------------------------------------------------------------------
def train_elsewhere(
    arch: str, folder: Path, out: Path, *, size: int, num_classes: int, epochs: int, seed: int = 0
) -> float:
    """``arch`` trained with plain PyTorch on ``folder/train`` at ``size`` px (mean/std 0.5,
    resize without a crop), saved as a plain state dict; returns its top-1 on ``folder/val``
    under the same transform, as the user measures it."""
    import timm
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    train = datasets.ImageFolder(folder / "train", tf)
    val = datasets.ImageFolder(folder / "val", tf)
    model = timm.create_model(arch, img_size=size, num_classes=num_classes)
    loader = torch.utils.data.DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-4, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
    torch.save(model.state_dict(), out)
    return accuracy(model, val)


def accuracy(model, dataset) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=256):
            hits += int((model(x).argmax(-1) == y).sum())
    return 100.0 * hits / len(dataset)


# -- snnet train, as a user runs it ----------------------------------------------------------------
def snnet_train(out: Path, args: list[str]) -> dict:
    """``snnet train ... --out OUT`` (resumed when a run is there), then its summary."""
    cmd = [sys.executable, "-m", "snnet", "train", *args, "--out", str(out), "--quiet"]
    cmd += ["--threads", "1", "--workers", "0"]
    if (out / "summary.json").is_file() and json.loads((out / "summary.json").read_text()).get(
        "anchors_after"
    ):
        return json.loads((out / "summary.json").read_text())
    if (out / "checkpoint.pt").is_file() or (out / "anchors" / "checkpoint.pt").is_file():
        cmd.append("--resume")
    t = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["seconds"] = round(time.perf_counter() - t, 1)
    summary["stdout"] = done.stdout
    return summary


def mean_stitch(out: Path, data: Path) -> dict:
    """Every stitch on the held-out images (snnet evaluate): the mean stitch and the front."""
    cmd = [sys.executable, "-m", "snnet", "evaluate", str(out), "--data", str(data)]
    cmd += ["--threads", "1", "--workers", "0"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    sys.path.insert(0, str(ROOT / "src"))
    from snnet.measure.results import Results

    results = Results.load(out / "results.json")
    stitched = [r.top1 for r in results if not r.stitch.is_anchor]
    front = results.pareto("gmacs", "top1")
    return {
        "mean_stitch": round(statistics.mean(stitched), 2),
        "front": [[str(r.stitch), round(r.gmacs, 4), r.top1] for r in front],
    }


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


# -- 1. preprocessing ------------------------------------------------------------------------------
def preprocessing(
    seeds: list[int], jobs: int, epochs: int, recipe: list[str], name: str = "preprocessing"
) -> dict:
    folder = make_folder(WORK / "folder", CLASSES, {"train": 1500, "val": 300}, seed=0)
    anchors = WORK / "user-anchors"
    anchors.mkdir(parents=True, exist_ok=True)
    standalone_file = anchors / "standalone.json"
    if standalone_file.is_file():
        standalone = json.loads(standalone_file.read_text())
    else:
        standalone = {}
        for arch in ARCHS:
            standalone[arch] = train_elsewhere(
                arch, folder, anchors / f"{arch}.pth", size=64, num_classes=4, epochs=6
            )
        standalone_file.write_text(json.dumps(standalone, indent=2))
    family = [f"{arch}={anchors / f'{arch}.pth'}" for arch in ARCHS]
    base = [*family, "--img-size", "64", "--num-classes", "4", "--data", str(folder)]
    base += ["--epochs", str(epochs), "--val-images", "1200", *recipe]

    def one(seed: int) -> dict:
        out = WORK / f"{name}-seed{seed}"
        summary = snnet_train(out, [*base, *USER_PREPROCESSING, "--seed", str(seed)])
        return {"seed": seed, **summary, **mean_stitch(out, folder)}

    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(one, seeds))
    # Without the options: timm's defaults for DeiT (ImageNet statistics, crop 0.9).
    default = snnet_train(WORK / "preprocessing-default", [*base, "--seed", "0", "--epochs", "1"])
    user = [standalone[a] for a in ARCHS]
    rows = []
    for run in runs:
        before, after = run["anchors_before"], run["anchors_after"]
        rows.append(
            {
                "seed": run["seed"],
                "before_minus_standalone": [
                    round(b - u, 2) for b, u in zip(before, user, strict=True)
                ],
                "after_minus_standalone": [
                    round(a - u, 2) for a, u in zip(after, user, strict=True)
                ],
                "mean_stitch": run["mean_stitch"],
                "front_stitches": sum(1 for s, *_ in run["front"] if "-" in s),
                "seconds": run.get("seconds"),
            }
        )
    worst_before = max(abs(d) for r in rows for d in r["before_minus_standalone"])
    worst_loss = min(d for r in rows for d in r["after_minus_standalone"])
    return {
        "folder": {"classes": list(CLASSES.values()), "train": 6000, "val": 1200, "px": 72},
        "anchors": list(ARCHS),
        "recipe": ["--epochs", str(epochs), *recipe],
        "user_standalone": user,
        "runs": runs,
        "rows": rows,
        "without_options": {
            "anchors_before": default["anchors_before"],
            "minus_standalone": [
                round(b - u, 2) for b, u in zip(default["anchors_before"], user, strict=True)
            ],
        },
        "goals": {
            "anchors_before_within_0.3": worst_before <= 0.3,
            "no_anchor_loses_more_than_1": worst_loss >= -1.0,
        },
        "worst_before_difference": worst_before,
        "worst_anchor_change": worst_loss,
    }


# -- 2. re-heading --------------------------------------------------------------------------------
def reheading(seeds: list[int], jobs: int, epochs: int, anchor_epochs: int, recipe: list[str]):
    folder = make_folder(WORK / "folder", CLASSES, {"train": 1500, "val": 300}, seed=0)
    source = make_folder(
        WORK / "source",
        {i: f"c{i}" for i in range(10)},
        {"train": 600, "val": 100},
        seed=1,
    )
    anchors = WORK / "imagenet-style"
    anchors.mkdir(parents=True, exist_ok=True)
    record = anchors / "source.json"
    if not record.is_file():
        scores = {
            arch: train_elsewhere(
                arch, source, anchors / f"{arch}.pth", size=64, num_classes=1000, epochs=4
            )
            for arch in ARCHS
        }
        record.write_text(json.dumps(scores, indent=2))
    family = [f"{arch}={anchors / f'{arch}.pth'}" for arch in ARCHS]
    base = [*family, "--img-size", "48", "--num-classes", "4", "--data", str(folder)]
    base += [*USER_PREPROCESSING, "--val-images", "1200", "--max-images", "3000", *recipe]
    arms = {
        "inside only": ["--epochs", str(epochs)],
        f"{anchor_epochs} anchor epochs first": [
            "--epochs",
            str(epochs),
            "--anchor-epochs",
            str(anchor_epochs),
        ],
        "inside only, as long": ["--epochs", str(epochs + anchor_epochs * len(ARCHS))],
        # Distillation from the anchors as the SN-Net's run starts: only once they are tuned
        # (re-headed anchors would teach from their random classifiers).
        f"{anchor_epochs} anchor epochs first, then distilled": [
            "--epochs",
            str(epochs),
            "--anchor-epochs",
            str(anchor_epochs),
            "--distill",
            "end",
        ],
    }
    tasks = [(arm, seed) for arm in arms for seed in seeds]

    def one(task: tuple[str, int]) -> dict:
        arm, seed = task
        out = WORK / f"reheading-{arm.replace(' ', '-').replace(',', '')}-seed{seed}"
        summary = snnet_train(out, [*base, *arms[arm], "--seed", str(seed)])
        return {"arm": arm, "seed": seed, **summary, **mean_stitch(out, folder)}

    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(one, tasks))
    table = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        table[arm] = {
            "anchors_after": [spread([r["anchors_after"][i] for r in mine]) for i in range(2)],
            "mean_stitch": spread([r["mean_stitch"] for r in mine]),
            "seconds": spread([r.get("seconds") or 0 for r in mine]),
        }
    return {
        "source": json.loads(record.read_text()),
        "recipe": recipe,
        "arms": arms,
        "runs": runs,
        "table": table,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=["preprocessing", "reheading", "all"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--anchor-epochs", type=int, default=1)
    p.add_argument(
        "--name",
        default=None,
        help="record the runs under this name (default: the part's), e.g. one per recipe",
    )
    p.add_argument(
        "--recipe",
        nargs=argparse.REMAINDER,
        default=[],
        help="more snnet train options for every run (after everything else)",
    )
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from snnet.files import atomic_write

    report = {}
    if args.part in ("preprocessing", "all"):
        name = args.name or "preprocessing"
        report[name] = preprocessing(args.seeds, args.jobs, args.epochs, args.recipe, name)
        pre = report[name]
        print("user's standalone top-1:", pre["user_standalone"])
        print("seed | before - standalone | after - standalone | mean stitch | front stitches")
        for r in pre["rows"]:
            print(
                f"{r['seed']} | {r['before_minus_standalone']} | {r['after_minus_standalone']} "
                f"| {r['mean_stitch']} | {r['front_stitches']}"
            )
        print("without the options, before - standalone:", pre["without_options"])
        print("goals:", pre["goals"])
    if args.part in ("reheading", "all"):
        report["reheading"] = reheading(
            args.seeds, args.jobs, args.epochs, args.anchor_epochs, args.recipe
        )
        for arm, row in report["reheading"]["table"].items():
            print(f"{arm}: anchors after {row['anchors_after']}, mean stitch {row['mean_stitch']}")
    for part in report.values():
        for run in part.get("runs", []):
            run.pop("stdout", None)
    # parts written meanwhile by another run of this script are kept
    report = {**(json.loads(OUT.read_text()) if OUT.is_file() else {}), **report}
    atomic_write(OUT, lambda f: json.dump(report, f, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
