import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snnet.data import (
    FASHION_MNIST_ENV,
    FashionMNIST,
    augment_batch,
    fashion_mnist,
    image_folder,
    make_loader,
    write_image_folder,
)


@pytest.fixture(scope="module")
def fmnist_test() -> FashionMNIST:
    return fashion_mnist("test")


def test_fashion_mnist_splits_shapes_and_labels(fmnist_test):
    train = fashion_mnist("train")
    assert len(train) == 60_000 and len(fmnist_test) == 10_000
    for ds in (train, fmnist_test):
        assert ds.images.shape == (len(ds), 28, 28) and ds.images.dtype == torch.uint8
        assert ds.targets.dtype == torch.int64
        assert set(ds.targets.unique().tolist()) == set(range(10))
    # the normalisation constants are those of the training split
    pixels = train.images.float().div(255)
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)


def test_fashion_mnist_item_and_batch_agree(fmnist_test):
    x, y = fmnist_test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = fmnist_test[[3, 4]]
    assert xb.shape == (2, 1, 28, 28) and yb.tolist() == [y, int(fmnist_test.targets[4])]
    torch.testing.assert_close(xb[0], x)
    batches = list(fmnist_test.batches(4096))
    assert [len(b[1]) for b in batches] == [4096, 4096, 1808]


def test_fashion_mnist_missing_root_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("test", root=tmp_path)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="--data PATH"):
        fashion_mnist("train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        fashion_mnist("val")


def test_augmentation_is_seeded_and_shape_preserving(fmnist_test):
    imgs = fmnist_test.images[:64]
    a = augment_batch(imgs, generator=torch.Generator().manual_seed(1))
    b = augment_batch(imgs, generator=torch.Generator().manual_seed(1))
    assert a.shape == imgs.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, imgs)
    # with no padding and no flip it is the identity
    assert torch.equal(augment_batch(imgs, pad=0, flip=False), imgs)


def test_make_loader_batches_fashion_mnist(fmnist_test):
    loader = make_loader(fmnist_test, batch_size=1000, train=False)
    xs, ys = zip(*loader, strict=True)
    assert len(xs) == 10 and xs[0].shape == (1000, 1, 28, 28)
    assert torch.equal(torch.cat(ys), fmnist_test.targets)  # eval: all items, in order
    first = [next(iter(make_loader(fmnist_test, batch_size=32, train=True, seed=5)))[1]]
    again = next(iter(make_loader(fmnist_test, batch_size=32, train=True, seed=5)))[1]
    assert torch.equal(first[0], again)  # seeded shuffle


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


def test_image_folder_verify_skips_corrupt_files(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="snnet.data"):
        ds = image_folder(root, train=False, img_size=8, verify=True)
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 7
    assert "broken.png" in caplog.text and "truncated.png" in caplog.text
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 0
    assert sorted(ds.targets) == [0, 0, 0, 1, 1, 2, 2]


def test_image_folder_getitem_replaces_corrupt_file_with_next(tmp_path, caplog):
    root = _make_folder(tmp_path / "imgs")
    ds = image_folder(root, train=True, img_size=8, in_chans=1)  # no verify: only extension filter
    assert len(ds) == 9  # both bad PNGs indexed, the .txt not
    names = [p.name for p, _ in ds.samples]
    bad = names.index("broken.png")
    with caplog.at_level(logging.WARNING, logger="snnet.data"):
        x, y = ds[bad]
        ds[bad]  # second failure of the same file: no second warning
    assert x.shape == (1, 8, 8)
    assert y == ds.samples[bad + 1][1]  # deterministic: the next index
    skips = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skips) == 1 and "broken.png" in skips[0].getMessage()  # warned once per file
    # the whole epoch goes through without an exception
    loader = make_loader(ds, batch_size=4, train=False, num_workers=0)
    assert sum(len(yb) for _, yb in loader) == 9


def test_image_folder_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", train=False)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"no class subfolders.*<class_name>"):
        image_folder(tmp_path / "flat", train=False)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        image_folder(tmp_path / "empty", train=False)
    with pytest.raises(ValueError, match="in_chans"):
        image_folder(tmp_path / "empty", train=False, in_chans=2)


