import pytest
import torch

from snnet.threads import set_threads


def test_set_threads_sets_torch_threads_and_refuses_nonsense():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == 1  # None keeps the count
        with pytest.raises(ValueError, match="--threads must be at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
