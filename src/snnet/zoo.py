"""The offline demo anchor family: plain timm ViTs trained on Fashion-MNIST, shipped with snnet.

Three ViTs of depth 12 whose width doubles per step. They are timm's own ``VisionTransformer`` on 28x28
grey images cut into 7x7 patches (16 tokens + cls). Their weights live in ``snnet/weights`` as float16
safetensors files (loaded as float32) next to a JSON record of how each was trained and what it scored.

Rebuild them with ``python -m snnet.zoo train --all``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from snnet.data import FashionMNIST, fashion_mnist

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
REBUILD_COMMAND = "python -m snnet.zoo train --all"


@dataclass(frozen=True)
class DemoAnchorConfig:
    """Architecture of one demo anchor (arguments of timm's ``VisionTransformer``)."""

    embed_dim: int
    num_heads: int
    depth: int = 12
    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class TrainRecipe:
    """Training hyper-parameters shared by all demo anchors."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    # Random crop + flip slowed short schedules down (2 epochs, width 16: 72.6 % with, 82.2 % without).
    augment: bool = False
    seed: int = 0


# Ordered small to large; head dimension 16 throughout.
DEMO_FAMILY: dict[str, DemoAnchorConfig] = {
    "fmnist_vit_s": DemoAnchorConfig(embed_dim=16, num_heads=1),
    "fmnist_vit_m": DemoAnchorConfig(embed_dim=32, num_heads=2),
    "fmnist_vit_l": DemoAnchorConfig(embed_dim=64, num_heads=4),
}


def demo_family_names() -> list[str]:
    """Names of the demo anchors, ordered from cheapest to most expensive.

    Example: ``anchors = [create_demo_anchor(n) for n in demo_family_names()]``
    """
    return list(DEMO_FAMILY)


def _config(name: str) -> DemoAnchorConfig:
    if name not in DEMO_FAMILY:
        raise ValueError(f"unknown demo anchor {name!r}; valid names: {', '.join(DEMO_FAMILY)}")
    return DEMO_FAMILY[name]


def _build(cfg: DemoAnchorConfig) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
    )
    # timm's plain attention is faster than fused SDPA on CPU at head dim 16 (MEASURED.md and our own
    # measurements); on GPU the fused kernel wins. Numerically the two paths are the same function.
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def weights_path(name: str, weights_dir: str | Path | None = None) -> Path:
    """Path of the safetensors file of demo anchor ``name``."""
    _config(name)
    return Path(weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"


def create_demo_anchor(
    name: str, *, pretrained: bool = True, weights_dir: str | Path | None = None
) -> nn.Module:
    """Build demo anchor ``name`` (a timm ``VisionTransformer``), with its shipped weights if pretrained.

    The model is returned in eval mode when pretrained, in float32.

    Example: ``model = create_demo_anchor("fmnist_vit_s"); logits = model(torch.zeros(8, 1, 28, 28))``
    """
    model = _build(_config(name))
    if pretrained:
        from safetensors.torch import load_file

        path = weights_path(name, weights_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights of demo anchor {name!r} not found at {path}; build them with "
                f"`python -m snnet.zoo train --name {name}` (or `{REBUILD_COMMAND}`)"
            )
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state, strict=True)
        model.eval()
    return model


def demo_anchor_record(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON record written when demo anchor ``name`` was trained (recipe, accuracy, cost)."""
    path = weights_path(name, weights_dir).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(
            f"no training record {path}; run `python -m snnet.zoo train --name {name}`"
        )
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------
# Measurement helpers


def count_gmacs(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 28, 28)) -> float:
    """Multiply-adds of one forward pass per image, in G (snnet's counter: fused attention included)."""
    from snnet.cost import count_macs

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, _ = count_macs(model, torch.zeros(input_size))
    model.train(was_training)
    return macs / 1e9 / input_size[0]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: FashionMNIST, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (in %) of ``model`` on an in-memory Fashion-MNIST split."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in dataset.batches(batch_size):
        correct += (model(x).argmax(-1) == y).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(dataset)


@torch.no_grad()
def inference_speed(model: nn.Module, *, batch_size: int = 128, steps: int = 20) -> float:
    """Images per second of ``model`` in eval mode on random (B, 1, 28, 28) input, after a warm-up."""
    model.eval()
    x = torch.randn(batch_size, 1, 28, 28)
    for _ in range(3):
        model(x)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    return steps * batch_size / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# Training


def _save_atomic(state: dict[str, torch.Tensor], record: dict, out_dir: Path, name: str) -> Path:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    tmp = out_dir / f".{name}.safetensors.{os.getpid()}.tmp"
    save_file(state, str(tmp), metadata={"name": name, "dtype": "float16"})
    tmp.chmod(0o644)  # safetensors creates the file owner-only
    os.replace(tmp, path)
    meta = out_dir / f"{name}.json"
    tmp_meta = out_dir / f".{name}.json.{os.getpid()}.tmp"
    tmp_meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_meta, meta)
    return path


