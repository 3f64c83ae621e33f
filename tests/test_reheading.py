"""Anchors trained elsewhere, with another classifier and input size than the user's data:
re-headed (the rest of the checkpoint loads; one warning line per anchor says what was
initialised anew or resampled), seeded, so two identical commands give the same weights, with
image folders, data-loading workers and a resume too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def imagenet_style_checkpoints(folder: Path) -> list[str]:
    """Two ViT-Ti checkpoints as a user brings them: 1000 classes at 224 px, trained elsewhere."""
    specs = []
    for i in range(2):
        torch.manual_seed(10 + i)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
        path = folder / f"vit{i}.pth"
        torch.save(model.state_dict(), path)
        specs.append(f"vit_tiny_patch16_224={path}")
    return specs


def four_class_folder(root: Path, n: int = 48) -> Path:
    """A user's small RGB folder: 4 classes, 40x40 images, train/ and val/."""
    g = np.random.default_rng(0)
    for split, count in (("train", n), ("val", n // 2)):
        for i in range(count):
            c = i % 4
            img = g.integers(0, 80, (40, 40, 3), dtype=np.uint8)
            img[:, :, c % 3] += np.uint8(60 * (c // 3 + 1))  # the class shows in one colour
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def train(args: list[str], *, stop_after: int | None = None) -> subprocess.CompletedProcess:
    """``snnet train ARGS`` in a process; with ``stop_after``, SIGTERM once the run has saved a
    checkpoint past that step."""
    cmd = [sys.executable, "-m", "snnet", "train", *args]
    if stop_after is None:
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = Path(args[args.index("--out") + 1]) / "train.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if record.is_file() and '"step": 0' not in record.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_reheaded_anchors_say_so_and_train_to_the_same_weights_with_workers_and_a_resume(tmp_path):
    specs = imagenet_style_checkpoints(tmp_path)
    data = four_class_folder(tmp_path / "folder")
    common = [*specs, "--img-size", "32", "--num-classes", "4", "--data", str(data)]
    common += ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--crop-pct", "1"]
    common += ["--epochs", "4", "--batch-size", "8", "--ls-init", "16", "--save-every", "1"]
    common += ["--quiet", "--seed", "7"]

    first = train([*common, "--out", str(tmp_path / "a"), "--workers", "0"])
    assert first.returncode == 0, first.stderr[-3000:]
    notes = [line for line in first.stderr.splitlines() if "initialised anew" in line]
    assert len(notes) == 2, first.stderr  # one line per anchor
    for note in notes:
        assert "classifier initialised anew for 4 classes (the checkpoint's predicts 1000)" in note
        assert "pos_embed resampled from 1×197×192 to 1×5×192" in note
    assert "mean, std, crop_pct: --mean, --std, --crop-pct" not in first.stdout  # per key:
    assert "mean: --mean" in first.stdout and "crop_pct: --crop-pct" in first.stdout

    stopped = train([*common, "--out", str(tmp_path / "b"), "--workers", "2"], stop_after=1)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "continue: the same command with --resume" in stopped.stdout
    resumed = train([*common, "--out", str(tmp_path / "b"), "--workers", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    assert a == b  # the same weights, bit for bit
    import json

    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    first_summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["anchors_before"] == first_summary["anchors_before"]
    assert summary["anchors_after"] == first_summary["anchors_after"]
    assert "anchor accuracy, standalone -> inside the trained SN-Net:" in resumed.stdout


def test_offline_pretrained_weights_are_one_line(tmp_path, capsys):
    from snnet.cli import main

    code = main(["train", "deit", "--pretrained", "--img-size", "32", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "could not fetch pretrained weights for deit_tiny_patch16_224" in err
    assert "deit_tiny_patch16_224=PATH" in err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_anchors_tuned_alone_first_resume_to_the_weights_of_a_run_never_stopped(tmp_path):
    args = ["fmnist", "--anchor-epochs", "1", "--epochs", "1", "--max-images", "640"]
    args += ["--batch-size", "32", "--ls-init", "64", "--val-images", "100", "--save-every", "1"]
    args += ["--quiet", "--workers", "0"]
    whole = train([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    phase = tmp_path / "whole" / "anchors" / "train.json"
    import json

    assert json.loads(phase.read_text())["step"] == 3 * 20  # 1 epoch of its own per anchor
    out = tmp_path / "stopped"
    record = out / "anchors" / "train.json"
    cmd = [sys.executable, "-m", "snnet", "train", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        record.is_file() and json.loads(record.read_text())["step"] > 5
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # while the anchors train alone
    proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not (out / "checkpoint.pt").exists()  # the SN-Net's own run has not started
    resumed = train([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = (tmp_path / "whole" / "model" / "model.safetensors").read_bytes()
    assert (out / "model" / "model.safetensors").read_bytes() == a
    before = json.loads((out / "summary.json").read_text())["anchors_before"]
    assert before == json.loads((tmp_path / "whole" / "summary.json").read_text())["anchors_before"]