def test_write_image_folder_round_trips_labels_and_pixels(fmnist_test, tmp_path):
    root = write_image_folder(fmnist_test, tmp_path / "fm", limit=40)
    assert not list(root.rglob("*.tmp"))
    ds = image_folder(root, train=False, img_size=28, in_chans=1, crop_pct=1.0, verify=True)
    assert len(ds) == 40
    assert ds.classes[0].startswith("00_") and len(ds.classes) == len(set(ds.targets))
    by_index = {int(p.stem): y for p, y in ds.samples}
    assert by_index == {i: int(fmnist_test.targets[i]) for i in range(40)}
    path = next(p for p, _ in ds.samples if p.stem == "000007")
    assert np.array_equal(np.asarray(Image.open(path)), fmnist_test.images[7].numpy())
    # a second call keeps finished files and writes nothing new
    mtime = path.stat().st_mtime_ns
    write_image_folder(fmnist_test, root, limit=40)
    assert path.stat().st_mtime_ns == mtime


# -- preprocessing that follows the model ---------------------------------------------------------
def _vit_net(in_chans: int = 3):
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


def test_data_config_comes_from_timm_and_round_trips_through_json():
    from timm.data import resolve_model_data_config

    from snnet.preprocess import Augment, DataConfig

    net = _vit_net()
    cfg = DataConfig.for_anchors(net.anchors)
    timm_cfg = resolve_model_data_config(net.anchors[0].model)
    assert cfg.input_size == (3, 32, 32)  # the anchors' size, not the pretrained 224
    assert cfg.mean == timm_cfg["mean"] and cfg.std == timm_cfg["std"]
    assert cfg.crop_pct == timm_cfg["crop_pct"]
    assert cfg.interpolation == timm_cfg["interpolation"]
    full = DataConfig(1, (28, 28), (0.1,), (0.2,), classes=("a", "b"), augment=Augment("light"))
    again = DataConfig.from_json(full.to_json())
    assert again == full and again.classes == full.classes and again.augment == full.augment
    # one-channel timm anchors: the RGB statistics averaged; the demo anchors: Fashion-MNIST's
    grey = DataConfig.for_anchors(_vit_net(in_chans=1).anchors)
    assert grey.channels == 1 and grey.mean == (pytest.approx(sum(timm_cfg["mean"]) / 3),)
    from snnet.sources import from_source
    from snnet.zoo import demo_family_names

    zoo = [from_source({"kind": "zoo", "name": n}) for n in demo_family_names()[:2]]
    assert DataConfig.for_anchors(zoo) == DataConfig.fashion_mnist()


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
def test_serving_halves_of_the_transform_equal_the_whole_bit_for_bit(cfg):
    # Serving keeps uint8 pixels per image and normalises whole batches (on the device): the
    # network must see exactly what training's evaluation transform gives.
    from snnet.preprocess import DataConfig

    cfg = DataConfig(**cfg)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, c), np.uint8).squeeze(), m)
        for (h, w, c, m) in [(28, 28, 1, "L"), (200, 300, 3, "RGB"), (40, 17, 4, "RGBA")]
    ]
    pixels = torch.stack([cfg.pixels(img) for img in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, *cfg.input_size)
    assert torch.equal(cfg.normalize(pixels), torch.stack([cfg(img) for img in images]))
    with pytest.raises(TypeError, match="uint8"):
        cfg.normalize(pixels.float())


def test_the_saved_network_records_its_preprocessing_and_old_saves_load_as_before(tmp_path):
    import json

    import snnet
    from snnet.cli.evaluate import open_data
    from snnet.preprocess import DataConfig

    folder = _grey_folder(tmp_path / "images")
    net = _vit_net(in_chans=1)
    # saved before snnet recorded preprocessing: no "data"; evaluated with 0.5/0.5 as before
    old = snnet.save(net, tmp_path / "old")
    assert "data" not in json.loads((old / "config.json").read_text())
    loaded = snnet.load(old)
    assert loaded.data_config is None
    images, _ = open_data(loaded, folder)
    cfg = net.anchors[0].model.pretrained_cfg  # evaluate's old call: timm's crop, 0.5/0.5
    before = image_folder(
        folder,
        train=False,
        img_size=32,
        in_chans=1,
        crop_pct=cfg["crop_pct"],
        interpolation=cfg["interpolation"],
    )
    for i in (0, 7):
        assert torch.equal(images[i][0], before[i][0])
    # recorded: what training used comes back, and evaluation uses it
    cfg = DataConfig(1, (32, 32), (0.25,), (0.5,), crop_pct=1.0, classes=tuple("0123456789"))
    net.data_config = cfg
    new = snnet.save(net, tmp_path / "new")
    assert json.loads((new / "config.json").read_text())["data"]["mean"] == [0.25]
    loaded = snnet.load(new)
    assert loaded.data_config == cfg and loaded.data_config.classes == cfg.classes
    images, _ = open_data(loaded, folder)
    pixels = torch.from_numpy(np.array(Image.open(images.samples[0][0]))).float() / 255
    torch.testing.assert_close(images[0][0][0], (pixels - 0.25) / 0.5)


def test_serving_and_evaluation_preprocess_alike(tmp_path):
    from snnet.cli.evaluate import open_data
    from snnet.serve.model import preprocessing

    folder = _grey_folder(tmp_path / "images", size=40)
    for net in (_vit_net(), _vit_net(in_chans=1)):
        images, _ = open_data(net, folder)
        prep = preprocessing(net, {})
        with Image.open(images.samples[3][0]) as im:
            torch.testing.assert_close(prep(im), images[3][0])


def test_default_augmentation_follows_the_images():
    from snnet.preprocess import Augment, DataConfig, default_augment

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


def test_light_augmentation_shifts_within_the_evaluation_crop_and_is_seeded():
    from snnet.preprocess import Augment, DataConfig

    cfg = DataConfig(1, (32, 32), (0.5,), (0.5,))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32), np.uint8), "L")
    plain = cfg.transform()(img)
    light = cfg.transform(Augment("light"))
    torch.manual_seed(3)
    a = [light(img) for _ in range(8)]
    torch.manual_seed(3)
    b = [light(img) for _ in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.shape == plain.shape for x in a)
    assert any(not torch.equal(x, plain) for x in a)
    # a shift: the image moved by at most 2 px (1/16 of 32), zero padding at the border
    x = a[0][0]
    found = False
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            moved = torch.full_like(plain[0], -1.0)  # zero pixels, normalised
            src = plain[0][max(0, -dy) : 32 - max(0, dy), max(0, -dx) : 32 - max(0, dx)]
            moved[max(0, dy) : 32 - max(0, -dy), max(0, dx) : 32 - max(0, -dx)] = src
            found = found or torch.equal(moved, x)
    assert found


