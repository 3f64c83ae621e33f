"""Contracts every family must keep, run on tiny random-initialised anchors of each family."""

import pytest
import torch

import snnet
from conftest import as_rgb
from families import FAMILIES
from snnet.layers import to_rows


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, expected = FAMILIES[request.param]
    models = build()
    net = snnet.SNNet(models).eval()
    size = net.anchors[0].input_size
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    return request.param, models, net, x, expected


def test_count(family):
    _, _, net, _, expected = family
    assert len(net.stitches) == expected


def test_anchor_stitches_equal_the_original_models(family):
    _, models, net, x, _ = family
    with torch.no_grad():
        for i, anchor in enumerate(models):
            # timm models (and the user's own) against themselves; SequentialAnchor has no model.
            plain = isinstance(anchor, snnet.Anchor) and not isinstance(
                anchor, snnet.SequentialAnchor
            )
            original = anchor.model if plain else anchor
            assert torch.equal(net(x, stitch=str(i)), original(x))


def test_every_stitch_runs_forward_and_backward(family):
    _, _, net, x, _ = family
    for stitch in net.stitches:
        net.zero_grad(set_to_none=True)
        out = net(x, stitch=stitch)
        assert out.shape[0] == x.shape[0] and torch.isfinite(out).all(), stitch
        out.float().square().mean().backward()
        used = {n for n, p in net.named_parameters() if p.grad is not None}
        layers = {n.split(".")[1] for n in used if n.startswith("layers.")}
        assert layers == {net.space.layer_for(f, e, c) for f, e, c in stitch.hops}, stitch


def test_params_count_exactly_the_modules_a_stitch_runs(family):
    _, _, net, x, _ = family
    for stitch in net.stitches:
        net.zero_grad(set_to_none=True)
        net.train()
        net(x, stitch=stitch).float().square().mean().backward()
        net.eval()
        touched = sum(p.numel() for p in net.parameters() if p.grad is not None)
        assert net.cost(stitch).params == touched, stitch
    for i, model in enumerate(family[1]):
        assert net.cost(str(i)).params == sum(p.numel() for p in model.parameters())


def test_cost_grows_between_anchors(family):
    _, _, net, _, _ = family
    anchors = [net.cost(str(i)).macs for i in range(len(net.anchors))]
    assert anchors == sorted(anchors) and anchors[0] > 0


def test_least_squares_lowers_stitch_error(family, fmnist_images):
    _, _, net, _, _ = family
    c, h, _ = net.anchors[0].input_size
    images = as_rgb(fmnist_images, h)[:, :c]
    calib, held_out = images[:192], images[192:256]

    def error() -> float:
        errs = []
        with torch.no_grad():
            feats = [a.boundaries(held_out) for a in net.anchors]
            for (f, e), positions in net.space.positions.items():
                for p in positions:
                    layer = net.layers[p.layer]
                    y = to_rows(feats[e][p.cut.in_block], layer.dst.layout)
                    y_hat = to_rows(layer(feats[f][p.cut.out_block + 1]), layer.dst.layout)
                    errs.append(((y_hat - y).norm() / y.norm()).item())
        return sum(errs) / len(errs)

    before = error()
    residuals = snnet.init_least_squares(net, calib, batch_size=64)
    after = error()
    assert set(residuals) == set(net.layers.keys())
    assert after < 0.5 * before, (before, after)


def test_save_and_load_give_identical_outputs(family, tmp_path):
    name, _, net, x, _ = family
    with torch.no_grad():  # make sure weights really travel, stitching layers and anchors
        for layer in net.layers.values():
            layer.bias.normal_()
        next(net.anchors[-1].parameters()).mul_(1.5)
    snnet.save(net, tmp_path)
    # timm anchors are rebuilt from the recorded source; a user's modules are passed again.
    anchors = FAMILIES[name][0]() if any(a.source is None for a in net.anchors) else None
    loaded = snnet.load(tmp_path, anchors=anchors).eval()
    with torch.no_grad():
        for stitch in net.stitches:
            torch.testing.assert_close(
                loaded(x, stitch=stitch), net(x, stitch=stitch), rtol=0, atol=0
            )