def train_demo_anchor(
    name: str,
    *,
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    recipe: TrainRecipe | None = None,
    progress: bool = True,
) -> dict:
    """Train demo anchor ``name`` on Fashion-MNIST train, test it, and write its weights and record.

    Writes ``<out_dir>/<name>.safetensors`` (float16) and ``<out_dir>/<name>.json``, each through a
    temporary file and a rename. Returns the record (recipe, accuracy, params, GMACs, timings).

    Example: ``train_demo_anchor("fmnist_vit_s", epochs=1, out_dir="/tmp/anchors")``
    """
    import timm
    from safetensors.torch import load_file

    cfg = _config(name)
    recipe = recipe or TrainRecipe()
    recipe = TrainRecipe(**{**asdict(recipe), "seed": seed, "epochs": epochs or recipe.epochs})
    out_dir = Path(out_dir) if out_dir is not None else WEIGHTS_DIR

    torch.manual_seed(recipe.seed)  # weight init
    model = _build(cfg)
    gen = torch.Generator().manual_seed(recipe.seed)  # shuffling and augmentation
    train_set = fashion_mnist("train", data_root, augment=recipe.augment, generator=gen)
    test_set = fashion_mnist("test", data_root)

    # no weight decay on biases, norms, pos/cls embeddings (timm's convention)
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or pname in skip else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
    )

    steps_per_epoch = len(train_set) // recipe.batch_size
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = int(recipe.warmup_epochs * steps_per_epoch)

    def get_lr(step: int) -> float:
        if step < warmup_steps:  # linear warmup
            return recipe.lr * (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (
            1 + math.cos(math.pi * progress_)
        )

    model.train()
    step = 0
    t0 = time.perf_counter()
    for epoch in range(recipe.epochs):
        bar = tqdm(
            train_set.batches(recipe.batch_size, shuffle=True, drop_last=True, generator=gen),
            total=steps_per_epoch,
            desc=f"{name} epoch {epoch + 1}/{recipe.epochs}",
            disable=not progress,
            mininterval=2.0,
        )
        for x, y in bar:  # x: (B, 1, 28, 28), y: (B,)
            lr = get_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            step += 1
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    train_seconds = time.perf_counter() - t0

    acc_fp32 = evaluate_accuracy(model, test_set)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    record = {
        "name": name,
        "architecture": {
            "class": "timm.models.vision_transformer.VisionTransformer",
            **asdict(cfg),
        },
        "recipe": asdict(recipe),
        "command": f"python -m snnet.zoo train --name {name} --epochs {recipe.epochs} --seed {seed}",
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": count_gmacs(model),
        "train_seconds": round(train_seconds, 1),
        "train_img_per_s": round(total_steps * recipe.batch_size / train_seconds, 1),
        "test_acc_fp32": round(acc_fp32, 2),
        "environment": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }
    path = _save_atomic(state, record, out_dir, name)
    # what users get: reload the float16 file into a fresh float32 model and test that
    reloaded = _build(cfg)
    reloaded.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    record["test_acc"] = round(evaluate_accuracy(reloaded, test_set), 2)
    record["infer_img_per_s"] = round(inference_speed(reloaded), 1)
    record["file_bytes"] = path.stat().st_size
    _save_atomic(state, record, out_dir, name)
    return record


# ---------------------------------------------------------------------------------------------------
# Command line


def _markdown_table(weights_dir: Path) -> str:
    rows = [
        "| anchor | width | heads | params | GMACs | test acc (fp16 file) | fp32 acc | train s | "
        "train img/s | infer img/s | file KB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in demo_family_names():
        try:
            r = demo_anchor_record(name, weights_dir)
        except FileNotFoundError:
            rows.append(f"| {name} | not trained | | | | | | | | | |")
            continue
        a = r["architecture"]
        rows.append(
            f"| {name} | {a['embed_dim']} | {a['num_heads']} | {r['params']:,} | {r['gmacs']:.5f} | "
            f"{r['test_acc']:.2f} % | {r['test_acc_fp32']:.2f} % | {r['train_seconds']:.0f} | "
            f"{r['train_img_per_s']:.0f} | {r['infer_img_per_s']:.0f} | {r['file_bytes'] / 1024:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m snnet.zoo {list,train}``: show or rebuild the demo anchor family."""
    parser = argparse.ArgumentParser(
        prog="python -m snnet.zoo", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show the demo anchors and their recorded results")
    p_list.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="folder of the weights")
    p_train = sub.add_parser("train", help="train demo anchors on Fashion-MNIST")
    which = p_train.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="train every demo anchor")
    which.add_argument("--name", action="append", choices=demo_family_names(), help="repeatable")
    p_train.add_argument("--epochs", type=int, default=TrainRecipe.epochs)
    p_train.add_argument("--seed", type=int, default=TrainRecipe.seed)
    p_train.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder")
    p_train.add_argument("--data", type=Path, default=None, help="Fashion-MNIST folder (idx .gz)")
    p_train.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    if args.command == "list":
        print(_markdown_table(args.weights))
        return 0
    torch.set_num_threads(args.threads)
    names = demo_family_names() if args.all else args.name
    for name in names:
        try:
            r = train_demo_anchor(
                name, epochs=args.epochs, out_dir=args.out, seed=args.seed, data_root=args.data
            )
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(
            f"{name}: test acc {r['test_acc']:.2f} % (fp32 {r['test_acc_fp32']:.2f} %), "
            f"{r['params']:,} params, {r['gmacs']:.5f} GMACs, {r['train_seconds']:.0f} s"
        )
    print(_markdown_table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
