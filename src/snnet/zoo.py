"""The offline demo anchor family: plain timm ViTs trained on Fashion-MNIST, shipped with snnet.

Five ViTs of depth 12 and widths 8, 16, 24, 32 and 64 (``ZOO_ANCHORS``); the demo family
(``DEMO_FAMILY``, the ``fmnist`` preset) is widths 8, 16 and 32. They are timm's own
``VisionTransformer`` on 28x28 grey images cut into 7x7 patches (16 tokens + cls). Their weights live
in ``snnet/weights`` as float16 safetensors files (loaded as float32) next to a JSON record of how
each was trained and what it scored.

Why widths 8 / 16 / 32: a stitch between two anchors can only beat the smaller one when the anchors
are further apart than what stitching loses, and Fashion-MNIST saturates (16 / 32 / 64 spanned only
2 points). Width 8 opens a wide first gap (82.9 -> 86.1 %). Neighbours 3.4-3.7x apart in MACs put
the cheapest stitch after each anchor within 1.25x of its cost, and a step on these models costs
~0.075 s against ~0.12 s for widths 8 / 24 / 64 (the family before, ``fmnist-xs-sm-l``), and
~0.055 s with the teachers' logits cached, so the demo's 10 minutes afford 16 epochs instead of
5: 17-22 stitches on the front over 3 seeds, where the family before had 6
(``benchmarks/recipe/FINDINGS.md``, section G).
Every anchor stays shipped: saved networks name their anchors.

Rebuild them with ``snnet zoo train --all`` (the command line lives in :mod:`snnet.cli.zoo`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from snnet.data.augment import Augment
from snnet.data.batches import EpochBatches, in_order, load_batches
from snnet.data.images import ImageSet, fashion_mnist
from snnet.files import atomic_write
from snnet.presets import PRESETS
from snnet.train import get_lr, parameter_groups
from snnet.train.step import set_lr

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
REBUILD_COMMAND = "snnet zoo train --all"


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


# Every shipped anchor, by name. Saved networks name their anchors ("zoo=fmnist_vit_s"), so an anchor
# stays here, with its weights, after the demo stops using it: those networks must keep loading.
ZOO_ANCHORS: dict[str, DemoAnchorConfig] = {
    "fmnist_vit_xs": DemoAnchorConfig(embed_dim=8, num_heads=1),
    "fmnist_vit_s": DemoAnchorConfig(embed_dim=16, num_heads=1),
    "fmnist_vit_sm": DemoAnchorConfig(embed_dim=24, num_heads=2),
    "fmnist_vit_m": DemoAnchorConfig(embed_dim=32, num_heads=2),
    "fmnist_vit_l": DemoAnchorConfig(embed_dim=64, num_heads=4),
}

# The demo family, ordered small to large: the anchors of the ``fmnist`` preset.
DEMO_FAMILY: dict[str, DemoAnchorConfig] = {
    n: ZOO_ANCHORS[n] for n in (source.removeprefix("zoo=") for source in PRESETS["fmnist"][0])
}


def demo_family_names() -> list[str]:
    """Names of the demo anchors, ordered from cheapest to most expensive.

    Example: ``anchors = [create_demo_anchor(n) for n in demo_family_names()]``
    """
    return list(DEMO_FAMILY)


def _config(name: str) -> DemoAnchorConfig:
    if name not in ZOO_ANCHORS:
        raise ValueError(f"unknown demo anchor {name!r}; valid names: {', '.join(ZOO_ANCHORS)}")
    return ZOO_ANCHORS[name]


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
    # timm's plain attention is faster than fused SDPA on CPU at head dim 16 (measured on 2 cores,
    # batch 128); on GPU the fused kernel wins. Numerically the two paths are the same function.
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
                f"`snnet zoo train --name {name}` (or `{REBUILD_COMMAND}`)"
            )
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state, strict=True)
        model.eval()
    return model


def demo_anchor_record(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON record written when demo anchor ``name`` was trained (recipe, accuracy, cost)."""
    path = weights_path(name, weights_dir).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no training record {path}; run `snnet zoo train --name {name}`")
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
def evaluate_accuracy(model: nn.Module, dataset: ImageSet, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (in %) of ``model`` on an in-memory Fashion-MNIST split."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in load_batches(dataset, in_order(len(dataset), batch_size)):
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
# Training: snnet's own pieces (epoch-seeded batches, weight-decay groups, the LR schedule, atomic
# writes) on one plain model, so the anchors are trained by the recipe SN-Nets are trained by.


def _save(state: dict[str, torch.Tensor], record: dict, out_dir: Path, name: str) -> Path:
    """Weights first, record second, each atomically: a record never describes other weights
    than the ones beside it once both are written (the record is rewritten after the test)."""
    from safetensors.torch import save_file

    def write_weights(tmp: str) -> None:
        save_file(state, tmp, metadata={"name": name, "dtype": "float16"})
        os.chmod(tmp, 0o644)  # shipped files: readable by everyone

    path = out_dir / f"{name}.safetensors"
    atomic_write(path, write_weights, mode="path")
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(out_dir / f"{name}.json", lambda f: f.write(text))
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
    The same seed, data and thread count give bit-identical weights.

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
    train_set = fashion_mnist("train", data_root)
    if recipe.augment:
        train_set = train_set.augmented(Augment("light", hflip=0.5))
    test_set = fashion_mnist("test", data_root)
    batches = EpochBatches(train_set, recipe.batch_size, seed=recipe.seed)  # order from the seed
    groups = parameter_groups(
        model.named_parameters(),
        weight_decay=recipe.weight_decay,
        no_weight_decay=model.no_weight_decay(),
    )
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    total = recipe.epochs * len(batches)
    warmup = int(recipe.warmup_epochs * len(batches))

    model.train()
    step = 0
    t0 = time.perf_counter()
    for epoch in range(recipe.epochs):
        bar = tqdm(
            batches(epoch),
            total=len(batches),
            desc=f"{name} epoch {epoch + 1}/{recipe.epochs}",
            disable=not progress,
            mininterval=2.0,
        )
        for x, y in bar:  # x: (B, 1, 28, 28), y: (B,)
            lr = get_lr(step, lr=recipe.lr, min_lr=recipe.min_lr, warmup=warmup, total=total)
            set_lr(optimizer, lr)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
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
        "command": f"snnet zoo train --name {name} --epochs {recipe.epochs} --seed {seed}",
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": count_gmacs(model),
        "train_seconds": round(train_seconds, 1),
        "train_img_per_s": round(total * recipe.batch_size / train_seconds, 1),
        "test_acc_fp32": round(acc_fp32, 2),
        "environment": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }
    path = _save(state, record, out_dir, name)
    # what users get: reload the float16 file into a fresh float32 model and test that
    reloaded = _build(cfg)
    reloaded.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    record["test_acc"] = round(evaluate_accuracy(reloaded, test_set), 2)
    record["infer_img_per_s"] = round(inference_speed(reloaded), 1)
    record["file_bytes"] = path.stat().st_size
    _save(state, record, out_dir, name)
    return record
