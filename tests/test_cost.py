import pytest
import timm
import torch

import snnet
from snnet.cost import count_macs

# ImageNet GMACs of the paper (fvcore) at 224².
PAPER = {
    "deit_tiny_patch16_224": 1.26,
    "deit_small_patch16_224": 4.61,
    "deit_base_patch16_224": 17.58,
}


@pytest.mark.parametrize("fused", [True, False])
def test_deit_anchor_gmacs_match_the_paper(fused):
    timm.layers.set_fused_attn(fused)
    try:
        with torch.device("meta"):
            net = snnet.SNNet([timm.create_model(n) for n in PAPER])
        for i, (name, paper) in enumerate(PAPER.items()):
            assert net.cost(str(i)).gmacs == pytest.approx(paper, rel=0.01), name
        assert net.cost("1:1-2:0").gmacs == pytest.approx(
            18.34, rel=0.01
        )  # the paper's largest stitch
    finally:
        timm.layers.set_fused_attn(True)


def test_fused_attention_is_counted_on_cpu():
    q = torch.randn(1, 2, 16, 8)
    macs, _ = count_macs(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert macs == 2 * 2 * 16 * 16 * 8  # QKᵀ and AV, per head
