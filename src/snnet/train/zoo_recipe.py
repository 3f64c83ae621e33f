"""Training the shipped demo anchors (:mod:`snnet.zoo`): the recipe behind ``snnet zoo train``.

snnet's own training pieces (epoch-seeded batches, weight-decay groups, the learning-rate
schedule, atomic writes) on one plain model, so the anchors are trained by the recipe SN-Nets
are trained by. Each anchor is written as float16 safetensors weights beside a JSON record of
its recipe, accuracy and cost.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from snnet import zoo
from snnet.cost import count_macs
from snnet.data.batches import EpochBatches, in_order, load_batches
from snnet.data.config import Augment
from snnet.data.images import ImageSet, fashion_mnist
from snnet.files import atomic_write
from snnet.train.step import get_lr, parameter_groups, set_lr


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
    augment: bool = False  # random crop + flip slows short schedules down
    seed: int = 0


def count_gmacs(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 28, 28)) -> float:
    """Multiply-adds of one forward pass per image, in G (snnet's counter: fused attention included).

    Example: ``count_gmacs(zoo.create_demo_anchor("fmnist_vit_s"))``
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, _ = count_macs(model, torch.zeros(input_size))
    model.train(was_training)
    return macs / 1e9 / input_size[0]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: ImageSet, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (in %) of ``model`` on an in-memory Fashion-MNIST split.

    Example: ``evaluate_accuracy(zoo.create_demo_anchor("fmnist_vit_s"), fashion_mnist("test"))``
    """
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in load_batches(dataset, in_order(len(dataset), batch_size)):
        correct += (model(x).argmax(-1) == y).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(dataset)


@torch.no_grad()
def inference_speed(model: nn.Module, *, batch_size: int = 128, steps: int = 20) -> float:
    """Images per second of ``model`` in eval mode on random (B, 1, 28, 28) input, after a warm-up.

    Example: ``inference_speed(zoo.create_demo_anchor("fmnist_vit_s"), steps=5)``
    """
    model.eval()
    x = torch.randn(batch_size, 1, 28, 28)
    for _ in range(3):
        model(x)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    return steps * batch_size / (time.perf_counter() - t0)


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
    from safetensors.torch import load_file

    cfg = zoo.demo_anchor_config(name)
    recipe = recipe or TrainRecipe()
    recipe = TrainRecipe(**{**asdict(recipe), "seed": seed, "epochs": epochs or recipe.epochs})
    out_dir = Path(out_dir) if out_dir is not None else zoo.WEIGHTS_DIR

    torch.manual_seed(recipe.seed)  # weight init
    model = zoo.build_demo_anchor(cfg)
    train_set = fashion_mnist("train", data_root)
    if recipe.augment:
        train_set = train_set.augmented(Augment("light", hflip=0.5))
    test_set = fashion_mnist("test", data_root)
    t0 = time.perf_counter()
    steps = _train(model, train_set, recipe, name=name, progress=progress)
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
        "train_img_per_s": round(steps * recipe.batch_size / train_seconds, 1),
        "test_acc_fp32": round(acc_fp32, 2),
        "environment": _environment(),
    }
    path = _save(state, record, out_dir, name)
    # what users get: reload the float16 file into a fresh float32 model and test that
    reloaded = zoo.build_demo_anchor(cfg)
    reloaded.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    record["test_acc"] = round(evaluate_accuracy(reloaded, test_set), 2)
    record["infer_img_per_s"] = round(inference_speed(reloaded), 1)
    record["file_bytes"] = path.stat().st_size
    _save(state, record, out_dir, name)
    return record


def _train(
    model: nn.Module, train_set: ImageSet, recipe: TrainRecipe, *, name: str, progress: bool
) -> int:
    """``recipe.epochs`` epochs of AdamW with warmup and cosine decay, in place; returns the steps."""
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
    return total


def _environment() -> dict[str, Any]:
    import timm

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


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
