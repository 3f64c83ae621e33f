import gzip
import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from snnet import zoo
from snnet.cli import main
from snnet.data import fashion_mnist
from snnet.train.zoo_recipe import count_gmacs, evaluate_accuracy, train_demo_anchor
from snnet.zoo import (
    create_demo_anchor,
    demo_anchor_record,
    demo_family_names,
    weights_path,
)

NAMES = demo_family_names()


@pytest.fixture(scope="module")
def test_subset():
    return fashion_mnist("test").subset(range(1000))


@pytest.fixture(scope="module")
def accuracies() -> dict[str, float]:
    # The whole test split (a few seconds): on the first 1,000 images alone the anchors' order
    # is within sampling noise.
    test = fashion_mnist("test")
    return {n: evaluate_accuracy(create_demo_anchor(n), test) for n in NAMES}


def test_family_has_at_least_three_equal_depth_anchors():
    assert len(NAMES) >= 3 and len(set(NAMES)) == len(NAMES)
    depths = {zoo.DEMO_FAMILY[n].depth for n in NAMES}
    assert depths == {12}


@pytest.mark.parametrize("name", NAMES)
def test_shipped_anchor_loads_and_runs(name):
    path = weights_path(name)
    assert path.is_file()
    assert all(t.dtype == torch.float16 for t in load_file(str(path)).values())
    model = create_demo_anchor(name)
    assert isinstance(model, VisionTransformer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    record = demo_anchor_record(name)
    assert record["params"] == sum(p.numel() for p in model.parameters())
    assert record["architecture"]["embed_dim"] == model.embed_dim


def test_anchors_are_ordered_by_cost_and_neighbours_at_most_8x_apart():
    models = [create_demo_anchor(n, pretrained=False) for n in NAMES]
    params = [sum(p.numel() for p in m.parameters()) for m in models]
    macs = [count_gmacs(m) for m in models]
    assert params == sorted(params) and len(set(params)) == len(params)
    assert macs == sorted(macs) and len(set(macs)) == len(macs)
    # A stitch running one block of the next anchor costs ~11/12 a + 1/12 b: under 2x anchor a
    # when b <= 8a leaves room for the stitching layer, so a front can close every 2x gap.
    assert all(b / a <= 8.0 for a, b in itertools.pairwise(macs)), macs


@pytest.mark.parametrize("name", sorted(zoo.ZOO_ANCHORS))
def test_every_shipped_anchor_loads_for_networks_saved_with_it(name):
    model = create_demo_anchor(name)
    assert demo_anchor_record(name)["architecture"]["embed_dim"] == model.embed_dim
    assert set(NAMES) <= set(zoo.ZOO_ANCHORS)


def test_shipped_weights_are_trained(accuracies):
    for name, acc in accuracies.items():
        assert acc > 75.0, f"{name}: {acc:.1f} % on the test split"
        assert acc == pytest.approx(zoo.demo_anchor_record(name)["test_acc"], abs=0.01)
    # neighbours further apart than a stitch loses: room for stitches that beat the smaller one
    for a, b in itertools.pairwise(NAMES):
        assert accuracies[b] > accuracies[a] + 1.0, (a, b, accuracies)


def test_untrained_anchor_is_near_chance(test_subset):
    torch.manual_seed(0)
    acc = evaluate_accuracy(create_demo_anchor(NAMES[0], pretrained=False), test_subset)
    assert acc < 40.0


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=f"valid names: {NAMES[0]}"):
        create_demo_anchor("fmnist_vit_xxl")
    with pytest.raises(ValueError, match="unknown demo anchor"):
        train_demo_anchor("resnet50", epochs=1, out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"snnet zoo train --name {NAMES[0]}"):
        create_demo_anchor(NAMES[0], weights_dir=tmp_path)
    assert create_demo_anchor(NAMES[0], pretrained=False, weights_dir=tmp_path) is not None


def _write_idx(path, array: np.ndarray) -> None:
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    """A 256/128-image slice of the real data in idx format, so training runs in about a second."""
    root = tmp_path / "fm"
    root.mkdir()
    for split, prefix, n in (("train", "train", 256), ("test", "t10k", 128)):
        ds = fashion_mnist(split)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", ds.memory[:n, 0].numpy())
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", ds.targets[:n].numpy())
    return root


def test_train_writes_weights_and_record(tiny_fmnist, tmp_path):
    out = tmp_path / "w"
    record = train_demo_anchor(
        NAMES[0], epochs=1, out_dir=out, seed=3, data_root=tiny_fmnist, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == [f"{NAMES[0]}.json", f"{NAMES[0]}.safetensors"]
    on_disk = json.loads((out / f"{NAMES[0]}.json").read_text())
    assert on_disk == record
    assert record["recipe"]["seed"] == 3 and record["recipe"]["epochs"] == 1
    assert 0.0 <= record["test_acc"] <= 100.0 and record["gmacs"] > 0
    model = create_demo_anchor(NAMES[0], weights_dir=out)
    acc = evaluate_accuracy(model, fashion_mnist("test", tiny_fmnist))
    assert acc == pytest.approx(record["test_acc"], abs=0.005)
    # same seed, same weights
    again = train_demo_anchor(
        NAMES[0], epochs=1, out_dir=tmp_path / "w2", seed=3, data_root=tiny_fmnist, progress=False
    )
    a = load_file(str(out / f"{NAMES[0]}.safetensors"))
    b = load_file(str(tmp_path / "w2" / f"{NAMES[0]}.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["test_acc"] == record["test_acc"]


def test_cli(tiny_fmnist, tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in NAMES)
    out = tmp_path / "cli"
    args = [
        "zoo",
        "train",
        "--name",
        NAMES[0],
        "--epochs",
        "1",
        "--out",
        str(out),
        "--data",
        str(tiny_fmnist),
    ]
    assert main(args) == 0
    assert (out / f"{NAMES[0]}.safetensors").is_file()
    assert main([*args[:-1], str(tmp_path / "nowhere")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["zoo", "train", "--name", "nope"]) == 2  # refused before any work
    assert "unknown demo anchor 'nope'; choose from fmnist_vit_xs" in capsys.readouterr().err


def test_zoo_weight_decay_groups_come_from_the_training_code():
    from snnet.train import parameter_groups

    model = create_demo_anchor(NAMES[0], pretrained=False)
    groups = parameter_groups(
        model.named_parameters(), weight_decay=0.05, no_weight_decay=model.no_weight_decay()
    )
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= by_name[
        "params/no_decay"
    ]
    assert "blocks.0.attn.qkv.weight" in by_name["params/decay"]
    assert sum(len(v) for v in by_name.values()) == len(names)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
