from __future__ import annotations

import os

# Offline by design: the hub fails at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest
import torch

# Tiny models: one thread is fastest, and two threads oversubscribe a busy 2-core machine badly.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist_images() -> torch.Tensor:
    """512 real Fashion-MNIST test images as (N, 1, 28, 28) floats in [0, 1]."""
    from snnet.data import fashion_mnist

    return fashion_mnist("test").memory[:512].float() / 255


def as_rgb(images: torch.Tensor, size: int) -> torch.Tensor:
    """Grey 28×28 images as 3-channel inputs of ``size``×``size``, normalised."""
    x = torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    )
    return ((x - 0.286) / 0.353).expand(-1, 3, -1, -1).contiguous()


#: The files whose tests take longest (training runs, servers, demos), longest first. pytest-xdist
#: (``--dist loadfile``) hands files to the workers in collection order, so these are collected
#: first: the two workers start on the long files and end together, instead of one running a long
#: file alone at the end while the other waits.
LONG_FILES = (
    "test_demo.py",
    "test_reheading.py",
    "test_serve_ray.py",
    "test_digits.py",
    "test_threads.py",
    "test_dense_commands.py",
    "test_serve.py",
    "test_front.py",
    "test_out_errors.py",
    "test_train.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
