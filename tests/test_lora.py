"""Low-rank stitching layers and parameter-efficient (PEFT) mode: contracts over every family."""

import os
import signal
import warnings

import pytest
import torch

import snnet
from families import FAMILIES
from snnet.cli import main
from snnet.export import export_stitch, load_stitch, save_stitch
from snnet.lstsq import init_least_squares
from snnet.measure.evaluate import StitchTree
from snnet.peft import adapting, lora_parameters
from snnet.serialize import network_config, saved_state
from snnet.train import TrainConfig, train_loop
from snnet.train.checkpoint import load_checkpoint
from snnet.train.step import make_optimizer

MODES = {
    "low-rank": {"stitch_rank": 2, "stitch_alpha": 4.0},
    "peft": {"lora_rank": 2, "lora_alpha": 4.0, "lora_targets": "attn+mlp", "stitch_rank": 2},
    "peft-full-layers": {"lora_rank": 2},
}
#: Families whose adapter names attention layers for LoRA (the others train stitching layers only).
WITH_ATTENTION = {"vit", "swin", "levit", "levit-conv", "resnet-swin"}


def _build(family: str, mode: str) -> tuple[list, snnet.SNNet]:
    models = FAMILIES[family][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ResNet-like families: "no attn layers for LoRA"
        net = snnet.SNNet(models, **MODES[mode]).eval()
    return models, net


def _trained(net: snnet.SNNet) -> None:
    """Every update nonzero, as after training (B starts at zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.update_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _input(net: snnet.SNNet, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *net.anchors[0].input_size, generator=g)


def _some(stitches, k: int = 6):
    """Anchors, and a spread of the other stitches (all of them on small families)."""
    anchors = [s for s in stitches if not s.hops]
    rest = [s for s in stitches if s.hops]
    step = max(1, len(rest) // k)
    return anchors + rest[::step]


@pytest.fixture(
    scope="module",
    params=[(f, m) for f in sorted(FAMILIES) for m in MODES],
    ids=[f"{f}-{m}" for f in sorted(FAMILIES) for m in MODES],
)
def case(request):
    family, mode = request.param
    models, net = _build(family, mode)
    _trained(net)
    return family, mode, models, net


def test_anchors_run_exactly_their_original_weights(case):
    family, _, _, net = case
    x = _input(net)
    with torch.no_grad():
        # Freshly built (the same seeded weights): the network's anchors carry the LoRA now.
        for i, model in enumerate(FAMILIES[family][0]()):
            original = model.model if isinstance(model, snnet.Anchor) else model
            if isinstance(model, snnet.SequentialAnchor):
                original = model
            assert torch.equal(net(x, stitch=str(i)), original(x))
            with adapting(True):  # even inside an outer switch: the anchor's route sets it
                assert torch.equal(net(x, stitch=str(i)), original(x))
    if net.adapter_config.frozen_anchors:
        assert all(not p.requires_grad for p in net.parameter_groups()["anchors"])
        if family in WITH_ATTENTION:
            # ... while the LoRA does change what a stitch computes after its cut.
            stitch = next(s for s in net.stitches if s.hops)
            with torch.no_grad():
                on = net(x, stitch=stitch)
                lora = lora_parameters(net.anchors)
                saved = [p.clone() for p in lora]
                for p in lora:
                    p.zero_()
                off = net(x, stitch=stitch)
                for p, s in zip(lora, saved, strict=True):
                    p.copy_(s)
            assert not torch.equal(on, off)
        else:
            assert lora_parameters(net.anchors) == []


def test_export_merges_and_equals_the_network(case, tmp_path):
    _, _, models, net = case
    x = _input(net)
    for stitch in _some(net.stitches):
        model = export_stitch(net, stitch)
        names = {type(m).__name__ for m in model.modules()}
        assert not names & {"LoRALinear", "LoRAConv1x1"}, stitch  # a plain model
        assert all(layer.rank == 0 for layer in model.layers.values())
        assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params
        with torch.no_grad():
            # The network runs the very merged weights an export holds: equal up to the kernels'
            # rounding (which a tensor's memory alignment can change).
            torch.testing.assert_close(model(x), net(x, stitch=stitch), rtol=1e-6, atol=1e-6)
    # And through the files: rebuilt as a plain model.
    stitch = _some(net.stitches)[-1]
    save_stitch(export_stitch(net, stitch), tmp_path / "s")
    loaded = load_stitch(tmp_path / "s", anchors=models)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x, stitch=stitch), rtol=1e-6, atol=1e-6)


def test_one_pass_evaluation_equals_one_by_one(case):
    _, _, _, net = case
    x = _input(net)
    with torch.no_grad():
        for stitch, logits in StitchTree(net).run(x):
            assert torch.equal(logits, net(x, stitch=stitch)), stitch


def test_frozen_parameters_stay_bit_identical_after_training_steps(case):
    family, mode, _, _ = case
    _, net = _build(family, mode)  # a fresh copy: this test trains it
    params = dict(net.named_parameters(remove_duplicate=False))
    frozen = {  # low-rank: the layers' W0; PEFT: also the anchors, BatchNorm statistics included
        n: t.clone()
        for n, t in net.state_dict().items()
        if (n in params and not params[n].requires_grad)
        or (n not in params and net.adapter_config.frozen_anchors)
    }
    trained = {n: p.clone() for n, p in net.named_parameters() if p.requires_grad}
    assert trained and frozen
    config = TrainConfig(lr=1e-2, weight_decay=0.05)
    optimizer = make_optimizer(net, config)
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters() if p.requires_grad}
    net.train()
    x = _input(net, 4)
    for step, stitch in enumerate(_some(net.trained_stitches(), 3) * 2):
        optimizer.zero_grad(set_to_none=True)
        net(x + step, stitch=stitch).square().mean().backward()
        optimizer.step()
    state = net.state_dict()
    changed = [n for n, t in frozen.items() if not torch.equal(state[n], t)]
    assert not changed, changed[:3]
    assert any(not torch.equal(dict(net.named_parameters())[n], t) for n, t in trained.items())


def test_checkpoint_and_saved_network_hold_only_trained_tensors(case, tmp_path):
    _, _, _, net = case
    state = saved_state(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    if net.adapter_config.frozen_anchors:
        # What trained, plus each stitching layer's least-squares W0 (no source rebuilds it).
        w0 = {n for n in state if n.startswith("layers.") and n.endswith(".weight")}
        assert set(state) == trainable | w0
        assert not any(n.startswith("anchors.") and "lora_" not in n for n in state)
    else:
        assert set(state) == set(net.state_dict())
    snnet.save(net, tmp_path / "net")
    config = network_config(net)
    assert config["adapters"] == net.adapter_config.to_json() and config["version"] == 2
    loaded = snnet.load(tmp_path / "net", anchors=FAMILIES[case[0]][0]())
    assert loaded.adapter_config == net.adapter_config
    x = _input(net)
    with torch.no_grad():
        for stitch in net.stitches:
            assert torch.equal(loaded.eval()(x, stitch=stitch), net(x, stitch=stitch)), stitch


class _Batches:
    """Deterministic random batches, sending this process SIGTERM after ``stop_after`` batches."""

    def __init__(self, net: snnet.SNNet, stop_after: int | None = None) -> None:
        self.size, self.stop_after, self.served = net.anchors[0].input_size, stop_after, 0

    def __len__(self) -> int:
        return 3

    def __call__(self, epoch: int, start: int = 0):
        for i in range(start, 3):
            g = torch.Generator().manual_seed(100 * epoch + i)
            self.served += 1
            if self.served == self.stop_after:
                os.kill(os.getpid(), signal.SIGTERM)
            yield torch.randn(4, *self.size, generator=g), torch.randint(0, 10, (4,), generator=g)


def test_resume_is_exact(case, tmp_path):
    family, mode, _, _ = case
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup=1)
    whole = train_loop(
        _build(family, mode)[1], _Batches(_build(family, mode)[1]), config, progress=False
    )
    run = tmp_path / "run"
    net = _build(family, mode)[1]
    first = train_loop(net, _Batches(net, stop_after=4), config, run_dir=run, progress=False)
    assert first.interrupted and first.steps == 4
    if net.adapter_config.frozen_anchors:
        assert all(n.startswith("layers.") or "lora_" in n for n in load_checkpoint(run)["model"])
    net = _build(family, mode)[1]
    rest = train_loop(net, _Batches(net), config, run_dir=run, resume=True, progress=False)
    assert rest.losses == whole.losses and rest.stitches == whole.stitches
    for (n, a), b in zip(
        rest.net.state_dict().items(), whole.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), n


def test_least_squares_sets_w0_and_zeroes_the_update():
    models = FAMILIES["vit"][0]()
    full, low = snnet.SNNet(models), snnet.SNNet(models, stitch_rank=2)
    _trained(low)
    x = _input(full, 8)
    init_least_squares(full, x)
    init_least_squares(low, x)
    for key, layer in low.layers.items():
        assert torch.equal(layer.weight, full.layers[key].weight)
        assert torch.equal(layer.bias, full.layers[key].bias)
        assert not layer.lora_B.any()


def test_a_default_network_saves_no_adapter_options(tmp_path):
    net = snnet.SNNet(FAMILIES["vit"][0]())
    config = network_config(net)
    assert "adapters" not in config and "anchor_sha256" not in config
    assert set(saved_state(net)) == set(net.state_dict())
    assert all(layer.rank == 0 for layer in net.layers.values())
    assert sorted(net.parameter_groups()) == ["anchors", "layers"]


def test_peft_mode_gives_every_cut_its_own_layer():
    models = FAMILIES["vit"][0]()
    plain, peft = snnet.SNNet(models), snnet.SNNet(models, lora_rank=2)
    assert len(peft.stitches) == len(plain.stitches)
    assert len(peft.layers) == sum(len(p) for p in peft.space.positions.values())
    assert len(peft.layers) > len(plain.layers)  # paired windows shared layers across cuts
    assert peft.space.config.layer_per_position
    # ... and still share their weights by window, as SN-Net does: only the biases are per cut.
    weights = {id(layer.weight) for layer in peft.layers.values()}
    biases = {id(layer.bias) for layer in peft.layers.values()}
    assert len(weights) == len(plain.layers) and len(biases) == len(peft.layers)


def test_least_squares_shares_the_mean_weight_and_keeps_each_cuts_bias():
    models = FAMILIES["vit"][0]()
    per_cut = snnet.SNNet(models, layer_per_position=True)
    peft = snnet.SNNet(models, lora_rank=2)
    x = _input(peft, 8)
    init_least_squares(per_cut, x)
    init_least_squares(peft, x)
    for key, layer in peft.layers.items():
        own = per_cut.layers[key]
        assert torch.equal(layer.bias, own.bias)
        sharing = [k for k, o in peft.layers.items() if o.weight is layer.weight]
        mean = torch.stack([per_cut.layers[k].weight for k in sharing]).mean(dim=0)
        torch.testing.assert_close(layer.weight, mean, rtol=0, atol=1e-6)


def test_loading_onto_other_anchors_is_refused(tmp_path):
    models = FAMILIES["vit"][0]()
    snnet.save(snnet.SNNet(models, lora_rank=2), tmp_path / "net")
    other = FAMILIES["vit"][0]()
    with torch.no_grad():
        other[1].model.blocks[0].attn.qkv.weight.add_(1e-3)
    with pytest.raises(ValueError, match="trained on other weights"):
        snnet.load(tmp_path / "net", anchors=other)


def test_anchors_carry_one_lora_only():
    models = FAMILIES["vit"][0]()
    snnet.SNNet(models, lora_rank=2)
    with pytest.raises(ValueError, match="already carries LoRA"):
        snnet.SNNet(models, lora_rank=2)


def test_a_family_without_attention_says_what_trains():
    with pytest.warns(UserWarning, match="only the stitching layers"):
        snnet.SNNet(FAMILIES["resnet"][0](), lora_rank=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_rank": -1}, ">= 0"),
        ({"lora_alpha": 2.0}, "set lora_rank"),
        ({"stitch_alpha": 2.0}, "set stitch_rank"),
        ({"lora_rank": 2, "lora_targets": "mlp"}, "lora_targets must be one of"),
    ],
)
def test_bad_options_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        snnet.SNNet(FAMILIES["vit"][0](), **kwargs)


def test_cli_builds_saves_and_reloads_the_options(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "zoo=fmnist_vit_s",
            "zoo=fmnist_vit_m",
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--ls-init",
            "16",
            "--quiet",
            "--stitch-rank",
            "2",
            "--lora-rank",
            "2",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "attn+mlp",
        ]
    )
    assert code == 0, capsys.readouterr().err
    net = snnet.load(out).eval()  # the zoo anchors are rebuilt from their shipped weights
    stitch = next(s for s in net.stitches if s.hops)
    assert main(["export", str(out), "--stitch", str(stitch), "--out", str(tmp_path / "s")]) == 0
    x = _input(net)
    with torch.no_grad():
        torch.testing.assert_close(
            load_stitch(tmp_path / "s")(x), net(x, stitch=stitch), rtol=1e-6, atol=1e-6
        )
    assert main(["evaluate", str(out), "--max-images", "64"]) == 0
    assert net.adapter_config.to_json() == {
        "stitch_rank": 2,
        "stitch_alpha": None,
        "lora_rank": 2,
        "lora_alpha": 8.0,
        "lora_targets": "attn+mlp",
    }
