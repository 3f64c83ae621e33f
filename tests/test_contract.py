"""Contracts every family must keep, run on tiny random-initialised anchors of each family, in
the default space (small→large) and with two-way routes (``directions="both"``: large→small
cuts and routes that return to an anchor, e.g. ``1:3-0:4:7-1:8``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import snnet
from conftest import as_rgb
from families import FAMILIES, TWO_WAY
from snnet.batchnorm import batchnorm_layers, batchnorm_stats, recalibrate_batchnorm
from snnet.cost import count_macs, count_params
from snnet.export import export_stitch, load_stitch, save_stitch
from snnet.layers import to_rows
from snnet.measure.evaluate import StitchTree
from snnet.measure.results import Results
from snnet.measure.select import select
from snnet.stitch import Stitch
from snnet.train.distributed import average_over_users


@pytest.fixture(
    scope="module",
    params=[(f, d) for f in sorted(FAMILIES) for d in ("up", "both")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def family(request):
    name, directions = request.param
    build, expected = FAMILIES[name]
    models = build()
    net = snnet.SNNet(models, directions=directions).eval()
    size = net.anchors[0].input_size
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    return name, models, net, x, expected if directions == "up" else TWO_WAY[name]


def test_count(family):
    _, _, net, _, expected = family
    assert len(net.stitches) == expected


def test_two_way_routes_reuse_the_layers_of_their_hops(family):
    _, _, net, _, _ = family
    down = {p.layer for (f, e), ps in net.space.positions.items() if f > e for p in ps}
    up = {p.layer for (f, e), ps in net.space.positions.items() if f < e for p in ps}
    assert set(net.layers) == up | down and not up & down
    if net.space.config.directions == "up":
        assert not down and all(s.route == tuple(sorted(s.route)) for s in net.stitches)
        return
    returns = [s for s in net.stitches if len(s.route) == 3]
    assert down and returns
    for s in returns:
        a, b, c = s.route
        assert a == c and abs(a - b) == 1, s
        # a hop of a return route is one of the pair's one-hop stitches: no new layer, no new cut
        assert all(Stitch((f, e), (cut,)) in net.space for f, e, cut in s.hops), s
        assert s.cuts[0].in_block <= s.cuts[1].out_block, s  # the middle anchor runs a block
        assert s.cuts[1].in_block > s.cuts[0].out_block, s  # no block of anchor a runs twice


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


# -- one description of what a stitch runs: net.parts(stitch) --------------------------------------
def _ran(net, x, stitch) -> set[str]:
    """Names of the parameters that receive a gradient when ``stitch`` trains on ``x``."""
    net.zero_grad(set_to_none=True)
    net.train()
    try:
        net(x, stitch=stitch).float().square().mean().backward()
    finally:
        net.eval()
    ran = {n for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return ran


def test_parts_hold_exactly_the_parameters_that_get_gradients(family):
    _, _, net, x, _ = family
    names = {id(p): n for n, p in net.named_parameters()}
    for stitch in net.stitches:
        parts = net.parts(stitch)
        assert parts[0].kind == "stem" and parts[-1].kind == "head", stitch
        assert len(parts) == len(set(parts)), stitch
        assert {names[id(p)] for p in net.parameters_of(stitch)} == _ran(net, x, stitch), stitch
        layers = [p.layer for p in parts if p.kind == "layer"]
        assert layers == [net.space.layer_for(f, e, c) for f, e, c in stitch.hops], stitch


def test_cost_measured_whole_equals_the_sum_over_parts(family):
    _, _, net, x, _ = family
    for stitch in net.stitches:
        with torch.no_grad():
            macs, _ = count_macs(net, x[:1], stitch)
        assert net.cost(stitch) == snnet.Cost(macs, count_params(net.parameters_of(stitch)))


def test_ddp_rescales_each_gradient_by_the_ranks_that_ran_it(family):
    _, _, net, x, _ = family
    pick = torch.randperm(len(net.stitches), generator=torch.Generator().manual_seed(1))[:4]
    stitches = [net.stitches[i] for i in pick]  # one per rank, W = 4
    if net.space.config.directions == "both":  # a route back and a large→small stitch among them
        stitches[2:] = [s for s in _one_of_each_kind(net) if len(s.route) == 3][:1]
        stitches += [s for s in net.stitches if s.route == (1, 0)][: 4 - len(stitches)]
        assert len(stitches) == 4
    ran = [_ran(net, x, s) for s in stitches]  # measured, not derived from parts
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    average_over_users(net, stitches)
    for n, p in net.named_parameters():
        users = sum(n in r for r in ran)
        expected = 4 / users if 0 < users < 4 else 1.0
        assert torch.all(p.grad == expected), (n, users)
    net.zero_grad(set_to_none=True)


def test_batchnorm_layers_are_those_that_run(family):
    _, _, net, x, _ = family
    names = {m: n for n, m in net.named_modules() if isinstance(m, _BatchNorm)}
    order = []
    hooks = [
        m.register_forward_hook(lambda mod, *_: order.append(mod))
        for m in [*names, *net.layers.values()]
    ]
    try:
        for stitch in net.stitches:
            order.clear()
            with torch.no_grad():
                net(x, stitch=stitch)
            layer = next((i for i, m in enumerate(order) if m not in names), len(order))
            after = {names[m] for m in order[layer + 1 :] if m in names}
            every = {names[m] for m in order if m in names}
            assert set(batchnorm_layers(net, stitch)) == after, stitch
            assert set(batchnorm_layers(net, stitch, scope="all")) == every, stitch
    finally:
        for h in hooks:
            h.remove()


def test_export_keeps_exactly_the_parameters_of_the_parts(family):
    _, _, net, x, _ = family
    for stitch in net.stitches:
        model = export_stitch(net, stitch)
        source = {}
        for k, entry in enumerate(model.info["anchors"]):
            for n, p in model.anchors[k].named_parameters():
                source[f"anchors.{entry['index']}.{n}"] = p
        for k, entry in enumerate(model.info["layers"]):
            for n, p in model.layers[str(k)].named_parameters():
                source[f"layers.{entry['name']}.{n}"] = p
        runs = {id(p) for p in net.parameters_of(stitch)}
        ran = {n: p for n, p in net.named_parameters() if id(p) in runs}
        assert source.keys() == ran.keys(), stitch
        assert all(torch.equal(source[n], ran[n]) for n in ran), stitch
        with torch.no_grad():
            assert torch.equal(model.eval()(x), net(x, stitch=stitch)), stitch


def test_evaluation_tree_runs_the_parts_of_each_stitch(family):
    _, _, net, x, _ = family
    tree = StitchTree(net)
    found = {}
    stack = [(tree.root, ())]
    while stack:
        node, parts = stack.pop()
        parts = parts + node.op
        for i in node.stitches:
            found[tree.stitches[i]] = parts
        stack += [(c, parts) for c in node.children]
    assert found == {s: net.parts(s) for s in net.stitches}
    with torch.no_grad():
        for stitch, logits in tree.run(x):
            assert torch.equal(logits, net(x, stitch=stitch)), stitch


# -- the routes of each kind: anchors, small→large, large→small, and routes back ------------------
def _one_of_each_kind(net) -> list:
    """The first stitch of each kind of route the space holds (anchor, up, down, a-b-a both ways)."""
    kinds = {}
    for s in net.stitches:
        kinds.setdefault(tuple(f < e for f, e, _ in s.hops), s)
    return list(kinds.values())


def test_exported_routes_save_and_load_identically(family, tmp_path):
    name, _, net, x, _ = family
    anchors = FAMILIES[name][0]() if any(a.source is None for a in net.anchors) else None
    for k, stitch in enumerate(_one_of_each_kind(net)):
        model = export_stitch(net, stitch)
        # An anchor the route visits twice is kept as two copies of disjoint parts.
        assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params, stitch
        save_stitch(model, tmp_path / str(k))
        loaded = load_stitch(tmp_path / str(k), anchors=anchors)
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x, stitch=stitch)), stitch


def test_batchnorm_recalibration_of_each_kind_of_route(family, fmnist_images):
    _, _, net, x, _ = family
    c, h, _ = net.anchors[0].input_size
    images = as_rgb(fmnist_images[:16], h)[:, :c]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for stitch in _one_of_each_kind(net):
        layers = batchnorm_layers(net, stitch)
        stats = recalibrate_batchnorm(net, stitch, images, batch_size=8)
        assert {k.rsplit(".", 1)[0] for k in stats} == set(layers), stitch
        with torch.no_grad():
            plain = net(x, stitch=stitch)
            with batchnorm_stats(net, stats):
                recalibrated = net(x, stitch=stitch)
        assert torch.isfinite(recalibrated).all(), stitch
        assert torch.equal(plain, recalibrated) == (not stats), stitch
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the network is left as it was


def test_selection_over_every_route(family):
    _, _, net, _, _ = family
    results = Results.for_network(net)
    for i, stitch in enumerate(net.stitches):  # a made-up accuracy that favours routes back
        results.update(stitch, top1=float(len(stitch.route) * 1000 + i % 7))
    costs = net.costs()
    budget = max(c.macs for c in costs.values()) / 1e9
    best = select(results, max_gmacs=budget)
    assert best.stitch in net.space
    assert len(best.stitch.route) == max(len(s.route) for s in net.stitches)
    front = results.pareto("gmacs", "top1")
    assert all(r.stitch in net.space for r in front)


@pytest.mark.slow
def test_two_process_ddp_on_routes_back(tmp_path):
    """Real DDP (torchrun, gloo): two ranks on two routes back that share parts and layers."""
    root = Path(__file__).parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    worker = str(root / "tests" / "ddp_routes_worker.py")
    done = subprocess.run(
        [*cmd, worker, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"routes-rank{r}.json").read_text()) for r in range(2)]
    for got in ranks:
        assert got["max_error"] < 1e-6 and got["checked"] > 20 and got["none_mismatch"] == []
        # Layer a0_a1_2 is rank 0's return hop (2:3) and rank 1's first hop (2:3).
        assert "layers.a0_a1_2.weight" in got["shared"]
        assert "layers.a1_a0_0.weight" not in got["shared"]  # rank 0's only
    assert ranks[0]["grad_sum"] == ranks[1]["grad_sum"]  # the ranks stay identical


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_mapped_two_way_space_runs_and_exports(name):
    """SN-Netv2's own rule (mode="mapped") on every family, its cut into the head kept: every
    stitch runs, and its export holds exactly its parameters and gives the same output."""
    net = snnet.SNNet(
        FAMILIES[name][0](), mode="mapped", directions="both", exclude_last=False
    ).eval()
    x = torch.randn(2, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    assert any(s.route == (1, 0, 1) for s in net.stitches)
    with torch.no_grad():
        for stitch in net.stitches:
            model = export_stitch(net, stitch).eval()
            assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params, stitch
            assert torch.equal(model(x), net(x, stitch=stitch)), stitch
