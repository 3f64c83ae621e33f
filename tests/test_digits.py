"""A user's own image folder, end to end: scikit-learn's 8×8 digits rendered as 32×32 PNGs into
``train/`` + ``val/`` class folders, two random-init ViT anchors (DeiT-Ti/S widths at 32 px).

``snnet train --data ROOT`` must give the weights the same recipe gives through the Python API,
and train them well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snnet
from snnet.data import resolve_data, resolve_preprocessing
from snnet.measure.results import Results
from snnet.train import TrainConfig, fit

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
NAMES = ("vit_tiny_patch16_224", "vit_small_patch16_224")
RECIPE = ["--epochs", "2", "--batch-size", "64", "--seed", "0"]
CONFIG = TrainConfig(epochs=2, batch_size=64, seed=0)
LS_INIT = 256


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """ROOT/train/<digit>/*.png and ROOT/val/<digit>/*.png: every 5th image of each digit is held
    out (1,438 train, 359 val); the 8×8 images (values 0-16) scaled to 0-255, enlarged to 32×32."""
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    root = tmp_path_factory.mktemp("digits")
    seen = {d: 0 for d in range(10)}
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "val" if seen[int(label)] % 5 == 4 else "train"
        seen[int(label)] += 1
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        u8 = np.clip(img * 255.0 / 16.0, 0, 255).astype(np.uint8)
        Image.fromarray(u8, "L").resize((32, 32), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def anchors(tmp_path_factory) -> list[str]:
    """The two anchors as local checkpoints (NAME=PATH), so both paths start from the same
    random initialisation, whatever else draws from torch's generator first."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("anchors")
    torch.manual_seed(0)
    specs = []
    for name in NAMES:
        model = timm.create_model(name, img_size=32, num_classes=10)
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        specs.append(f"{name}={path}")
    return specs


def _cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "snnet", *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _train_cli(anchors: list[str], root: Path, out: Path) -> None:
    _cli(
        "train",
        *anchors,
        "--img-size",
        "32",
        "--num-classes",
        "10",
        "--data",
        str(root),
        "--out",
        str(out),
        "--ls-init",
        str(LS_INIT),
        "--threads",
        "1",
        "--quiet",
        *RECIPE,
    )


def _mean_stitch_top1(results: Results, net: snnet.SNNet) -> float:
    stitches = [r.top1 for r in results if not r.stitch.is_anchor]
    assert len(stitches) == len(net.stitches) - len(net.anchors)
    return float(np.mean(stitches))


def test_cli_trains_a_digits_folder_like_the_python_api(digits, anchors, tmp_path):
    # The CLI (two identical commands give identical weights: tests/test_reheading.py).
    _train_cli(anchors, digits, tmp_path / "cli")
    _cli("evaluate", str(tmp_path / "cli"), "--data", str(digits), "--threads", "1")
    first = snnet.load(tmp_path / "cli")
    cli = Results.load(tmp_path / "cli" / "results.json")
    assert cli.meta["accuracy"]["images"] == len(list((digits / "val").rglob("*.png")))  # 355
    assert "val" in cli.meta["accuracy"]["data"]

    # The same recipe through the Python API gives the very same weights.
    found, options = snnet.resolve_anchors(anchors, img_size=32, num_classes=10)
    net = snnet.SNNet(found, **options)
    data = resolve_data(digits, resolve_preprocessing(net.anchors).config)
    assert data.config.augment.kind == "none"  # small grey images: no augmentation
    fit(net, data, CONFIG, ls_init=LS_INIT, progress=False)
    assert first.state_dict().keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(first.state_dict()[k], v), k

    # The preprocessing training used was saved with the network, classes included.
    assert first.data_config == net.data_config
    assert first.data_config.classes == tuple(str(d) for d in range(10))
    cli_mean = _mean_stitch_top1(cli, first)
    anchors_top1 = [cli[str(i)].top1 for i in range(len(first.anchors))]
    print(f"\ndigits: mean stitch top-1 {cli_mean:.2f} %; anchors {anchors_top1}")
    assert cli_mean > 50.0  # ten classes: chance is 10 %
