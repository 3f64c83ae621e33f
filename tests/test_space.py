import pytest
import timm
import torch

import snnet
from snnet.space import sliding_windows, stage_positions

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


@pytest.fixture(scope="module")
def deit_meta():
    with torch.device("meta"):
        return [snnet.as_anchor(timm.create_model(n)) for n in DEIT]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 71),
        ({"kernel_size": 1}, 27),
        ({"kernel_size": 2, "stride": 2}, 51),
        ({"kernel_size": 3}, 111),
        ({"kernel_size": 4}, 147),
        ({"nearest": False}, 732),
    ],
)
def test_deit_counts_match_the_paper(deit_meta, options, expected):
    assert len(snnet.SNNet(deit_meta, **options).stitches) == expected


def test_default_window_layer_sharing():
    pos = sliding_windows(12, 2, 1)
    by_layer = {}
    for j, k, g in pos:
        by_layer.setdefault(g, []).append((j, k))
    assert len(pos) == 34 and len(by_layer) == 11
    assert by_layer[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(by_layer[m] == [(m, m + 1), (m + 1, m), (m + 1, m + 1)] for m in range(1, 11))


def test_any_number_of_anchors(deit_meta):
    # The reference code's `nearest` only worked for exactly three anchors (two crashed).
    two = snnet.SNNet(deit_meta[:2])
    assert len(two.stitches) == 2 + 34
    four = snnet.SNNet([*deit_meta, timm.create_model("deit_base_patch16_224", device="meta")])
    assert len(four.stitches) == 4 + 3 * 34
    assert len(snnet.SNNet(deit_meta[:2], nearest=False).stitches) == 2 + 34


def test_unpaired_stage_rule():
    assert stage_positions(2, 2) == [(0, 1)]
    assert stage_positions(6, 18)[:4] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert len(stage_positions(6, 18)) == 17
    assert stage_positions(2, 6) == [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]
    with pytest.raises(ValueError, match="small to large"):
        stage_positions(6, 2)


def test_layer_per_position(deit_meta):
    net = snnet.SNNet(deit_meta[:2], layer_per_position=True)
    assert len(net.layers) == 34


def test_stitch_membership_errors_name_the_fix(deit_meta):
    net = snnet.SNNet(deit_meta)
    with pytest.raises(ValueError, match="cuts from anchor 0 into 1"):
        net.stitch = "0:3-1:9"
    with pytest.raises(ValueError, match=r"anchors 0\.\.2"):
        net.stitch = "3"
    with pytest.raises(ValueError, match="not stitched together"):
        net.stitch = "0:3-2:4"
    with pytest.raises(ValueError, match="expected forms"):
        net.stitch = "tiny"
    with pytest.raises(ValueError, match="kernel_size"):
        snnet.SNNet(deit_meta, kernel_size=0)
    with pytest.raises(ValueError, match="at least 2 anchors"):
        snnet.SNNet(deit_meta[:1])


def test_multi_hop_routes_need_a_block_in_the_middle(deit_meta):
    net = snnet.SNNet(deit_meta, nearest=False)
    assert snnet.Stitch.parse("0:3-1:4:4-2:5") in net.space
    with pytest.raises(ValueError, match="middle anchor"):
        net.stitch = "0:3-1:4:3-2:4"
