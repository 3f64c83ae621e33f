import argparse
import hashlib
import json
from collections import Counter

import pytest
import timm
import torch

import snnet
from snnet.cuts import mapped_positions, sliding_windows, stage_positions
from snnet.space import SpaceConfig, StitchSpace
from snnet.stitch import Cut, Stitch

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


# -- two-way routes (SN-Netv2) --------------------------------------------------------------------
def _stitch_list_hash(net) -> str:
    text = "\n".join(
        f"{s} {'/'.join(net.space.layer_for(f, e, c) for f, e, c in s.hops)}" for s in net.stitches
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("options", "digest"),
    [  # stitches and their layers in order, as built before two-way routes existed (a35d2b6)
        ({}, "af6831eba5fe8ec7"),
        ({"nearest": False}, "978e0803b14c760e"),
        ({"kernel_size": 3}, "9aca7d879fca29bf"),
        ({"mode": "unpaired"}, "cf440e8de956ee93"),
        ({"directions": "up"}, "af6831eba5fe8ec7"),
    ],
)
def test_default_space_is_unchanged(deit_meta, options, digest):
    assert _stitch_list_hash(snnet.SNNet(deit_meta, **options)) == digest


@pytest.mark.parametrize(
    "options", [{}, {"nearest": False}, {"kernel_size": 3}, {"mode": "mapped"}, {"stride": 2}]
)
def test_two_way_space_extends_the_one_way_space(deit_meta, options):
    up = StitchSpace.build(deit_meta, SpaceConfig(**options))
    both = StitchSpace.build(deit_meta, SpaceConfig(directions="both", **options))
    assert both.stitches[: len(up)] == up.stitches  # results of one line up with the other's
    assert all(up.positions[k] == both.positions[k] for k in up.positions)
    added = both.stitches[len(up) :]
    assert added and all(any(f > e for f, e, _ in s.hops) for s in added)
    assert both.layer_keys()[: len(up.layer_keys())] == up.layer_keys()


def _kinds(space) -> Counter:
    """'anchor', 'SL', 'LS', 'LSL' or 'SLS' per stitch of a two-anchor space."""
    return Counter("anchor" if s.is_anchor else "".join("SL"[a] for a in s.route) for s in space)


@pytest.fixture(scope="module")
def deit3_large_meta():
    with torch.device("meta"):
        return snnet.as_anchor(timm.create_model("deit3_large_patch16_224"))  # depth 24


