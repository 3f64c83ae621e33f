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