# -- one resolver for --data ----------------------------------------------------------------------
def test_a_root_with_train_and_val_trains_on_train_and_holds_out_val(tmp_path):
    from snnet.data import resolve_data
    from snnet.preprocess import DataConfig

    _grey_folder(tmp_path / "d" / "train", 40)
    _grey_folder(tmp_path / "d" / "val", 20)
    cfg = DataConfig(1, (32, 32), (0.5,), (0.5,))
    data = resolve_data(tmp_path / "d", cfg, num_classes=10)
    assert len(data.train) == len(data.plain) == 40 and len(data.val) == 20
    assert data.config.classes == tuple(f"c{i}" for i in range(10))
    assert data.config.augment.kind == "none"  # small grey images
    assert data.train is data.plain
    torch.testing.assert_close(
        data.plain[5][0], cfg.transform()(Image.open(data.plain.samples[5][0]))
    )
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


def test_fashion_mnist_trains_unaugmented_by_default_exactly_as_before():
    from snnet.data import resolve_data
    from snnet.preprocess import Augment, DataConfig

    data = resolve_data("fmnist", DataConfig.fashion_mnist())
    assert data.train is data.plain and not data.train.augment  # the demo's data, untouched
    assert data.config == DataConfig.fashion_mnist() and data.config.augment == Augment("none")
    assert len(data.val) == 10_000  # the test split is held out
    light = resolve_data("fmnist", DataConfig.fashion_mnist(), augment=Augment("light"))
    assert light.train.augment and not light.plain.augment
    assert light.plain.images is light.train.images
    with pytest.raises(ValueError, match="--augment light"):
        resolve_data("fmnist", DataConfig.fashion_mnist(), augment=Augment("timm"))


