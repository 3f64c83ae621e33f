"""Per-stitch BatchNorm recalibration, on the tiny families that have BatchNorm."""

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import snnet
from conftest import as_rgb
from families import FAMILIES
from snnet.batchnorm import batchnorm_layers


@pytest.fixture(scope="module", params=["resnet", "levit"])
def bn_net(request, fmnist_images):
    net = snnet.SNNet(FAMILIES[request.param][0]()).eval()
    c, h, _ = net.anchors[0].input_size
    images = as_rgb(fmnist_images, h)[:128, :c]
    snnet.init_least_squares(net, images[:64])
    return net, images


def _stitch(net):
    return next(s for s in net.stitches if not s.is_anchor)


def _bn_after_stitching_layer(net, stitch, x):
    """Names of the BatchNorm layers that run after the stitching layer, seen by forward hooks."""
    names = {m: n for n, m in net.named_modules() if isinstance(m, _BatchNorm)}
    order, hooks = [], []
    for m in [*names, *net.layers.values()]:
        hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    try:
        with torch.no_grad():
            net(x, stitch=stitch)
    finally:
        for h in hooks:
            h.remove()
    first = next(i for i, m in enumerate(order) if not isinstance(m, _BatchNorm))
    return [names[m] for m in order[first + 1 :]]


def test_layers_are_those_running_after_the_stitching_layer(bn_net):
    net, images = bn_net
    stitch = _stitch(net)
    seen = _bn_after_stitching_layer(net, stitch, images[:2])
    assert seen and set(batchnorm_layers(net, stitch)) == set(seen)
    assert batchnorm_layers(net, "1") == {}
    every = {
        n for n, m in net.anchors[1].named_modules(prefix="anchors.1") if isinstance(m, _BatchNorm)
    }
    assert set(batchnorm_layers(net, "1", scope="all")) == every


def test_recalibration_leaves_the_network_untouched(bn_net):
    net, images = bn_net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    stats = snnet.recalibrate_batchnorm(net, _stitch(net), images, batch_size=64)
    assert stats
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == [m.training for m in net.modules()]
    for bn in batchnorm_layers(net, _stitch(net)).values():
        assert bn.momentum == 0.1


def test_statistics_are_those_of_the_stitched_features(bn_net):
    net, images = bn_net
    stitch = _stitch(net)
    stats = snnet.recalibrate_batchnorm(net, stitch, images, batch_size=64)
    # The first BatchNorm after the stitching layer: its inputs do not depend on any other
    # recalibrated layer, so its statistics are exactly those of its inputs over both batches.
    name = _bn_after_stitching_layer(net, stitch, images[:2])[0]
    bn = net.get_submodule(name)
    inputs = []
    hook = bn.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad():
        for batch in images.split(64):
            net(batch, stitch=stitch)
    hook.remove()
    dims = [0, *range(2, inputs[0].dim())]  # every axis but channels
    mean = torch.stack([x.mean(dims) for x in inputs]).mean(0)
    var = torch.stack([x.var(dims) for x in inputs]).mean(0)  # unbiased per batch, as PyTorch
    torch.testing.assert_close(stats[f"{name}.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats[f"{name}.running_var"], var, rtol=1e-4, atol=1e-5)
    assert int(stats[f"{name}.num_batches_tracked"]) == 2


def test_eval_with_recalibrated_stats_matches_batch_statistics(bn_net):
    """One calibration batch: eval mode with the stitch's statistics ≈ BatchNorm in train mode on
    that batch (up to the unbiased variance factor), far from the anchor's own statistics."""
    net, images = bn_net
    stitch = _stitch(net)
    batch = images[:128]
    stats = snnet.recalibrate_batchnorm(net, stitch, batch, batch_size=128)
    layers = batchnorm_layers(net, stitch).values()
    with torch.no_grad():
        plain = net(batch, stitch=stitch)
        for m in layers:
            m.train()
            m.momentum = 0.0  # batch statistics, running ones untouched
        try:
            reference = net(batch, stitch=stitch)
        finally:
            for m in layers:
                m.eval()
                m.momentum = 0.1
        with snnet.batchnorm_stats(net, stats):
            recalibrated = net(batch, stitch=stitch)
        again = net(batch, stitch=stitch)
    assert torch.equal(again, plain)  # the context restored the network's own statistics
    err = (recalibrated - reference).norm() / reference.norm()
    assert err < 0.05 and err < 0.5 * (plain - reference).norm() / reference.norm(), err


def test_families_without_batchnorm_after_the_stitch_need_nothing():
    net = snnet.SNNet(FAMILIES["resnet-swin"][0]()).eval()
    stitch = _stitch(net)  # ResNet (BatchNorm) into Swin (LayerNorm only)
    assert snnet.recalibrate_batchnorm(net, stitch, torch.randn(4, 3, 32, 32)) == {}
    assert snnet.recalibrate_batchnorm(net, "0", torch.randn(4, 3, 32, 32), scope="all")


def test_bad_input(bn_net):
    net, images = bn_net
    with pytest.raises(ValueError, match="at least one image"):
        snnet.recalibrate_batchnorm(net, _stitch(net), images[:0])
    with pytest.raises(ValueError, match="scope"):
        snnet.recalibrate_batchnorm(net, _stitch(net), images, scope="front")
    with pytest.raises(ValueError, match="not in this network"):
        snnet.recalibrate_batchnorm(net, "0:0-1:0", images)