@pytest.mark.parametrize("large", ["base", "large"])
def test_sn_netv2_counts(deit_meta, deit3_large_meta, large):
    # SN-Netv2: two plain ViTs of depth 12 and 12 (DeiT-S/B), or 12 and 24 (S/L), give 134.
    pair = [deit_meta[1], deit_meta[2] if large == "base" else deit3_large_meta]
    space = StitchSpace.build(pair, SpaceConfig(mode="mapped", directions="both"))
    assert len(space) == 134
    assert _kinds(space) == {"anchor": 2, "SL": 11, "LS": 11, "LSL": 55, "SLS": 55}
    # Its positions: small block i into large block (i+1)·d_L/d_s; odd large blocks i back into
    # small block m(i) + 1, m the nearest-neighbour depth map (for equal depths: i into i + 1).
    r = pair[1].num_blocks // 12
    assert [p.cut for p in space.positions[(0, 1)]] == [Cut(i, (i + 1) * r) for i in range(11)]
    lsl = [i for i in range(pair[1].num_blocks - 1) if r == 1 or i % 2 == 1]
    assert [p.cut for p in space.positions[(1, 0)]] == [Cut(i, i // r + 1) for i in lsl]
    # The excluded position: the small anchor's last block into the large one's head.
    keep = StitchSpace.build(
        pair, SpaceConfig(mode="mapped", directions="both", exclude_last=False)
    )
    assert _kinds(keep) == {"anchor": 2, "SL": 12, "LS": 11, "LSL": 66, "SLS": 55}
    assert keep.positions[(0, 1)][-1].cut == Cut(11, pair[1].num_blocks)


def test_sn_netv2_count_with_unpaired_equal_depths(deit_meta):
    space = StitchSpace.build(deit_meta[1:], SpaceConfig(mode="unpaired", directions="both"))
    assert len(space) == 134


@pytest.mark.parametrize(
    ("options", "expected"),
    [  # DeiT-Ti/S/B with two-way routes, as the README states
        ({"directions": "both"}, 2211),  # paired windows both ways: 34 + 34 cuts per pair
        ({"directions": "both", "mode": "mapped"}, 267),  # 3 + 2 * 132
        ({"directions": "both", "mode": "unpaired"}, 267),
        ({"mode": "mapped"}, 3 + 2 * 11),
    ],
)
def test_deit_two_way_counts(deit_meta, options, expected):
    net = snnet.SNNet(deit_meta, **options)
    assert len(net.stitches) == expected
    two_way = options.get("directions") == "both"
    assert len(net.layers) == (44 if two_way else 22)
    assert all(s.route == tuple(sorted(s.route)) for s in net.stitches) != two_way


def test_a_second_space_reuses_the_measured_feature_shapes(deit_meta, monkeypatch):
    # Building a space measures the anchors' feature shapes once (a forward of each anchor);
    # a second space of the same anchors runs none (a two-way DeiT space has 2,211 stitches).
    StitchSpace.build(deit_meta)
    for anchor in deit_meta:
        monkeypatch.setattr(anchor, "forward_stem", lambda *a: pytest.fail("ran a model"))
    space = StitchSpace.build(deit_meta, SpaceConfig(directions="both"))
    assert len(space) == 2211


def test_mapped_positions():
    assert mapped_positions(2, 2) == [(0, 1), (1, 2)]
    assert mapped_positions(12, 24) == [(i, 2 * i + 2) for i in range(12)]
    assert mapped_positions(24, 12) == [(i, i // 2 + 1) for i in range(1, 24, 2)]
    # Not an integer ratio: deep block i has the shallow counterpart floor(i * 2 / 3) = 0, 0, 1.
    assert mapped_positions(2, 3) == [(0, 2), (1, 3)]
    assert mapped_positions(3, 2) == [(1, 1), (2, 2)]
    assert mapped_positions(6, 2) == [(2, 1), (5, 2)]


def test_space_config_json_names_only_the_options_a_space_uses():
    plain = {"kernel_size": 2, "stride": 1, "nearest": True, "mode": "auto", "stages": None}
    plain["layer_per_position"] = False
    assert SpaceConfig.from_json(plain) == SpaceConfig()
    assert SpaceConfig().to_json() == plain  # no SN-Netv2 option: the fingerprint stays short
    both = SpaceConfig(mode="mapped", directions="both", exclude_last=False)
    assert SpaceConfig.from_json(json.loads(json.dumps(both.to_json()))) == both
    assert both.to_json()["directions"] == "both" and both.to_json()["exclude_last"] is False
    with pytest.raises(ValueError, match="directions must be"):
        SpaceConfig(directions="down")
    with pytest.raises(ValueError, match="mode='mapped'"):
        SpaceConfig(exclude_last=False)
    with pytest.raises(ValueError, match="unknown stitching options"):
        SpaceConfig.from_json({**plain, "direction": "both"})


def test_two_way_membership_errors_name_the_fix(deit_meta):
    up = snnet.SNNet(deit_meta)
    with pytest.raises(ValueError, match="directions='both'"):
        up.stitch = "1:3-0:4"
    with pytest.raises(ValueError, match="directions='both'"):
        up.stitch = "0:3-1:4:7-0:8"
    with pytest.raises(ValueError, match="nearest=False"):
        up.stitch = "0:3-1:4:7-2:8"
    both = snnet.SNNet(deit_meta, directions="both", mode="mapped")
    assert both._resolve("1:3-0:4:7-1:8") == Stitch((1, 0, 1), (Cut(3, 4), Cut(7, 8)))
    with pytest.raises(ValueError, match="neighbouring anchors only"):
        both.stitch = "2:3-0:4"
    with pytest.raises(ValueError, match="at most three anchors"):
        both.stitch = "1:3-0:4:7-1:8:9-0:10"
    with pytest.raises(ValueError, match="at most three anchors"):
        both.stitch = "2:3-1:4:5-0:6"
    with pytest.raises(ValueError, match="into itself"):
        both.stitch = "0:3-0:4"
    with pytest.raises(ValueError, match="would run blocks twice"):
        snnet.SNNet(deit_meta, directions="both").stitch = "0:5-1:5:5-0:5"
    with pytest.raises(ValueError, match="middle anchor"):
        both.stitch = "0:5-1:6:3-0:4"
    with pytest.raises(ValueError, match=r"cuts from anchor 1 into 0 are \(out:in\) 0:1, 1:2"):
        both.stitch = "1:3-0:9"


def test_cli_passes_two_way_options():
    from snnet.cli.common import add_family_arguments, build_network

    parser = argparse.ArgumentParser()
    add_family_arguments(parser)
    names = ["deit_small_patch16_224", "deit_base_patch16_224"]
    args = parser.parse_args([*names, "--mode", "mapped", "--directions", "both"])
    net = build_network(args, device="meta")
    assert net.space.config == SpaceConfig(mode="mapped", directions="both")
    assert len(net.stitches) == 134
    args = parser.parse_args(
        [*names, "--mode", "mapped", "--directions", "both", "--no-exclude-last"]
    )
    assert len(build_network(args, device="meta").stitches) == 146
    assert build_network(parser.parse_args(names), device="meta").space.config == SpaceConfig()
