"""Dense targets in the one data layer: label and depth maps as one more target kind of
ImageSet, mmsegmentation's folder layout, the demo's canvases, and malformed data refused in one
line that names the file and the fix."""

import numpy as np
import pytest
import torch
from PIL import Image

from snnet.cli import main
from snnet.data import DataConfig, load_batches, resolve_data
from snnet.data.batches import in_order
from snnet.data.canvas import CANVAS_CLASSES, LIT, fashion_mnist_canvas
from snnet.data.config import Augment
from snnet.data.dense import write_dense_folder
from snnet.task import Task

SEG = Task("segmentation", num_classes=len(CANVAS_CLASSES))
DEPTH = Task("depth")


def config(size: int = 56) -> DataConfig:
    return DataConfig(1, (size, size), (0.5,), (0.5,))


@pytest.fixture(scope="module")
def canvases():
    return fashion_mnist_canvas("test", 24, seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, canvases):
    root = tmp_path_factory.mktemp("seg")
    write_dense_folder(canvases.subset(torch.arange(16)), root, "train")
    write_dense_folder(canvases.subset(torch.arange(16, 24)), root, "val")
    return root


def test_canvases_label_each_lit_pixel_with_its_items_class(canvases):
    x, masks = canvases.batch(torch.arange(8))
    assert x.shape == (8, 1, 56, 56) and masks.shape == (8, 56, 56) and masks.dtype == torch.uint8
    lit = canvases.memory[:, 0] >= LIT
    assert torch.equal(lit, canvases.dense.memory > 0)  # background exactly where nothing is lit
    assert set(canvases.dense.memory.unique().tolist()) <= set(range(len(CANVAS_CLASSES)))
    again = fashion_mnist_canvas("test", 24, seed=3)
    assert torch.equal(again.memory, canvases.memory)  # seeded: the same canvases again
    assert not torch.equal(fashion_mnist_canvas("test", 24, seed=4).memory, canvases.memory)


def test_depth_canvases_put_each_kind_of_item_at_its_distance_before_the_floor():
    d = fashion_mnist_canvas("test", 16, depth=True)
    seg = fashion_mnist_canvas("test", 16)  # the same canvases, labelled by class
    assert torch.equal(d.memory, seg.memory) and d.dense.memory.dtype == torch.float32
    items = seg.dense.memory > 0
    classes = seg.dense.memory[items].float() - 1
    torch.testing.assert_close(d.dense.memory[items], 1.0 + 0.5 * classes)
    floor = d.dense.memory[~items]
    assert floor.min() >= 6.0 and floor.max() <= 9.0  # behind every item


def test_a_folder_reads_back_what_was_written(folder, canvases):
    data = resolve_data(folder, config(), task=SEG, classes=CANVAS_CLASSES)
    assert len(data.train) == 16 and len(data.val) == 8 and data.train.classes == CANVAS_CLASSES
    x, masks = next(load_batches(data.val, in_order(8, 8), num_workers=0))
    assert torch.equal(masks, canvases.dense.memory[16:])
    assert torch.equal(x, data.val.config.normalize(canvases.memory[16:]))
    assert data.config.crop_mode == "squash"  # whole images, at the input size


def test_depth_maps_read_as_metres(tmp_path):
    d = fashion_mnist_canvas("test", 4, depth=True)
    write_dense_folder(d, tmp_path, "val")
    np.save(tmp_path / "depth_dir" / "val" / "000001.npy", d.dense.memory[1].numpy())
    (tmp_path / "depth_dir" / "val" / "000001.png").unlink()  # .npy (metres) serves too
    data = resolve_data(tmp_path, config(), task=DEPTH, split="eval")
    _, depth = data.val.batch(torch.arange(4))
    torch.testing.assert_close(depth, d.dense.memory, atol=5e-4, rtol=0)  # millimetres


def test_other_sizes_are_resized_whole_masks_with_nearest_neighbour(tmp_path):
    (tmp_path / "img_dir" / "val").mkdir(parents=True)
    (tmp_path / "ann_dir" / "val").mkdir(parents=True)
    mask = np.zeros((30, 20), dtype=np.uint8)
    mask[:, 10:] = 2  # right half class 2
    mask[0, 0] = 255
    Image.fromarray(np.full((30, 20), 200, dtype=np.uint8)).save(tmp_path / "img_dir/val/a.jpg")
    Image.fromarray(mask).save(tmp_path / "ann_dir/val/a.png")
    data = resolve_data(
        tmp_path, config(56), task=Task("segmentation", num_classes=3), split="eval"
    )
    x, y = data.val[0]
    assert x.shape == (1, 56, 56) and y.shape == (56, 56)
    assert set(y.unique().tolist()) == {0, 2, 255}  # nearest neighbour: no blended labels
    assert (y[:, :27] != 2).all() and (y[:, 29:] == 2).all()


