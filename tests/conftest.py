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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding ``slow`` tests first, each file's tests in their order. The workers take
    whole files (``--dist loadfile``, ``--no-loadscope-reorder``: pyproject.toml) in this
    order, so they start the long files first and end on short ones together; xdist's own
    order (most tests first) would leave the files of one long test for last, run by one
    worker while the other idles."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort keeps the order within
