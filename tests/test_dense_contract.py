"""Contracts of dense tasks, run on the tiny random-initialised anchors of every family (as
test_contract.py does for classification): one head shared by every stitch, fed by feature
levels of whichever anchors a stitch runs."""

import pytest
import torch

import snnet
from families import FAMILIES, TWO_WAY
from snnet.dense.levels import level_blocks
from snnet.export import export, export_stitch, load_stitch, save_stitch
from snnet.measure.evaluate import StitchTree
from snnet.task import Task

# Plain families read two levels of their depth; hierarchical ones the last two stages.
TASKS = {
    "segmentation": Task("segmentation", num_classes=5, head="fpn", levels=2, channels=16),
    "depth": Task("depth", head="naive", channels=16),
}


@pytest.fixture(
    scope="module",
    params=[(f, t) for f in sorted(FAMILIES) for t in TASKS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def dense(request):
    name, kind = request.param
    build, expected = FAMILIES[name]
    net = snnet.SNNet(build(), task=TASKS[kind]).eval()
    x = torch.randn(2, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    return name, net, x, expected


def test_stitch_counts_equal_classification(dense):
    _, net, _, expected = dense
    assert len(net.stitches) == expected


def test_two_way_routes_count_as_in_classification():
    build, _ = FAMILIES["vit"]
    net = snnet.SNNet(build(), task=TASKS["segmentation"], directions="both")
    assert len(net.stitches) == TWO_WAY["vit"]


def test_every_stitch_predicts_per_pixel_and_trains_its_own_parts(dense):
    _, net, x, _ = dense
    size = tuple(x.shape[-2:])
    for stitch in net.stitches:
        net.zero_grad(set_to_none=True)
        out = net(x, stitch=stitch)
        want = (2, 5, *size) if net.task.kind == "segmentation" else (2, *size)
        assert tuple(out.shape) == want and torch.isfinite(out).all(), stitch
        out.float().square().mean().backward()
        used = {n for n, p in net.named_parameters() if p.grad is not None}
        layers = {n.split(".")[1] for n in used if n.startswith("layers.")}
        assert layers == {net.space.layer_for(f, e, c) for f, e, c in stitch.hops}, stitch
        taps = {n.split(".")[2] for n in used if n.startswith("dense.taps.")}
        assert taps == {p.layer for p in net.parts(stitch) if p.kind == "tap" and p.layer}
        assert all(p.grad is not None for p in net.dense.decoder.parameters())  # shared head
        assert not any(n.startswith(f"anchors.{a}.model.head") for n in used for a in range(3))


def test_params_count_exactly_the_modules_a_stitch_runs(dense):
    _, net, x, _ = dense
    for stitch in net.stitches:
        net.zero_grad(set_to_none=True)
        net(x, stitch=stitch).float().square().mean().backward()
        touched = sum(p.numel() for p in net.parameters() if p.grad is not None)
        assert net.cost(stitch).params == touched, stitch


def test_each_level_is_read_once_and_the_head_last(dense):
    _, net, _, _ = dense
    for stitch in net.stitches:
        parts = net.parts(stitch)
        levels = [p.level for p in parts if p.kind == "tap"]
        assert sorted(levels) == list(range(net.task.levels)), stitch
        assert parts[-1].kind == "decode" and all(p.kind != "head" for p in parts)


def test_one_pass_over_every_stitch_equals_each_stitch_alone(dense):
    _, net, x, _ = dense
    with torch.no_grad():
        got = dict(StitchTree(net).run(x))
        for stitch in net.stitches:
            torch.testing.assert_close(got[stitch], net(x, stitch=stitch), rtol=0, atol=1e-6)


def test_cost_grows_between_anchors_and_counts_the_head(dense):
    _, net, _, _ = dense
    macs = [net.cost(str(i)).macs for i in range(len(net.anchors))]
    assert macs == sorted(macs)
    head = net._count_macs()[snnet.Part("decode")]
    assert head > 0 and all(m > head for m in macs)


def test_least_squares_sets_the_taps_onto_the_head_anchors_features(dense, fmnist_images):
    _, net, _, _ = dense
    c, h, _ = net.anchors[0].input_size
    from conftest import as_rgb

    images = as_rgb(fmnist_images[:64], h)[:, :c]
    residuals = snnet.init_least_squares(net, images)
    taps = {k for k in residuals if k.startswith("taps.")}
    assert taps == {f"taps.{k}" for k in net.dense.taps}
    assert all(residuals[k] < 1 for k in taps)


def test_levels_follow_sn_netv2s_remapping_for_unequal_depths():
    torch.manual_seed(0)
    small, large = (
        snnet.timm_anchor(
            "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=d, embed_dim=16, num_heads=2
        )
        for d in (12, 24)
    )
    # SN-Netv2: F.interpolate(mode="nearest") of the small anchor's ids to the large depth
    assert level_blocks([small, large], 4) == ((2, 5, 8, 11), (5, 11, 17, 23))
    assert level_blocks([small, large], 1) == ((11,), (23,))
    net = snnet.SNNet([small, large], task=TASKS["segmentation"], mode="mapped")
    x = torch.randn(1, 3, 32, 32)
    for stitch in net.stitches:  # every route reads every level once
        assert sorted(p.level for p in net.parts(stitch) if p.kind == "tap") == [0, 1]
        assert net(x, stitch=stitch).shape == (1, 5, 32, 32)


def test_a_task_the_head_cannot_read_is_refused():
    build, _ = FAMILIES["swin"]
    with pytest.raises(ValueError, match="stages"):
        snnet.SNNet(build(), task=Task("depth", head="fpn", levels=5))
    with pytest.raises(ValueError, match="parameter-efficient"):
        snnet.SNNet(FAMILIES["vit"][0](), task=TASKS["depth"], lora_rank=2)
    with pytest.raises(ValueError, match="2 or more classes"):
        Task("segmentation")


def _some_stitches(net):
    """The anchors and a few stitches of each route."""
    by_route = {}
    for s in net.stitches:
        by_route.setdefault(s.route, []).append(s)
    return [s for ss in by_route.values() for s in (ss[0], ss[len(ss) // 2], ss[-1])]


def test_an_exported_stitch_holds_its_head_and_computes_what_the_network_computes(dense, tmp_path):
    _, net, x, _ = dense
    with torch.no_grad():
        for stitch in _some_stitches(net):
            model = export_stitch(net, stitch)
            assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params
            assert torch.equal(model(x), net(x, stitch=stitch)), stitch
        save_stitch(model, tmp_path / "stitch")
        own = None if all(a.source for a in net.anchors) else list(net.anchors)
        back = load_stitch(tmp_path / "stitch", anchors=own)
        assert torch.equal(back(x), net(x, stitch=stitch))


def test_a_saved_dense_network_loads_with_its_task(tmp_path):
    net = snnet.SNNet(FAMILIES["vit"][0](), task=TASKS["segmentation"]).eval()
    snnet.save(net, tmp_path / "net")
    back = snnet.load(tmp_path / "net").eval()
    assert back.task == net.task
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x, stitch="0:1-1:2"), net(x, stitch="0:1-1:2"))


@pytest.mark.parametrize("kind", TASKS)
def test_onnx_of_a_dense_stitch_agrees_with_the_network_within_1e_5(kind, tmp_path):
    import onnxruntime as ort

    net = snnet.SNNet(FAMILIES["vit"][0](), task=TASKS[kind]).eval()
    stitch = "0:1-1:2"
    paths = export(export_stitch(net, stitch), tmp_path, ["onnx"])
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {"x": x.numpy()})
    assert session.get_outputs()[0].name == ("logits" if kind == "segmentation" else "depth")
    with torch.no_grad():
        want = net(x, stitch=stitch)
    assert float((torch.from_numpy(got) - want).abs().max()) <= 1e-5


@pytest.mark.parametrize("kind", TASKS)
def test_a_dense_front_is_one_program_that_computes_the_network(kind, tmp_path):
    """(Its ONNX graph, served: tests/test_serve_dense.py.)"""
    from snnet.artifact import read_front_config
    from snnet.export.front import export_front

    net = snnet.SNNet(FAMILIES["vit"][0](), task=TASKS[kind]).eval()
    stitches = ["0:1-1:2", "1"]
    export_front(net, tmp_path, ["pt2"], stitches=stitches, atol=1e-5)
    config = read_front_config(tmp_path)
    assert [r["stitch"] for r in config["stitches"]] == stitches and config["task"]["kind"] == kind
    assert len(config["checked"]["pt2"]) == 2 and max(config["checked"]["pt2"]) <= 1e-5
    [output] = config["outputs"]
    assert output["name"] == ("logits" if kind == "segmentation" else "depth")
    assert output["shape"] == (
        ["batch", 5, 32, 32] if kind == "segmentation" else ["batch", 32, 32]
    )


def test_a_route_that_misses_a_level_is_refused_when_the_network_is_built(monkeypatch):
    import snnet.dense.head as head

    def skewed(anchors, levels):  # the head anchor reads its level at its first block
        return (*level_blocks(anchors, levels)[:-1], (0,))

    monkeypatch.setattr(head, "level_blocks", skewed)
    with pytest.raises(
        ValueError, match=r"the route 1\[0:\d+\] -> 2\[[1-3]:4\] runs no block of level 0"
    ):
        snnet.SNNet(FAMILIES["vit"][0](), task=Task("depth", channels=8))
