"""The seed's families on full-size models (meta device): the paper's counts and costs, presets,
options that change a model's structure, and the errors for families that do not fit."""

import json

import pytest
import timm
import torch

import snnet
import snnet.cli
from families import FAMILIES, TinyConvNet, TinyConvNetAnchor
from snnet.cost import count_macs

# preset -> (networks with default options, the paper's GMACs of the anchors at 224²)
PAPER = {
    "swin": (41, [4.51, 8.77, 15.47]),
    "resnet": (10, [1.82, 4.11]),
    "resnet-swin": (8, [1.82, 4.51]),
    "levit": (8, [0.66, 1.13]),
}


def _meta(names):
    with torch.device("meta"):
        return [timm.create_model(n) for n in names]


@pytest.fixture(scope="module", params=sorted(PAPER))
def preset_net(request):
    anchors, options = snnet.resolve_anchors(request.param, device="meta")
    return request.param, snnet.SNNet(anchors, **options)


def test_counts_match_the_paper(preset_net):
    name, net = preset_net
    assert len(net.stitches) == PAPER[name][0]


def test_anchor_gmacs_match_the_paper(preset_net):
    name, net = preset_net
    for i, paper in enumerate(PAPER[name][1]):
        assert net.cost(str(i)).gmacs == pytest.approx(paper, rel=0.01), (name, i)
    # every stitch costs between the cheapest and the dearest anchor
    costs = [net.cost(s).macs for s in net.stitches]
    assert (
        min(costs) == net.cost("0").macs and max(costs) == net.cost(str(len(net.anchors) - 1)).macs
    )


def test_resnet_stitch_of_the_paper():
    # The paper's best ResNet-18/50 network: a stitch of 3.76 GMACs.
    net = snnet.SNNet(_meta(["resnet18", "resnet50"]))
    assert net.cost("0:3-1:5").gmacs == pytest.approx(3.76, rel=0.01)


@pytest.mark.parametrize("fused", [True, False])
def test_swin_gmacs_do_not_depend_on_fused_attention(fused):
    timm.layers.set_fused_attn(fused)
    try:
        net = snnet.SNNet(_meta(["swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224"]))
        assert net.cost("0").gmacs == pytest.approx(4.51, rel=0.01)
        assert net.cost("1").gmacs == pytest.approx(15.47, rel=0.01)
    finally:
        timm.layers.set_fused_attn(True)


def test_levit_conv_variant_has_the_same_space_and_cost():
    tokens = snnet.SNNet(_meta(["levit_192", "levit_256"]))
    conv = snnet.SNNet(_meta(["levit_conv_192", "levit_conv_256"]))
    assert {a.stages()[0].layout for a in conv.anchors} == {"nchw"}
    assert conv.stitches == tokens.stitches
    for s in tokens.stitches:
        assert conv.cost(s).macs == pytest.approx(tokens.cost(s).macs, rel=1e-3), s


def test_default_stages_follow_the_paper():
    swin = snnet.as_anchor(_meta(["swin_tiny_patch4_window7_224"])[0])
    resnet = snnet.as_anchor(_meta(["resnet50"])[0])
    levit = snnet.as_anchor(_meta(["levit_256"])[0])
    assert [s.stitchable for s in swin.stages()] == [True, True, True, False]
    assert [s.stitchable for s in resnet.stages()] == [False, True, True, False]
    assert [s.stitchable for s in levit.stages()] == [True, True, False]
    assert [len(s.blocks) for s in resnet.stages()] == [3, 4, 6, 3]
    # the stage's downsampling runs first, inside the stage's first block
    assert swin.block_names()[2] == ("layers.1.downsample", "layers.1.blocks.0")
    assert levit.block_names()[4] == ("stages.1.downsample", "stages.1.blocks.0")


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_presets_from_the_command_line(preset, capsys):
    assert snnet.cli.main(["stitches", preset, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == PAPER[preset][0]
    assert [round(r["gmacs"], 2) for r in rows[: len(PAPER[preset][1])]] == pytest.approx(
        PAPER[preset][1], rel=0.01
    )


def test_cnn_presets_take_an_image_size(capsys):
    # ResNet takes no img_size in timm; the anchor still has to know the resolution.
    assert snnet.cli.main(["stitches", "resnet-swin", "--img-size", "112", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8
    with torch.device("meta"):
        macs, _ = count_macs(timm.create_model("resnet18"), torch.zeros(1, 3, 112, 112))
    assert rows[0]["gmacs"] == pytest.approx(macs / 1e9, abs=1e-4)


# -- options that change a model's structure -------------------------------------------------------
def _tiny(name, **kwargs):
    torch.manual_seed(0)
    return snnet.timm_anchor(name, **{"num_classes": 10, **kwargs})


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {"img_size": 32, "channels": (8, 16, 32, 64), "global_pool": "catavgmax"}),
        ("resnet18", {"img_size": 32, "channels": (8, 16, 32, 64), "output_stride": 16}),
        ("resnet18", {"img_size": 32, "channels": (8, 16, 32, 64), "stem_type": "deep"}),
        (
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 32,
                "window_size": 4,
                "embed_dim": 8,
                "num_heads": (1, 2, 2, 4),
                "global_pool": "max",
            },
        ),
        (
            "levit_128s",
            {
                "img_size": 64,
                "key_dim": 8,
                "embed_dim": (16, 24, 32),
                "num_heads": (2, 3, 4),
                "num_classes": 0,
            },
        ),
        (
            "levit_conv_128s",
            {
                "img_size": 64,
                "key_dim": 8,
                "embed_dim": (16, 24, 32),
                "num_heads": (2, 3, 4),
                "stem_type": "s8",
            },
        ),
    ],
)
def test_structural_options_keep_anchors_exact(name, kwargs):
    anchor = _tiny(name, **kwargs).eval()
    x = torch.randn(2, *anchor.input_size)
    with torch.no_grad():
        assert torch.equal(anchor(x), anchor.model(x))