def test_reduce_zero_label_ignores_zero_and_moves_the_others_down(tmp_path):
    (tmp_path / "img_dir" / "val").mkdir(parents=True)
    (tmp_path / "ann_dir" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "img_dir/val/a.png")
    Image.fromarray(np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8)).save(
        tmp_path / "ann_dir/val/a.png"
    )
    task = Task("segmentation", num_classes=2, reduce_zero_label=True)
    _, y = resolve_data(tmp_path, config(4), task=task, split="eval").val[0]
    assert y[0].tolist() == [255, 0, 1, 255]


def test_light_augmentation_moves_masks_with_their_images(folder):
    data = resolve_data(folder, config(), task=SEG, augment=Augment("light", hflip=1.0))
    rows = [torch.arange(8)]
    x, masks = next(load_batches(data.train, rows, seed=0, epoch=0, num_workers=0))
    _, before = next(load_batches(data.train.plain(), rows, num_workers=0))
    assert not torch.equal(masks, before)  # flipped and shifted ...
    lit = x[:, 0] >= (LIT / 255 - 0.5) / 0.5 - 1e-6
    assert torch.equal(lit, (masks > 0) & (masks != 255))  # ... with their images
    with pytest.raises(ValueError, match="--augment light"):
        resolve_data(folder, config(), task=SEG, augment=Augment("timm"))


# -- malformed data: one line naming the file and the fix ---------------------------------------
def _folder(tmp_path, image_size=(8, 8), mask=None, kind="ann_dir", suffix=".png"):
    (tmp_path / "img_dir" / "val").mkdir(parents=True, exist_ok=True)
    (tmp_path / kind / "val").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(image_size[::-1], dtype=np.uint8)).save(tmp_path / "img_dir/val/a.png")
    if mask is not None:
        path = tmp_path / kind / "val" / f"a{suffix}"
        np.save(path, mask) if suffix == ".npy" else Image.fromarray(mask).save(path)
    return tmp_path


MALFORMED = {
    "a mask of another size": (
        {"mask": np.zeros((9, 8), dtype=np.uint8)},
        SEG,
        r"ann_dir/val/a.png is 8×9 but its image .*a.png is 8×8: a target must have its image's",
    ),
    "a missing mask": (
        {},
        SEG,
        r"img_dir/val/a.png has no label map: expected .*ann_dir/val/a.png",
    ),
    "a label out of range": (
        {"mask": np.full((8, 8), 40, dtype=np.uint8)},
        SEG,
        r"ann_dir/val/a.png holds label 40, but the data has 11 classes: give all the class names",
    ),
    "an RGB mask": (
        {"mask": np.zeros((8, 8, 3), dtype=np.uint8)},
        SEG,
        r"ann_dir/val/a.png is a RGB image, not a label map: save one channel",
    ),
    "an 8-bit depth map": (
        {"mask": np.zeros((8, 8), dtype=np.uint8), "kind": "depth_dir"},
        DEPTH,
        r"depth_dir/val/a.png is an 8-bit image, not a depth map: save depth as a 16-bit PNG",
    ),
    "an integer .npy depth map": (
        {"mask": np.zeros((8, 8), dtype=np.int32), "kind": "depth_dir", "suffix": ".npy"},
        DEPTH,
        r"depth_dir/val/a.npy holds a int32 array of shape \(8, 8\): a depth map in .npy is",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_dense_data_is_refused_naming_the_file_and_the_fix(tmp_path, case):
    kwargs, task, message = MALFORMED[case]
    root = _folder(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):
        data = resolve_data(root, config(8), task=task, split="eval")
        data.val[0]  # labels are checked as a mask is read


def test_a_bad_label_read_in_a_worker_is_one_line(tmp_path):
    root = _folder(tmp_path, mask=np.full((8, 8), 40, dtype=np.uint8))
    data = resolve_data(root, config(8), task=SEG, split="eval")
    with pytest.raises(ValueError) as e:
        list(load_batches(data.val, [torch.arange(1)], num_workers=1))
    assert "\n" not in str(e.value) and str(e.value).endswith("(ignored)")


def test_the_command_line_refuses_malformed_data_in_one_line(tmp_path, capsys):
    root = _folder(tmp_path / "d", mask=np.zeros((9, 8), dtype=np.uint8))
    code = main(
        ["train", "fmnist", "--task", "segmentation", "--num-classes", "11", "--img-size", "56",
         "--data", str(root), "--out", str(tmp_path / "run"), "--steps", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("snnet train: error:")]
    assert code == 2 and errors == err[-1:] and "a target must have its image's size" in err[-1]