def test_augmentation_with_flip_probability_keeps_the_draws_of_flip_true(fmnist_test):
    imgs = fmnist_test.images[:64]
    a = augment_batch(imgs, flip=True, generator=torch.Generator().manual_seed(4))
    b = augment_batch(imgs, flip=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    never = augment_batch(imgs, pad=0, flip=0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(never, imgs)


def test_least_squares_reads_the_unaugmented_images(tmp_path, monkeypatch):
    import snnet.train.loop
    from snnet.batches import first_images
    from snnet.data import resolve_data
    from snnet.preprocess import Augment, DataConfig
    from snnet.train import TrainConfig, fit

    _grey_folder(tmp_path / "d", 40)
    net = _vit_net(in_chans=1)
    data = resolve_data(
        tmp_path / "d", DataConfig.for_anchors(net.anchors), augment=Augment("light", hflip=1.0)
    )
    seen = []
    monkeypatch.setattr(snnet.train.loop, "init_least_squares", lambda net, x, **kw: seen.append(x))
    config = TrainConfig(steps=1, batch_size=8)
    fit(
        net,
        data.train,
        config,
        ls_dataset=data.plain,
        data_config=data.config,
        ls_init=8,
        progress=False,
    )
    assert torch.equal(seen[0], first_images(data.plain, 8, seed=0))
    torch.manual_seed(0)
    assert not torch.equal(seen[0], first_images(data.train, 8, seed=0))  # flipped, shifted
    assert net.data_config == data.config and net.data_config.augment.flip == 1.0
    with pytest.raises(ValueError, match="without augmentation"):
        fit(net, data.train, config, ls_dataset=data.plain.subset([0, 1]), progress=False)


# -- a fixed share of the images ------------------------------------------------------------------
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


def test_evaluate_max_images_is_a_stratified_sample(tmp_path, capsys):
    import snnet
    from snnet.cli import main
    from snnet.measure.results import Results

    folder = _grey_folder(tmp_path / "images", 60)  # 6 per class, in class order
    model = snnet.save(_vit_net(in_chans=1), tmp_path / "run")
    args = ["evaluate", str(model), "--data", str(folder), "--max-images", "20", "--workers", "0"]
    assert main(args) == 0
    meta = Results.load(model / "results.json").meta["accuracy"]
    assert meta["images"] == 20 and "stratified sample of 20 (seed 0)" in meta["data"]
    from snnet.data import sample

    picked = sample(image_folder(folder, train=False, img_size=32, in_chans=1), 20, seed=0)
    assert np.bincount(picked.targets).tolist() == [2] * 10  # the first 20 would be 4 classes


def test_train_max_images_trains_on_a_stratified_sample_and_resume_keeps_it(tmp_path, capsys):
    import snnet
    from snnet.cli import main
    from snnet.data import Data, sample_training
    from snnet.train.checkpoint import load_checkpoint
    from snnet.train import TrainConfig, fit

    out = tmp_path / "run"
    args = ["train", "fmnist", "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    args += ["--ls-init", "16", "--quiet", "--seed", "3"]
    assert main([*args, "--max-images", "40"]) == 0
    assert "stratified sample of 40 (seed 3)" in capsys.readouterr().out
    assert load_checkpoint(out)["step"] == 5  # 40 images, 8 a step
    # The same run, from the Python API on the sample it names: the same weights.
    anchors, options = snnet.resolve_anchors("fmnist")
    net = snnet.SNNet(anchors, **options)
    train = fashion_mnist("train")
    data = sample_training(Data(FashionMNIST.data_config, train=train, plain=train), 40, seed=3)
    assert np.bincount(data.train.targets.numpy()).tolist() == [4] * 10
    fit(net, data.train, TrainConfig(epochs=1, batch_size=8, seed=3), ls_init=16, progress=False)
    for (name, a), (_, b) in zip(
        snnet.load(out / "model").state_dict().items(), net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Resuming on other images is refused: the run would silently change its data.
    assert main([*args, "--max-images", "48", "--resume"]) == 2
    assert "the training data changed" in capsys.readouterr().err
    assert main([*args, "--max-images", "9", "--out", str(tmp_path / "small")]) == 2
    assert "cannot hold all 10 classes: give --max-images 10" in capsys.readouterr().err


def test_cli_trains_fashion_mnist_exactly_as_fit_on_the_plain_dataset(tmp_path):
    # What `snnet train fmnist` ran before --data had a resolver: fit(net, fashion_mnist("train")).
    import snnet
    from snnet.cli import main
    from snnet.train import TrainConfig, fit

    args = ["--steps", "3", "--batch-size", "32", "--ls-init", "64", "--quiet"]
    assert main(["train", "fmnist", "--out", str(tmp_path / "cli"), *args]) == 0
    anchors, options = snnet.resolve_anchors("fmnist")
    net = snnet.SNNet(anchors, **options)
    config = TrainConfig(steps=3, batch_size=32)
    fit(net, fashion_mnist("train"), config, ls_init=64, progress=False)
    cli = snnet.load(tmp_path / "cli")
    for (name, a), (_, b) in zip(cli.state_dict().items(), net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert cli.data_config == net.data_config == FashionMNIST.data_config


def test_augmentation_options_map_to_one_augment_value():
    import argparse

    from snnet.cli.common import add_data_arguments, augment_from_args
    from snnet.preprocess import Augment

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