def test_resnet_head_dropout_is_part_of_the_head():
    anchor = _tiny("resnet18", img_size=32, channels=(8, 16, 32, 64), drop_rate=0.5).train()
    x = torch.randn(2, *anchor.input_size)
    torch.manual_seed(1)
    ours = anchor(x)
    torch.manual_seed(1)
    assert torch.equal(ours, anchor.model(x))
    anchor.eval()
    assert torch.equal(anchor(x), anchor(x))


def test_levit_distillation_head_is_part_of_the_head():
    anchor = _tiny(
        "levit_128s", img_size=64, key_dim=8, embed_dim=(16, 24, 32), num_heads=(2, 3, 4)
    )
    assert "head_dist" in anchor.head_names
    head = {id(p) for p in anchor.part_parameters("head")}
    assert {id(p) for p in anchor.model.head_dist.parameters()} <= head
    assert anchor.input_size == (3, 64, 64)  # from the model, not timm's 224 default


# -- errors ------------------------------------------------------------------------------------------
def test_families_that_cannot_be_stitched():
    with pytest.raises(ValueError, match=r"cannot stitch stage 0.*equal resolution"):
        snnet.SNNet(_meta(["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]))
    with pytest.raises(ValueError, match=r"cannot stitch stage 1.*28x28.*49 tokens"):
        snnet.SNNet(_meta(["resnet18", "levit_192"]))


def test_stages_that_do_not_exist():
    with pytest.raises(ValueError, match=r"stage 4 does not exist.*3 stages"):
        snnet.SNNet(_meta(["levit_192", "levit_256"]), stages=[0, 4])


@pytest.mark.parametrize(
    "names",
    [
        ["resnet50", "resnet18"],
        ["swin_base_patch4_window7_224", "swin_small_patch4_window7_224"],
        ["levit_256", "levit_192"],
        ["swin_tiny_patch4_window7_224", "resnet18"],
    ],
)
def test_anchors_out_of_order(names):
    with pytest.raises(ValueError, match="small to large"):
        snnet.SNNet(_meta(names))


def test_unknown_preset(capsys):
    assert snnet.cli.main(["stitches", "swim"]) == 2
    err = capsys.readouterr().err
    assert "neither a preset" in err and "Did you mean swin" in err
    with pytest.raises(ValueError, match="neither a preset"):
        snnet.resolve_anchors("levitt")


# -- the user's own family (README, "Your own family") -----------------------------------------------
def test_own_family_adapter_is_found_by_registration():
    model = TinyConvNet((8, 16), (2, 2))
    anchor = snnet.as_anchor(model)
    assert isinstance(anchor, TinyConvNetAnchor) and anchor.model is model
    assert [len(s.blocks) for s in anchor.stages()] == [2, 2]


def test_default_forwards_run_the_named_parts_and_refuse_bare_parameters():
    class Named(snnet.Anchor):  # no forward_stem / forward_head of its own
        stem_names = ("stem", "missing")  # an absent option is skipped
        head_names = ("fc",)

        def block_names(self):
            return [("stages.0",), ("stages.1",)]

        def stages(self):
            return (snnet.Stage(range(2), "nchw"),)

    model = TinyConvNet((8, 16), (2, 2))
    model.fc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), model.fc)
    anchor = Named(model, input_size=(3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = model.stages[1](model.stages[0](model.stem(x)))
        assert torch.equal(anchor(x), model.fc(h))
    model.scale = torch.nn.Parameter(torch.ones(()))
    Named.stem_names = ("stem", "scale")
    with pytest.raises(TypeError, match="override forward_stem"):
        Named(model, input_size=(3, 32, 32)).forward_stem(x)


def test_a_model_without_an_adapter_is_a_clear_error():
    with pytest.raises(ValueError, match="register_adapter"):
        snnet.as_anchor(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_levit_loading_weights_after_an_eval_forward():
    # timm's LeViT caches its attention biases in eval mode; loaded weights must replace them.
    build = FAMILIES["levit"][0]
    net, other = snnet.SNNet(build()).eval(), snnet.SNNet(build()).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, *net.anchors[0].input_size)
        net(x, stitch="1")  # fills the cache
        net.load_state_dict(other.state_dict())
        assert torch.equal(net(x, stitch="1"), other(x, stitch="1"))
