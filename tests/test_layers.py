"""Stitching layers: full rank (SN-Net v1) and low rank (SN-Netv2), merged for export."""

import pytest
import torch

from snnet.adapters import FeatureShape
from snnet.layers import StitchingLayer

TOKENS = (FeatureShape("tokens", 6, 5), FeatureShape("tokens", 10, 5))
MAPS = (FeatureShape("nchw", 6, 4, (2, 2)), FeatureShape("nchw", 10, 4, (2, 2)))
LAYOUTS = {
    "tokens->tokens": TOKENS,
    "nchw->nchw": MAPS,
    "nchw->nhwc": (MAPS[0], FeatureShape("nhwc", 10, 4, (2, 2))),
    "nchw->tokens": (MAPS[0], FeatureShape("tokens", 10, 4)),
}


def _input(src: FeatureShape) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if src.layout == "tokens":
        return torch.randn(3, src.rows, src.channels, generator=g)
    return torch.randn(3, src.channels, *src.grid, generator=g)


def _perturb(layer: StitchingLayer) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_full_rank_is_unchanged():
    torch.manual_seed(0)
    layer = StitchingLayer(*TOKENS)
    torch.manual_seed(0)
    low = StitchingLayer(*TOKENS, rank=2)
    # Same construction order for W: a full-rank layer draws exactly what it drew before.
    assert torch.equal(layer.weight, low.weight)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert layer.update_parameters() == [] and layer.rank == 0
    assert all(p.requires_grad for p in layer.parameters())


def test_low_rank_starts_as_its_base_and_trains_only_the_update_and_bias():
    layer = StitchingLayer(*TOKENS, rank=3)
    assert sorted(layer.state_dict()) == ["bias", "lora_A", "lora_B", "weight"]
    assert layer.lora_A.shape == (3, 6) and layer.lora_B.shape == (10, 3)
    assert not layer.lora_B.any() and layer.lora_A.abs().sum() > 0  # B zero, A random
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "bias",
        "lora_A",
        "lora_B",
    }
    assert layer.scaling == 1.0  # alpha defaults to r
    assert StitchingLayer(*TOKENS, rank=4, alpha=8).scaling == 2.0
    x = _input(TOKENS[0])
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), expected)


def test_set_affine_sets_w0_and_zeroes_the_update():
    layer = StitchingLayer(*TOKENS, rank=2)
    _perturb(layer)
    w, b = torch.randn(10, 6), torch.randn(10)
    layer.set_affine(w, b)
    assert torch.equal(layer.weight, w) and torch.equal(layer.bias, b)
    assert not layer.lora_B.any()
    assert torch.equal(layer.effective_weight(), w)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("rank", [0, 2])
def test_merged_equals_unmerged(layout, rank):
    src, dst = LAYOUTS[layout]
    layer = StitchingLayer(src, dst, rank=rank, alpha=3.0 if rank else None)
    _perturb(layer)  # B nonzero: a trained update
    merged = layer.merged()
    assert isinstance(merged, StitchingLayer) and merged.rank == 0
    assert sum(p.numel() for p in merged.parameters()) == 10 * 6 + 10
    x = _input(src)
    with torch.no_grad():
        # The forward runs the merged weight itself; only the kernels' paths may differ (a fresh
        # tensor's memory alignment), by float rounding.
        torch.testing.assert_close(merged(x), layer(x), rtol=1e-6, atol=1e-6)
    assert merged.weight is not layer.weight  # a copy: training the network leaves it alone


def test_gradients_reach_the_update_not_w0():
    layer = StitchingLayer(*TOKENS, rank=2)
    layer(_input(TOKENS[0])).square().sum().backward()
    assert layer.weight.grad is None
    assert layer.lora_B.grad.abs().sum() > 0 and layer.bias.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rank": -1}, "must be >= 0"), ({"alpha": 2.0}, "give a rank > 0")],
)
def test_bad_options_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StitchingLayer(*TOKENS, **kwargs)
