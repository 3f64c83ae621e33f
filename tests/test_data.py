"""The one data layer: image sets in memory and on disk, their preprocessing, samples, batches,
augmentation of (image, target) pairs, and what --data resolves to."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snnet.data import (
    Augment,
    DataConfig,
    ImageSet,
    fashion_mnist,
    image_folder,
    load_batches,
    resolve_data,
    write_image_folder,
)
from snnet.data.augment import shift_and_flip
from snnet.data.batches import in_order
from snnet.data.sources import FASHION_MNIST_ENV


@pytest.fixture(scope="module")
def fmnist_test() -> ImageSet:
    return fashion_mnist("test")


def test_fashion_mnist_splits_shapes_and_labels(fmnist_test):
    train = fashion_mnist("train")
    assert len(train) == 60_000 and len(fmnist_test) == 10_000
    for ds in (train, fmnist_test):
        assert ds.memory.shape == (len(ds), 1, 28, 28) and ds.memory.dtype == torch.uint8
        assert ds.targets.dtype == torch.int64
        assert set(ds.targets.unique().tolist()) == set(range(10))
    # the normalisation constants are those of the training split
    pixels = train.memory.float().div(255)
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)


def test_an_item_is_uint8_pixels_and_a_batch_is_normalised_once(fmnist_test):
    x, y = fmnist_test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8 and isinstance(y, int)
    xb, yb = fmnist_test.batch([3, 4])
    assert xb.shape == (2, 1, 28, 28) and xb.dtype == torch.float32
    assert yb.tolist() == [y, int(fmnist_test.targets[4])]
    assert torch.equal(xb[0], fmnist_test.config.normalize(x))
    batches = list(load_batches(fmnist_test, in_order(len(fmnist_test), 4096)))
    assert [len(b[1]) for b in batches] == [4096, 4096, 1808]
    assert torch.equal(torch.cat([b[1] for b in batches]), fmnist_test.targets)


def test_fashion_mnist_missing_root_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("test", root=tmp_path)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="--data PATH"):
        fashion_mnist("train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        fashion_mnist("val")


# -- augmentation of (image, target) pairs --------------------------------------------------------
def test_light_augmentation_is_seeded_shape_preserving_and_moves_dense_targets(fmnist_test):
    imgs, labels = fmnist_test.memory[:64], fmnist_test.targets[:64]
    a, ya = shift_and_flip(
        imgs, labels, pad=2, flip=0.5, generator=torch.Generator().manual_seed(1)
    )
    b, _ = shift_and_flip(imgs, labels, pad=2, flip=0.5, generator=torch.Generator().manual_seed(1))
    assert a.shape == imgs.shape and a.dtype == torch.uint8 and torch.equal(ya, labels)
    assert torch.equal(a, b) and not torch.equal(a, imgs)
    same, _ = shift_and_flip(imgs, labels, pad=0, flip=0.0)
    assert torch.equal(same, imgs)  # with no shift and no flip it is the identity
    # a dense target (a mask per image) moves exactly as its image does
    masks = (imgs[:, 0] > 100).to(torch.uint8)  # (B, H, W)
    moved, moved_masks = shift_and_flip(
        imgs, masks, pad=2, flip=0.5, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(moved, a)
    inside = moved_masks != 255  # what the shift uncovered is the ignore index
    assert torch.equal((moved[:, 0] > 100).to(torch.uint8)[inside], moved_masks[inside])


def test_in_memory_augmentation_draws_per_batch_position_whatever_the_start(fmnist_test):
    light = fmnist_test.subset(range(64)).augmented(Augment("light", hflip=0.5))
    rows = in_order(64, 16)
    whole = list(load_batches(light, rows, seed=3, epoch=1))
    resumed = list(load_batches(light, rows[2:], seed=3, epoch=1, start=2))
    assert torch.equal(whole[2][0], resumed[0][0]) and torch.equal(whole[3][0], resumed[1][0])
    plain = list(load_batches(light.plain(), rows))
    assert not torch.equal(whole[0][0], plain[0][0])


def test_default_augmentation_follows_the_images():
    from snnet.data import default_augment

    rgb = DataConfig(3, (224, 224), (0.5,) * 3, (0.5,) * 3)
    assert default_augment(rgb, [(500, 375, "RGB"), (256, 256, "RGB")]).kind == "timm"
    assert default_augment(rgb, [(500, 375, "RGB"), (64, 64, "RGB")]).kind == "none"
    assert default_augment(rgb, [(500, 375, "L")]).kind == "none"  # grey photos, made RGB
    grey = DataConfig(1, (224, 224), (0.5,), (0.5,))
    assert default_augment(grey, [(500, 375, "RGB")]).kind == "none"
    assert default_augment(grey, [(32, 32, "L")], hflip=0.5) == Augment("light", hflip=0.5)
    assert Augment("light").flip == 0.0 and Augment("timm").flip == 0.5
    with pytest.raises(ValueError, match="--augment timm"):
        Augment("light", scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="--augment light or timm"):
        Augment("none", hflip=0.5)


# -- image folders --------------------------------------------------------------------------------
def _make_folder(root: Path) -> Path:
    """3 classes of tiny PNGs plus a corrupt PNG, a truncated PNG and a non-image file."""
    rng = np.random.default_rng(0)
    for c, n in (("cat", 3), ("dog", 2), ("emu", 2)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    (root / "cat" / "broken.png").write_bytes(b"this is not a png")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "emu" / "notes.txt").write_text("not an image")
    return root


RGB8 = DataConfig(3, (8, 8), (0.5,) * 3, (0.5,) * 3)


def test_a_strict_folder_leaves_out_corrupt_files_up_front(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="snnet.data"):
        ds = image_folder(root, RGB8, strict=True)
    assert ds.classes == ("cat", "dog", "emu") and len(ds) == 7
    assert "ignored 3 non-image or unreadable files" in caplog.text
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 0
    assert sorted(ds.targets.tolist()) == [0, 0, 0, 1, 1, 2, 2]


def test_a_training_folder_replaces_a_corrupt_file_with_the_next(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    grey = DataConfig(1, (8, 8), (0.5,), (0.5,))
    ds = image_folder(root, grey)  # not strict: only the extension filter
    assert len(ds) == 9  # both bad PNGs indexed, the .txt not
    names = [p.name for p in ds.files]
    bad = names.index("broken.png")
    with caplog.at_level(logging.WARNING, logger="snnet.data"):
        x, y = ds[bad]
        ds[bad]  # second failure of the same file: no second warning
    assert x.shape == (1, 8, 8)
    assert y == int(ds.targets[bad + 1])  # deterministic: the next index, with its label
    skips = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skips) == 1 and "broken.png" in skips[0].getMessage()  # warned once per file
    # the whole epoch goes through without an exception
    assert sum(len(y) for _, y in load_batches(ds, in_order(9, 4), num_workers=0)) == 9
    strict = image_folder(root, grey).subset(range(len(ds)))
    strict.strict = True
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        strict[bad]


def test_image_folder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", RGB8)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"no class subfolders.*<class_name>"):
        image_folder(tmp_path / "flat", RGB8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        image_folder(tmp_path / "empty", RGB8)
    with pytest.raises(ValueError, match=r"1 .grey. or 3 .RGB."):
        DataConfig(2, (8, 8), (0.5,) * 2, (0.5,) * 2)


def test_write_image_folder_round_trips_labels_and_pixels(fmnist_test, tmp_path):
    root = write_image_folder(fmnist_test, tmp_path / "fm", limit=40)
    assert not list(root.rglob("*.tmp"))
    ds = image_folder(root, DataConfig.fashion_mnist(), strict=True)
    assert len(ds) == 40
    assert ds.classes[0].startswith("00_") and len(ds.classes) == len(set(ds.targets.tolist()))
    by_index = {int(p.stem): int(y) for p, y in zip(ds.files, ds.targets, strict=True)}
    assert by_index == {i: int(fmnist_test.targets[i]) for i in range(40)}
    k = next(i for i, p in enumerate(ds.files) if p.stem == "000007")
    assert np.array_equal(np.asarray(Image.open(ds.files[k])), fmnist_test.memory[7, 0].numpy())
    # read from disk or from memory: the same normalised batch, bit for bit
    from_disk = ds.batch([k])[0]
    assert torch.equal(from_disk, fmnist_test.batch([7])[0])
    # a second call keeps finished files and writes nothing new
    mtime = ds.files[k].stat().st_mtime_ns
    write_image_folder(fmnist_test, root, limit=40)
    assert ds.files[k].stat().st_mtime_ns == mtime


def test_workers_give_the_batches_of_the_main_process_augmentation_included(tmp_path):
    folder = _grey_folder(tmp_path / "images", 24, size=40)
    cfg = DataConfig(1, (32, 32), (0.5,), (0.5,), crop_pct=0.875)
    ds = image_folder(folder, cfg, augment=Augment("light", hflip=0.5))
    rows = in_order(24, 8)
    alone = list(load_batches(ds, rows, seed=1, epoch=2, num_workers=0))
    workers = list(load_batches(ds, rows, seed=1, epoch=2, num_workers=2))
    for (a, ya), (b, yb) in zip(alone, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


# -- preprocessing: what the anchors say, what the user sets --------------------------------------
def _vit_net(in_chans: int = 3, **kwargs):
    import snnet

    torch.manual_seed(0)
    anchors = [
        snnet.timm_anchor(
            "vit_tiny_patch16_224",
            img_size=32,
            patch_size=8,
            embed_dim=d,
            depth=2,
            num_heads=2,
            num_classes=10,
            in_chans=in_chans,
            **kwargs,
        )
        for d in (16, 32)
    ]
    return snnet.SNNet(anchors)


def _grey_folder(root: Path, n: int = 40, size: int = 32, mode: str = "L") -> Path:
    """n images of 10 classes (4 per class with n=40), random pixels, as PNG."""
    g = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(
            folder / f"{i:03d}.png"
        )
    return root


def test_preprocessing_comes_from_timm_and_round_trips_through_json():
    from timm.data import resolve_model_data_config

    from snnet.data import resolve_preprocessing

    net = _vit_net()
    pre = resolve_preprocessing(net.anchors)
    cfg = pre.config
    timm_cfg = resolve_model_data_config(net.anchors[0].model)
    assert cfg.input_size == (3, 32, 32)  # the anchors' size, not the pretrained 224
    assert cfg.mean == timm_cfg["mean"] and cfg.std == timm_cfg["std"]
    assert cfg.crop_pct == timm_cfg["crop_pct"]
    assert cfg.interpolation == timm_cfg["interpolation"]
    assert set(pre.origin.values()) == {"timm's pretrained config of the architecture"}
    full = DataConfig(1, (28, 28), (0.1,), (0.2,), classes=("a", "b"), augment=Augment("light"))
    again = DataConfig.from_json(full.to_json())
    assert again == full and again.classes == full.classes and again.augment == full.augment
    # one-channel timm anchors: the RGB statistics averaged; the demo anchors: Fashion-MNIST's
    grey = resolve_preprocessing(_vit_net(in_chans=1).anchors).config
    assert grey.channels == 1 and grey.mean == (pytest.approx(sum(timm_cfg["mean"]) / 3),)
    import snnet

    zoo, _ = snnet.resolve_anchors("fmnist")
    assert resolve_preprocessing(zoo).config == DataConfig.fashion_mnist()


def test_overrides_win_and_say_where_they_come_from():
    from snnet.data import resolve_preprocessing

    net = _vit_net()
    pre = resolve_preprocessing(
        net.anchors,
        {"mean": [0.5, 0.5, 0.5], "std": [0.5] * 3, "crop_pct": 1},
        origin={"mean": "--mean", "std": "--std", "crop_pct": "--crop-pct"},
    )
    assert pre.config.mean == (0.5,) * 3 and pre.config.crop_pct == 1.0
    text = pre.describe()
    assert "crop_pct 1" in text and "mean: --mean" in text and "crop_pct: --crop-pct" in text
    with pytest.raises(ValueError, match="3 values of --mean"):
        resolve_preprocessing(net.anchors, {"mean": [0.5]})
    with pytest.raises(ValueError, match="--crop-pct must lie in"):
        resolve_preprocessing(net.anchors, {"crop_pct": 1.5})
    with pytest.raises(ValueError, match="unknown --interpolation"):
        resolve_preprocessing(net.anchors, {"interpolation": "cubic"})


def test_anchors_that_disagree_are_refused_until_the_user_says(tmp_path):
    import snnet
    from snnet.data import resolve_preprocessing

    a = snnet.timm_anchor("deit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    b = snnet.timm_anchor("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    c = snnet.timm_anchor("resnet18", img_size=32, num_classes=3)
    # deit: ImageNet's statistics; vit (augreg): 0.5 / 0.5; resnet18: crop 0.95, not 0.9
    with pytest.raises(ValueError, match=r"different preprocessing \(mean is .* for deit_tiny"):
        resolve_preprocessing([a, b])
    with pytest.raises(ValueError, match=r"crop_pct is 0.9 for deit.* but 0.95 for resnet18"):
        resolve_preprocessing([a, c])
    with pytest.raises(ValueError, match="--std"):
        resolve_preprocessing([a, b], {"mean": [0.5] * 3})
    fixed = resolve_preprocessing([a, b], {"mean": [0.5] * 3, "std": [0.5] * 3})
    assert fixed.config.mean == (0.5,) * 3 and fixed.config.crop_pct == 0.9


def test_a_checkpoint_carries_its_own_preprocessing_in_a_hub_config(tmp_path):
    import timm

    import snnet
    from snnet.data import read_data_config, resolve_preprocessing

    model = timm.create_model("deit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    hub = {"architecture": "deit_tiny_patch16_224", "num_classes": 3}
    hub["pretrained_cfg"] = {"mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0}
    (folder / "config.json").write_text(json.dumps(hub))
    anchor = snnet.timm_anchor(
        "deit_tiny_patch16_224",
        checkpoint=folder / "pytorch_model.bin",
        img_size=32,
        depth=1,
        num_classes=3,
    )
    pre = resolve_preprocessing([anchor])
    assert pre.config.std == (0.25,) * 3 and pre.config.crop_pct == 1.0
    assert "config.json beside" in pre.origin["std"]
    # snnet's own config.json (a saved network) is not a hub config
    (folder / "config.json").write_text(json.dumps({"format": "snnet-network", "data": {}}))
    plain = snnet.timm_anchor(
        "deit_tiny_patch16_224",
        checkpoint=folder / "pytorch_model.bin",
        img_size=32,
        depth=1,
        num_classes=3,
    )
    assert resolve_preprocessing([plain]).config.std == (0.229, 0.224, 0.225)
    # --data-config reads a flat file, a hub config, or a saved network's config
    flat = tmp_path / "d.json"
    flat.write_text(json.dumps({"mean": [0.1] * 3, "interpolation": "bilinear"}))
    assert read_data_config(flat) == {"mean": [0.1] * 3, "interpolation": "bilinear"}
    (folder / "config.json").write_text(json.dumps(hub))
    assert read_data_config(folder / "config.json")["std"] == [0.25] * 3
    flat.write_text(json.dumps({"size": 3}))
    with pytest.raises(ValueError, match="sets none of mean"):
        read_data_config(flat)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(channels=1, size=(28, 28), mean=(0.286,), std=(0.353,), interpolation="bicubic"),
        dict(
            channels=3,
            size=(32, 24),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            crop_pct=0.875,
        ),
    ],
)
def test_the_two_halves_of_the_transform_equal_timms_whole_transform(cfg):
    # Pixels per image, normalisation per batch: exactly what timm's evaluation transform gives.
    from timm.data import create_transform

    cfg = DataConfig(**cfg)
    whole = create_transform(
        input_size=cfg.input_size,
        mean=cfg.mean,
        std=cfg.std,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, c), np.uint8).squeeze(), m)
        for (h, w, c, m) in [(28, 28, 1, "L"), (200, 300, 3, "RGB"), (40, 17, 4, "RGBA")]
    ]
    pixels = torch.stack([cfg.pixels(img) for img in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, *cfg.input_size)
    expected = torch.stack([whole(img.convert(cfg.mode)) for img in images])
    assert torch.equal(cfg.normalize(pixels), expected)
    with pytest.raises(TypeError, match="uint8"):
        cfg.normalize(pixels.float())


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos", "box"])
def test_the_torch_free_geometry_is_timms_pixel_for_pixel(crop_mode, interpolation):
    # What a server without torch runs (snnet.data.geometry) against timm's own transform
    from timm.data import create_transform

    from snnet.data.config import pil_steps
    from snnet.data.geometry import pixels_array

    rng = np.random.default_rng(1)
    shapes = [(28, 28, 1, "L"), (200, 300, 3, "RGB"), (40, 17, 4, "RGBA"), (9, 50, 3, "RGB")]
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, c), np.uint8).squeeze(), m)
        for (h, w, c, m) in shapes
    ]
    for channels, size, crop_pct in [(1, (28, 28), 1.0), (3, (32, 24), 0.875), (3, (21, 21), 0.9)]:
        cfg = DataConfig(
            channels,
            size,
            (0.5,) * channels,
            (0.25,) * channels,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            interpolation=interpolation,
        )
        timm_steps = pil_steps(
            list(
                create_transform(
                    input_size=cfg.input_size,
                    mean=cfg.mean,
                    std=cfg.std,
                    crop_pct=crop_pct,
                    crop_mode=crop_mode,
                    interpolation=interpolation,
                ).transforms
            )
        )
        for img in images:
            want = img.convert(cfg.mode)
            for step in timm_steps:
                want = step(want)
            want = np.asarray(want, dtype=np.uint8)
            want = want[None] if want.ndim == 2 else want.transpose(2, 0, 1)
            got = pixels_array(img, cfg)
            assert got.shape == cfg.input_size and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want, err_msg=f"{cfg} on {img.size} {img.mode}")
            assert torch.equal(cfg.pixels(img), torch.from_numpy(want))


def test_the_saved_network_records_its_preprocessing_and_evaluation_uses_it(tmp_path):
    import snnet
    from snnet.cli.evaluate import open_data

    folder = _grey_folder(tmp_path / "images")
    net = _vit_net(in_chans=1)
    cfg = DataConfig(1, (32, 32), (0.25,), (0.5,), crop_pct=1.0, classes=tuple("0123456789"))
    net.data_config = cfg
    saved = snnet.save(net, tmp_path / "new")
    assert json.loads((saved / "config.json").read_text())["data"]["mean"] == [0.25]
    loaded = snnet.load(saved)
    assert loaded.data_config == cfg and loaded.data_config.classes == cfg.classes
    images = open_data(loaded, folder)
    pixels = torch.from_numpy(np.array(Image.open(images.files[0]))).float() / 255
    torch.testing.assert_close(images.batch([0])[0][0, 0], (pixels - 0.25) / 0.5)
    # an override on top of the record (evaluate's --mean/--std ...)
    other = open_data(loaded, folder, {"mean": [0.0], "std": [1.0]})
    torch.testing.assert_close(other.batch([0])[0][0, 0], pixels)
    # a network saved without a record: what its anchors say
    bare = _vit_net(in_chans=1)
    images = open_data(snnet.load(snnet.save(bare, tmp_path / "bare")), folder)
    from snnet.data import resolve_preprocessing

    assert images.config == resolve_preprocessing(bare.anchors).config


def test_serving_and_evaluation_preprocess_alike(tmp_path):
    from snnet.cli.evaluate import open_data
    from snnet.serve.model import preprocessing

    folder = _grey_folder(tmp_path / "images", size=40)
    for net in (_vit_net(), _vit_net(in_chans=1)):
        images = open_data(net, folder)
        prep = preprocessing(net, {})
        with Image.open(images.files[3]) as im:
            torch.testing.assert_close(prep(im), images.batch([3])[0][0])


# -- one resolver for --data ----------------------------------------------------------------------
def test_a_root_with_train_and_val_trains_on_train_and_holds_out_val(tmp_path):
    _grey_folder(tmp_path / "d" / "train", 40)
    _grey_folder(tmp_path / "d" / "val", 20)
    cfg = DataConfig(1, (32, 32), (0.5,), (0.5,))
    data = resolve_data(tmp_path / "d", cfg, num_classes=10)
    assert len(data.train) == 40 and len(data.val) == 20
    assert data.config.classes == tuple(f"c{i}" for i in range(10))
    assert data.config.augment.kind == "none" and data.train.augment is None  # small grey images
    with Image.open(data.train.files[5]) as im:
        torch.testing.assert_close(data.train.batch([5])[0][0], cfg(im))
    # evaluating the same root reads val; an explicit --val replaces it
    assert len(resolve_data(tmp_path / "d", cfg, split="eval").val) == 20
    _grey_folder(tmp_path / "other", 30)
    assert len(resolve_data(tmp_path / "d", cfg, val=tmp_path / "other").val) == 30
    # clear errors naming the fix
    with pytest.raises(ValueError, match="--num-classes 10"):
        resolve_data(tmp_path / "d", cfg, num_classes=5)
    _grey_folder(tmp_path / "few", 8)  # 8 classes
    with pytest.raises(ValueError, match="same class folders"):
        resolve_data(tmp_path / "d", cfg, val=tmp_path / "few")
    _grey_folder(tmp_path / "t" / "train", 20)
    with pytest.raises(ValueError, match="no val/"):
        resolve_data(tmp_path / "t", cfg, split="eval")
    with pytest.raises(FileNotFoundError, match="does not exist; give 'fmnist'"):
        resolve_data(tmp_path / "missing", cfg)


def test_fashion_mnist_trains_unaugmented_by_default():
    data = resolve_data("fmnist", DataConfig.fashion_mnist())
    assert data.train.augment is None  # the demo's data, untouched
    assert data.config == DataConfig.fashion_mnist() and data.config.augment == Augment("none")
    assert len(data.val) == 10_000  # the test split is held out
    light = resolve_data("fmnist", DataConfig.fashion_mnist(), augment=Augment("light"))
    assert light.train.augment is not None and light.train.plain().augment is None
    assert light.train.plain().memory is light.train.memory
    with pytest.raises(ValueError, match="--augment light"):
        resolve_data("fmnist", DataConfig.fashion_mnist(), augment=Augment("timm"))
    # in memory, any normalisation; another size or a crop needs image files
    other = DataConfig(1, (28, 28), (0.5,), (0.5,))
    assert resolve_data("fmnist", other).train.config.mean == (0.5,)
    with pytest.raises(ValueError, match="pass --data PATH"):
        resolve_data("fmnist", DataConfig(1, (32, 32), (0.5,), (0.5,)))
    with pytest.raises(ValueError, match="pass --data PATH"):
        resolve_data("fmnist", DataConfig(1, (28, 28), (0.5,), (0.5,), crop_pct=0.9))


def test_least_squares_reads_a_stratified_sample_of_the_unaugmented_images(tmp_path, monkeypatch):
    import snnet.train.pipeline
    from snnet.data import resolve_preprocessing
    from snnet.train import TrainConfig, fit

    _grey_folder(tmp_path / "d", 40)
    net = _vit_net(in_chans=1)
    data = resolve_data(
        tmp_path / "d",
        resolve_preprocessing(net.anchors).config,
        augment=Augment("light", hflip=1.0),
    )
    seen = []
    monkeypatch.setattr(
        snnet.train.pipeline, "init_least_squares", lambda net, x, **kw: seen.append(x)
    )
    fit(net, data, TrainConfig(steps=1, batch_size=8), ls_init=10, progress=False)
    sample = data.train.plain().sample(10, seed=0)
    assert torch.equal(seen[0], sample.batch(range(10))[0])
    assert sorted(sample.targets.tolist()) == list(range(10))  # one image of each class
    assert net.data_config == data.config and net.data_config.augment.flip == 1.0


# -- one meaning of "N images" --------------------------------------------------------------------
def test_stratified_sample_is_proportional_seeded_and_covers_every_class():
    from snnet.data import stratified_indices

    targets = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5  # 100 images
    idx = stratified_indices(targets, 20, seed=0)
    counts = np.bincount([targets[i] for i in idx], minlength=4)
    assert counts.tolist() == [10, 6, 3, 1] and len(set(idx)) == 20
    assert stratified_indices(targets, 20, seed=0) == idx
    assert stratified_indices(targets, 20, seed=1) != idx
    small = stratified_indices(targets, 4, seed=0)  # the smallest class keeps one image
    assert sorted(targets[i] for i in small) == [0, 1, 2, 3]
    assert stratified_indices(targets, 500) == list(range(100))


def test_every_reader_of_n_images_draws_the_same_stratified_sample(tmp_path):
    import snnet
    from snnet.cli import main
    from snnet.measure.results import Results
    from snnet.train.monitor import Validation

    folder = _grey_folder(tmp_path / "images", 60)  # 6 per class, in class order
    net = _vit_net(in_chans=1)
    model = snnet.save(net, tmp_path / "run")
    images = image_folder(folder, snnet.load(model).data_config or _config(net), strict=True)
    picked = images.sample(20, seed=0)
    assert np.bincount(picked.targets).tolist() == [2] * 10  # the first 20 would be 4 classes
    # the command line and the library record the sample they scored
    args = ["evaluate", str(model), "--data", str(folder), "--max-images", "20", "--workers", "0"]
    assert main(args) == 0
    meta = Results.load(model / "results.json").meta["accuracy"]
    assert meta["images"] == 20 and meta["sample"] == {
        "images": 20,
        "seed": 0,
        "kind": "stratified",
    }
    library = snnet.evaluate_all(net, images, max_images=20, progress=False)
    cli = Results.load(model / "results.json")
    assert [r.top1 for r in library] == [r.top1 for r in cli]
    # validation draws it too
    assert torch.equal(Validation(net, images, max_images=20).images.targets, picked.targets)
    # results of the first N images are not reused as a sample
    cli.meta["accuracy"].update(max_images=20, sample=None)
    cli.save(model / "results.json")
    assert main(args[:-4]) == 2


def _config(net):
    from snnet.data import resolve_preprocessing

    return resolve_preprocessing(net.anchors).config


def test_train_max_images_trains_on_a_stratified_sample_and_resume_keeps_it(tmp_path, capsys):
    import snnet
    from snnet.cli import main
    from snnet.train import TrainConfig, fit
    from snnet.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    args = ["train", "fmnist", "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    args += ["--ls-init", "16", "--quiet", "--seed", "3", "--val-images", "50"]
    assert main([*args, "--max-images", "40"]) == 0
    assert "stratified sample of 40 (seed 3)" in capsys.readouterr().out
    assert load_checkpoint(out)["step"] == 5  # 40 images, 8 a step
    # The same run, from the Python API on the sample it names: the same weights.
    anchors, options = snnet.resolve_anchors("fmnist", seed=3)
    net = snnet.SNNet(anchors, **options)
    data = resolve_data("fmnist", DataConfig.fashion_mnist()).sample_training(40, seed=3)
    assert np.bincount(data.train.targets.numpy()).tolist() == [4] * 10
    config = TrainConfig(epochs=1, batch_size=8, seed=3)
    fit(net, data, config, ls_init=16, progress=False, val_images=50)
    for (name, a), (_, b) in zip(
        snnet.load(out / "model").state_dict().items(), net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Resuming on other images is refused: the run would silently change its data.
    assert main([*args, "--max-images", "48", "--resume"]) == 2
    assert "the training data changed" in capsys.readouterr().err
    assert main([*args, "--max-images", "9", "--out", str(tmp_path / "small")]) == 2
    assert "cannot hold all 10 classes: give --max-images 10" in capsys.readouterr().err


def test_cli_trains_fashion_mnist_exactly_as_fit(tmp_path):
    import snnet
    from snnet.cli import main
    from snnet.train import TrainConfig, fit

    args = ["--steps", "3", "--batch-size", "32", "--ls-init", "64", "--quiet"]
    assert main(["train", "fmnist", "--out", str(tmp_path / "cli"), *args]) == 0
    anchors, options = snnet.resolve_anchors("fmnist")
    net = snnet.SNNet(anchors, **options)
    fit(
        net, fashion_mnist("train"), TrainConfig(steps=3, batch_size=32), ls_init=64, progress=False
    )
    cli = snnet.load(tmp_path / "cli")
    for (name, a), (_, b) in zip(cli.state_dict().items(), net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert cli.data_config == net.data_config == DataConfig.fashion_mnist()


def test_augmentation_options_map_to_one_augment_value():
    import argparse

    from snnet.cli.common import add_data_arguments, augment_from_args

    p = argparse.ArgumentParser()
    add_data_arguments(p)

    def parse(*argv: str):
        return augment_from_args(p.parse_args(list(argv)))

    assert parse() is None  # the data's default
    assert parse("--augment", "light") == Augment("light")
    assert parse("--hflip", "0.5") == Augment("auto", hflip=0.5)  # the default kind, flipped
    assert parse("--scale", "0.5", "1") == Augment("timm", scale=(0.5, 1.0))
    assert parse("--augment", "timm", "--auto-augment", "rand-m9") == Augment(
        "timm", auto_augment="rand-m9"
    )
    with pytest.raises(ValueError, match="--scale apply to timm's augmentation only"):
        parse("--augment", "light", "--scale", "0.5", "1")
