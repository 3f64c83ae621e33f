"""Training: the loop learns, resumes exactly, leaves idle parameters alone, and runs under DDP."""

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnet
from families import FAMILIES, vit_family
from snnet.cli import main
from snnet.data import Augment, DataConfig, EpochBatches, ImageSet, fashion_mnist
from snnet.train import TrainConfig, fit, get_lr, train_loop
from snnet.train.bands import flops_groups
from snnet.train.checkpoint import Diverged, StepLog, load_checkpoint
from snnet.train.sampling import StitchSampler
from snnet.train.step import network_groups

ROOT = Path(__file__).resolve().parents[1]


def tiny_fmnist_net(*, drop_rate: float = 0.0) -> snnet.SNNet:
    """Two random-init ViTs (widths 16, 32; depth 4) on 1×28×28 Fashion-MNIST images."""
    torch.manual_seed(0)
    anchors = [
        snnet.timm_anchor(
            "vit_tiny_patch16_224",
            img_size=28,
            patch_size=7,
            in_chans=1,
            embed_dim=width,
            depth=4,
            num_heads=2,
            num_classes=10,
            drop_rate=drop_rate,
        )
        for width in (16, 32)
    ]
    return snnet.SNNet(anchors)


@pytest.fixture(scope="module")
def fmnist_slice() -> ImageSet:
    return fashion_mnist("test").subset(range(512))


def state_equal(a: snnet.SNNet, b: snnet.SNNet) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the loop learns -----------------------------------------------------------------------------


def test_fit_loss_goes_down_and_saves_a_loadable_network(fmnist_slice, tmp_path):
    net = tiny_fmnist_net()
    config = TrainConfig(epochs=4, batch_size=32, lr=3e-3, anchor_lr_scale=1.0, warmup=4)
    result = fit(net, fmnist_slice, config, run_dir=tmp_path / "run", ls_init=64, progress=False)
    assert result.steps == 4 * (512 // 32) and not result.interrupted
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < first - 0.3, (first, last)
    assert len(set(result.stitches)) > 5  # many stitches trained, not one
    loaded = snnet.load(tmp_path / "run" / "model")
    assert state_equal(loaded, net)
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["step"] == result.steps and record["epoch"] == 4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains(family):
    net = snnet.SNNet(FAMILIES[family][0]())
    g = torch.Generator().manual_seed(0)
    size = net.anchors[0].input_size
    data = [(torch.randn(4, *size, generator=g), torch.randint(0, 10, (4,), generator=g))] * 4
    before = copy.deepcopy(net.state_dict())
    result = train_loop(net, data, TrainConfig(epochs=1, sampling="grouped"), progress=False)
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())


# -- resume ---------------------------------------------------------------------------------------


class SignalAfter:
    """Epoch batches that send this process SIGTERM after ``k`` batches in all (like a scheduler
    pre-empting the job mid-epoch)."""

    def __init__(self, batches: EpochBatches, k: int) -> None:
        self.batches, self.k, self.served = batches, k, 0
        self.images, self.order = batches.images, batches.order  # as EpochBatches has them
        self.num_workers = batches.num_workers

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, epoch: int, start: int = 0):
        for batch in self.batches(epoch, start):
            self.served += 1
            if self.served == self.k:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def stopped_run(batches: EpochBatches, config: TrainConfig, run: Path, k: int = 11):
    """A run of ``config`` from a fresh tiny network (dropout 0.1) that SIGTERM stops after ``k``
    steps, checkpointed in ``run``."""
    first = train_loop(
        tiny_fmnist_net(drop_rate=0.1), SignalAfter(batches, k), config, run_dir=run, progress=False
    )
    assert first.interrupted == signal.SIGTERM and first.steps == k  # stopped at the boundary
    return first


def test_resume_after_sigterm_equals_an_uninterrupted_run(fmnist_slice, tmp_path):
    # dropout makes the result depend on the restored RNG state, AdamW on the optimizer state,
    # the cosine schedule on the step, the batches on the epoch and position.
    config = TrainConfig(
        epochs=2, batch_size=64, lr=3e-3, anchor_lr_scale=0.5, warmup=2, sampling="grouped"
    )
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)  # 8 batches per epoch

    whole = train_loop(tiny_fmnist_net(drop_rate=0.1), batches, config, progress=False)

    run = tmp_path / "run"
    stopped_run(batches, config, run)
    state = load_checkpoint(run)
    assert (state["step"], state["epoch"], state["position"]) == (11, 1, 3)

    other_init = tiny_fmnist_net(drop_rate=0.1)
    with torch.no_grad():
        for p in other_init.parameters():
            p.add_(1.0)  # the checkpoint, not the construction, must decide the weights
    rest = train_loop(other_init, batches, config, run_dir=run, resume=True, progress=False)
    assert rest.steps == whole.steps == 16 and not rest.interrupted
    assert rest.losses == whole.losses and rest.stitches == whole.stitches
    assert state_equal(rest.net, whole.net)
    assert state_equal(snnet.load(run / "model"), whole.net)


# -- idle parameters ------------------------------------------------------------------------------


class Snapshots:
    """A list of batches that records every parameter each time the loop fetches a batch, i.e.
    before each step."""

    def __init__(self, net: snnet.SNNet, batches: list) -> None:
        self.net, self.batches, self.before = net, batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.before.append({n: p.detach().clone() for n, p in self.net.named_parameters()})
            yield batch


def test_parameters_a_step_does_not_run_stay_bit_identical():
    net = snnet.SNNet(vit_family())
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))]
    data = Snapshots(net, batches * 12)
    config = TrainConfig(epochs=1, lr=1e-2, weight_decay=0.5, anchor_lr_scale=1.0, warmup=0)
    result = train_loop(net, data, config, progress=False)
    data.before.append({n: p.detach().clone() for n, p in net.named_parameters()})
    assert len(data.before) == len(result.stitches) + 1 == 13
    names = {id(p): n for n, p in net.named_parameters()}
    idle_with_momentum = 0
    for t, stitch in enumerate(result.stitches):
        ran = {names[id(p)] for p in net.parameters_of(snnet.Stitch.parse(stitch))}
        seen_before = {
            names[id(p)]
            for s in result.stitches[:t]
            for p in net.parameters_of(snnet.Stitch.parse(s))
        }
        before, after = data.before[t], data.before[t + 1]
        for n in before:
            if n in ran:
                continue
            assert torch.equal(before[n], after[n]), (t, stitch, n)
            idle_with_momentum += n in seen_before
        assert any(not torch.equal(before[n], after[n]) for n in ran), (t, stitch)
    # The check has teeth: idle parameters with AdamW state (momentum, decay) were present...
    assert idle_with_momentum > 50
    # ...and such a parameter does move when its gradient is zero instead of None.
    optimizer = torch.optim.AdamW(
        [p := torch.nn.Parameter(torch.ones(3))], lr=0.1, weight_decay=0.5
    )
    p.grad = torch.ones(3)
    optimizer.step()
    before = p.detach().clone()
    optimizer.zero_grad(set_to_none=False)
    optimizer.step()
    assert not torch.equal(before, p.detach())


def test_weight_decay_groups_keep_the_anchors_no_weight_decay_sets():
    net = snnet.SNNet(vit_family())
    groups = {g["name"]: g for g in network_groups(net, TrainConfig(anchor_lr_scale=0.1))}
    names = {id(p): n for n, p in net.named_parameters()}
    no_decay = {
        names[id(p)] for k in ("anchors/no_decay", "layers/no_decay") for p in groups[k]["params"]
    }
    assert "anchors.0.model.pos_embed" in no_decay and "anchors.2.model.cls_token" in no_decay
    assert "anchors.1.model.blocks.0.norm1.weight" in no_decay
    assert "layers.a0_a1_0.bias" in no_decay and "layers.a0_a1_0.weight" not in no_decay
    assert groups["anchors/decay"]["lr_scale"] == 0.1 and groups["layers/decay"]["lr_scale"] == 1.0
    assert groups["anchors/no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(net.parameters()))


# -- schedule and sampling ------------------------------------------------------------------------


def test_lr_schedule_warms_up_then_follows_a_cosine():
    lr = lambda step: get_lr(step, lr=1.0, min_lr=0.1, warmup=4, total=104)  # noqa: E731
    assert [lr(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr(4) == pytest.approx(1.0)
    assert lr(54) == pytest.approx(0.55)  # half way: (lr + min_lr) / 2
    assert lr(104) == lr(500) == pytest.approx(0.1)
    after = [lr(s) for s in range(4, 105)]
    assert all(a >= b for a, b in itertools.pairwise(after))


def test_grouped_sampler_visits_every_group_equally_often():
    net = snnet.SNNet(vit_family())
    costs = {s: net.cost(s).gmacs for s in net.stitches}
    gap = (max(costs.values()) - min(costs.values())) / 4
    groups = flops_groups(costs, gap)
    assert len(groups) >= 4 and len({len(g) for g in groups}) > 1  # bands of different sizes
    sampler = StitchSampler(net.stitches, costs, policy="grouped", gap=gap, seed=0)
    group_of = {s: i for i, g in enumerate(groups) for s in g}
    draws = 4000
    visits = [0] * len(groups)
    for _ in range(draws):
        visits[group_of[sampler.draw()[0]]] += 1
    expected = draws / len(groups)
    assert all(abs(v - expected) < 0.15 * expected for v in visits), visits
    uniform = StitchSampler(net.stitches, costs, policy="uniform", seed=0)
    small = [0] * len(groups)
    for _ in range(draws):
        small[group_of[uniform.draw()[0]]] += 1
    assert small != visits  # uniform follows band sizes instead


def test_rank_sampling_modes():
    net = snnet.SNNet(vit_family())
    costs = {s: net.cost(s).gmacs for s in net.stitches}
    make = lambda mode: StitchSampler(net.stitches, costs, rank_sampling=mode, world_size=4, seed=3)  # noqa: E731
    same, independent, balanced = make("same"), make("independent"), make("balanced")
    groups = balanced.groups
    group_of = {s: i for i, g in enumerate(groups) for s in g}
    differ = 0
    for _ in range(200):
        assert len(set(same.draw())) == 1
        differ += len(set(independent.draw())) > 1
        draw = balanced.draw()
        assert len({group_of[s] for s in draw}) == 1
    assert differ > 150
    state = balanced.state_dict()
    again = [balanced.draw() for _ in range(5)]
    balanced.load_state_dict(state)
    assert [balanced.draw() for _ in range(5)] == again


# -- configuration and errors ---------------------------------------------------------------------


def test_config_json_round_trip_and_unknown_keys():
    config = TrainConfig(epochs=3, lr=5e-4, sampling="grouped", gap=0.5, steps=100)
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['lrr'\]"):
        TrainConfig.from_json({"lrr": 1e-3})
    with pytest.raises(TypeError):
        TrainConfig(3)  # keyword-only


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1e-3}, "lr must be positive"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'; choose one of adamw, sgd"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"sampling": "random"}, "unknown sampling 'random'"),
        ({"rank_sampling": "all"}, "unknown rank_sampling 'all'"),
        ({"label_smoothing": 1.0}, "label_smoothing must lie in"),
        ({"gap": 0.0}, "gap must be positive"),
        ({"amp": "fp8"}, "unknown amp 'fp8'"),
    ],
)
def test_bad_config_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_resume_with_other_options_is_an_error(fmnist_slice, tmp_path):
    batches = EpochBatches(fmnist_slice, 128)
    config = TrainConfig(epochs=1, steps=1, batch_size=128)
    train_loop(tiny_fmnist_net(), batches, config, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint: pass --resume"):
        train_loop(tiny_fmnist_net(), batches, config, run_dir=tmp_path, progress=False)
    other = TrainConfig(epochs=1, steps=1, batch_size=128, lr=1.0)
    with pytest.raises(ValueError, match=r"written with lr=0.001 \(now 1.0\)"):
        train_loop(tiny_fmnist_net(), batches, other, run_dir=tmp_path, resume=True, progress=False)


def _cli(*args: str) -> list[str]:
    return ["train", "deit_tiny_patch16_224", "deit_small_patch16_224", *args]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-0.1"], "lr must be positive, got -0.1"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--resume"], "--resume: no checkpoint at"),
        (["--ls-init", "-5"], "--ls-init must be >= 0"),
    ],
)
def test_cli_bad_arguments_print_one_clear_line(args, message, tmp_path, capsys):
    code = main(_cli("--out", str(tmp_path / "run"), *args))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_unknown_optimizer_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_cli("--out", str(tmp_path), "--optimizer", "adam"))
    assert "invalid choice: 'adam'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_an_image_folder_and_resumes(fmnist_slice, tmp_path, capsys):
    from snnet.data import write_image_folder

    folder = write_image_folder(fmnist_slice, tmp_path / "images", limit=48)
    out = tmp_path / "run"
    family = ["vit_tiny_patch16_224", "vit_small_patch16_224", "--img-size", "32"]
    args = [*family, "--num-classes", "10", "--data", str(folder), "--out", str(out)]
    args += ["--steps", "3", "--batch-size", "8", "--ls-init", "16", "--quiet"]
    assert main(["train", *args]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    net = snnet.load(out / "model")
    assert len(net.stitches) == 2 + 34
    assert load_checkpoint(out)["step"] == 3
    # The same command again needs --resume; with it, the finished run has nothing left to do.
    assert main(["train", *args]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train", *args, "--resume"]) == 0
    assert state_equal(snnet.load(out / "model"), net)
    # A family that does not match the data is a clear error, not a shape crash.
    assert main(["train", *family, "--out", str(tmp_path / "other"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "holds 1×28×28 images in memory" in err and "takes 3×32×32" in err, err
    assert "pass --data PATH" in err


def test_fmnist_preset_is_the_zoo_family_and_reloads_from_its_sources(tmp_path):
    from snnet import zoo
    from snnet.presets import PRESETS
    from snnet.sources import from_source

    names, _ = PRESETS["fmnist"]
    assert names == tuple(f"zoo={n}" for n in zoo.demo_family_names())
    anchors = [
        from_source({"kind": "zoo", "name": n}, pretrained=False) for n in zoo.demo_family_names()
    ]
    net = snnet.SNNet(anchors)
    assert net.anchors[0].input_size == (1, 28, 28)
    snnet.save(net, tmp_path / "model")
    assert state_equal(snnet.load(tmp_path / "model"), net)  # what evaluate / export do with a run


# -- several processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical_and_averages_over_users(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        grads = json.loads((tmp_path / f"grad-rank{rank}.json").read_text())
        assert grads["max_error"] < 1e-6 and grads["checked"] > 50 and grads["shared"] > 10
        assert grads["none_mismatch"] == []
        assert "anchors.2.model.head.weight" in grads["idle_none"]  # no rank ran anchor 2
    initial = snnet.SNNet(vit_family()).state_dict()
    for mode in ("independent", "balanced", "same"):
        w0 = torch.load(tmp_path / f"{mode}-rank0.pt")
        w1 = torch.load(tmp_path / f"{mode}-rank1.pt")
        assert all(torch.equal(w0[k], w1[k]) for k in w0), mode
        assert any(not torch.equal(w0[k], initial[k]) for k in w0), mode  # it trained
        s0, s1 = (
            json.loads((tmp_path / f"{mode}-rank{r}.json").read_text())["stitches"]
            for r in range(2)
        )
        assert len(s0) == len(s1) == 4
        if mode == "same":
            assert s0 == s1
        if mode == "independent":
            assert s0 != s1
        assert load_checkpoint(tmp_path / mode)["world_size"] == 2
    # PEFT: the ranks agree, the frozen anchors' own weights stay as they were, the rest trained
    peft = snnet.SNNet(vit_family(), lora_rank=2, stitch_rank=2)
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    initial = peft.state_dict()
    w0, w1 = (torch.load(tmp_path / f"peft-rank{r}.pt") for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    frozen = [k for k in w0 if k.startswith("anchors.") and k not in trainable]
    assert frozen and all(torch.equal(w0[k], initial[k]) for k in frozen)
    assert any(not torch.equal(w0[k], initial[k]) for k in trainable if "lora" in k)
    assert any(not torch.equal(w0[k], initial[k]) for k in trainable if "lora" not in k)


# -- reliability: kills, bad checkpoints, bad numbers ------------------------------------------------

KILL_DURING_FINAL_SAVE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
import snnet.train
import snnet.train.checkpoint
from snnet.data import fashion_mnist
from test_train import tiny_fmnist_net

real_save, calls = snnet.train.checkpoint.save, []

def save_then_die(net, path):
    calls.append(path)
    if len(calls) == {kill_at}:  # the final model save: killed halfway through writing it
        real_save(net, path.with_name("model.partial"))
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(net, path)

snnet.train.checkpoint.save = save_then_die
test = fashion_mnist("test")
data = test.subset(range(128))
config = snnet.train.TrainConfig(epochs=1, batch_size=32, lr=3e-3, warmup=1)
snnet.train.fit(tiny_fmnist_net(), data, config, run_dir={run!r}, ls_init=32, progress=False)
"""


def test_a_kill_during_the_final_model_save_never_leaves_an_older_model(fmnist_slice, tmp_path):
    data = fmnist_slice.subset(range(128))
    config = TrainConfig(epochs=1, batch_size=32, lr=3e-3, warmup=1)
    whole = fit(
        tiny_fmnist_net(), data, config, run_dir=tmp_path / "whole", ls_init=32, progress=False
    )
    run = tmp_path / "run"
    code = KILL_DURING_FINAL_SAVE.format(tests=str(ROOT / "tests"), kill_at=2, run=str(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    # Whatever the checkpoint says, resuming must end with the trained network in model/.
    rest = fit(tiny_fmnist_net(), data, config, run_dir=run, resume=True, progress=False)
    assert rest.steps == whole.steps == 4
    assert state_equal(snnet.load(run / "model"), whole.net)
    assert load_checkpoint(run)["step"] == 4


class RunsCode:
    """Pickled as a call to os.system: loading it without weights_only would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["truncated", "random", "missing_keys", "malicious"])
def test_a_bad_checkpoint_on_resume_is_one_line_naming_the_fix(kind, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    if kind in ("truncated", "missing_keys"):
        torch.save({"format": "snnet-train", "version": 1, "step": 3}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:100])
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    else:
        torch.save({"format": "snnet-train", "config": RunsCode(marker)}, path)
    before = path.read_bytes()
    code = main(["train", "fmnist", "--out", str(run), "--resume", "--quiet", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "start a new run in another --out" in err, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not marker.exists()  # nothing in the file ran
    assert path.read_bytes() == before and sorted(p.name for p in run.iterdir()) == [path.name]


def test_cli_refused_workers_leave_no_trace_so_the_corrected_command_trains(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "fmnist", "--out", str(out), "--steps", "1", "--batch-size", "8"]
    args += ["--ls-init", "8", "--quiet"]
    assert main([*args, "--workers", "-1"]) == 2
    assert "--workers must be >= 0" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--workers", "0"]) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert load_checkpoint(out)["step"] == 1


def test_cli_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    for target in (out, out / "run"):
        code = main(["train", "fmnist", "--out", str(target), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"{out} is a file, not a directory" in err, err
    assert out.read_text() == "keep me"


def test_infinite_numbers_are_refused_by_the_config():
    for name in ("lr", "min_lr", "weight_decay", "clip", "anchor_lr_scale", "gap"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            TrainConfig(**{name: float("inf")})


def test_a_non_finite_loss_stops_the_run_and_nothing_non_finite_is_saved(tmp_path):
    g = torch.Generator().manual_seed(0)
    good = (torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g))
    bad = (torch.full((4, 1, 28, 28), float("nan")), good[1])
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"the loss became \[nan\] at step 3 .*lower --lr"):
        train_loop(
            tiny_fmnist_net(), [good, good, bad, good], TrainConfig(), run_dir=run, progress=False
        )
    saved = snnet.load(run / "model")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert load_checkpoint(run)["step"] == 0
    # Weights that are already non-finite are never written either.
    net = tiny_fmnist_net()
    with torch.no_grad():
        next(iter(net.layers.values())).weight.view(-1)[0] = float("inf")
    with pytest.raises(Diverged, match=r"parameters .* are not finite at step 0"):
        train_loop(net, [good], TrainConfig(), run_dir=tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / "model").exists()


def test_steps_csv_of_a_resumed_run_equals_an_uninterrupted_runs(fmnist_slice, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup=2, steps=6)
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)
    train_loop(tiny_fmnist_net(), batches, config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    train_loop(tiny_fmnist_net(), SignalAfter(batches, 4), config, run_dir=run, progress=False)
    with open(run / "steps.csv", "a") as f:  # a step after the checkpoint, as a kill leaves it
        f.write("5,0,0,9.0,0.001\n")
    assert "log" not in load_checkpoint(run)  # bounded: no per-step history in the checkpoint
    rest = train_loop(tiny_fmnist_net(), batches, config, run_dir=run, resume=True, progress=False)
    whole = (tmp_path / "whole" / "steps.csv").read_text()
    assert (run / "steps.csv").read_text() == whole
    assert len(whole.splitlines()) == 1 + 6 and whole.startswith("step,rank,stitch,loss,lr\n")
    assert rest.losses == StepLog.read(run)[0] and len(rest.losses) == 6


def test_every_config_field_is_a_train_option_with_its_default_and_help():
    from dataclasses import fields

    from snnet.cli import build_parser

    train = build_parser("train")._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in train._actions}
    for f in fields(TrainConfig):
        action = options[f.name]
        assert action.option_strings == [f"--{f.name.replace('_', '-')}"]
        assert action.default == f.default and f.metadata["help"] in action.help.replace("%%", "%")
    assert options["optimizer"].choices == ("adamw", "sgd") and options["lr"].type is float
    assert options["steps"].type is int  # int | None: the option takes an int, default None


# -- reproducible by default ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def augmented_folder(fmnist_slice, tmp_path_factory):
    """64 Fashion-MNIST PNGs read with timm's augmenting train transform (random resized crop and
    flip: timm draws them from Python's ``random``, torchvision from torch's generator)."""
    from snnet.data import image_folder, write_image_folder

    root = write_image_folder(fmnist_slice, tmp_path_factory.mktemp("images"), limit=64)
    return image_folder(root, DataConfig.fashion_mnist(), augment=Augment("light", hflip=0.5))


def test_two_identical_image_folder_runs_give_identical_weights(augmented_folder, tmp_path):
    import random

    config = TrainConfig(epochs=1, batch_size=16, lr=3e-3, warmup=1, steps=3)
    runs = []
    for name in ("a", "b"):
        random.seed(len(name) * 1234 if name == "a" else 99)  # whatever state the caller left
        result = fit(tiny_fmnist_net(), augmented_folder, config, ls_init=16, progress=False)
        runs.append(result)
    assert runs[0].losses == runs[1].losses
    assert state_equal(runs[0].net, runs[1].net)


def test_a_resumed_augmented_image_folder_run_with_workers_equals_an_uninterrupted_one(
    augmented_folder, tmp_path
):
    # The uninterrupted run loads in the main process; the interrupted one in 2 workers that
    # restart mid-epoch on resume: an image's augmentation must depend on neither.
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-3, warmup=1)  # 4 steps per epoch
    whole = train_loop(
        tiny_fmnist_net(), EpochBatches(augmented_folder, 16), config, progress=False
    )
    batches = EpochBatches(augmented_folder, 16, num_workers=2)
    run = tmp_path / "run"
    first = train_loop(
        tiny_fmnist_net(), SignalAfter(batches, 3), config, run_dir=run, progress=False
    )
    assert first.interrupted and first.steps == 3
    rest = train_loop(tiny_fmnist_net(), batches, config, run_dir=run, resume=True, progress=False)
    assert rest.steps == whole.steps == 8
    assert rest.losses == whole.losses
    assert state_equal(rest.net, whole.net)


def test_an_images_augmentation_depends_on_seed_epoch_and_index_only(augmented_folder):
    a = EpochBatches(augmented_folder, 16, seed=3)
    x0 = next(iter(a(epoch=1, start=2)))[0]
    torch.manual_seed(123)  # the caller's generators do not matter, and are not consumed
    state = torch.get_rng_state()
    x1 = list(EpochBatches(augmented_folder, 16, seed=3, num_workers=2)(epoch=1))[2][0]
    assert torch.equal(x0, x1)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(x0, next(iter(a(epoch=2, start=2)))[0])  # another epoch, new crops


# -- validation during training ---------------------------------------------------------------------


def test_validation_changes_no_weight_and_writes_val_csv_and_tensorboard(fmnist_slice, tmp_path):
    from snnet.train.monitor import ValLog

    val = fmnist_slice.subset(range(100))
    config = TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup=2, steps=12)  # 8 per epoch
    plain = fit(tiny_fmnist_net(drop_rate=0.1), fmnist_slice, config, ls_init=32, progress=False)
    run = tmp_path / "run"
    watched = fit(
        tiny_fmnist_net(drop_rate=0.1),
        fmnist_slice,
        config,
        ls_init=32,
        run_dir=run,
        val=val,
        val_images=50,
        progress=False,
    )
    assert watched.losses == plain.losses and state_equal(watched.net, plain.net)
    rows = ValLog.read(run)
    # the anchors plus three stitches, after epoch 1 (step 8) and at the end (step 12)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 8)] * 5 + [(1, 12)] * 5
    assert [r["stitch"] for r in rows[:2]] == ["0", "1"]
    assert all(0 <= r["top1"] <= 100 and r["loss"] > 0 for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tb"))
    board.Reload()
    assert [e.value for e in board.Scalars("train/loss")] == pytest.approx(watched.losses)
    assert [e.step for e in board.Scalars("train/lr")] == list(range(1, 13))
    assert [(e.step, e.value) for e in board.Scalars(f"val/top1/{rows[-1]['stitch']}")] == [
        (8, pytest.approx(rows[4]["top1"])),
        (12, pytest.approx(rows[-1]["top1"])),
    ]
    # a stitch scored alone, the same way, gives the same top-1
    net = watched.net.eval()
    with torch.no_grad():
        sample = snnet.train.monitor.Validation(net, val, max_images=50).images
        images, labels = sample.batch(range(50))
        top1 = 100 * float((net(images, stitch=rows[-1]["stitch"]).argmax(-1) == labels).sum()) / 50
    assert top1 == pytest.approx(rows[-1]["top1"])


def test_val_csv_of_a_resumed_run_equals_an_uninterrupted_runs(fmnist_slice, tmp_path):
    from snnet.train.monitor import Validation

    val_set = fmnist_slice.subset(range(64))
    config = TrainConfig(epochs=3, batch_size=128, lr=3e-3, warmup=1)  # 4 steps per epoch
    batches = EpochBatches(fmnist_slice, 128, seed=config.seed)

    def val(net):
        return Validation(net, val_set, max_images=None)

    net = tiny_fmnist_net()
    train_loop(net, batches, config, run_dir=tmp_path / "whole", val=val(net), progress=False)
    run, net = tmp_path / "run", tiny_fmnist_net()
    train_loop(net, SignalAfter(batches, 6), config, run_dir=run, val=val(net), progress=False)
    with open(run / "val.csv", "a") as f:  # a validation after the checkpoint, as a kill leaves it
        f.write("2,8,0,50.0,1.0\n")
    net = tiny_fmnist_net()
    train_loop(net, batches, config, run_dir=run, resume=True, val=val(net), progress=False)
    whole = (tmp_path / "whole" / "val.csv").read_text()
    assert (run / "val.csv").read_text() == whole
    assert len(whole.splitlines()) == 1 + 3 * 5  # three epochs, anchors and three stitches
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tb"))  # two writers, one after the other: no step twice
    board.Reload()
    assert sorted(e.step for e in board.Scalars("train/loss")) == list(range(1, 13))


def test_validation_images_are_a_fixed_sample_of_every_class(fmnist_slice):
    from snnet.train.monitor import Validation

    net = tiny_fmnist_net()

    def picked(seed: int) -> torch.Tensor:
        images = Validation(net, fmnist_slice, max_images=100, seed=seed).images
        return images.memory.flatten(1).sum(1)  # which images: their pixel sums

    targets = Validation(net, fmnist_slice, max_images=100, seed=1).images.targets
    share = torch.bincount(fmnist_slice.targets, minlength=10) * 100 / len(fmnist_slice)
    assert (torch.bincount(targets, minlength=10) - share).abs().max() < 1
    assert torch.equal(picked(1), picked(1)) and not torch.equal(picked(1), picked(2))


def test_bad_validation_options_are_clear_errors(fmnist_slice):
    net = tiny_fmnist_net()
    with pytest.raises(ValueError, match="--val-every must be at least 1"):
        fit(net, fmnist_slice, TrainConfig(), val=fmnist_slice, val_every=0, progress=False)
    with pytest.raises(ValueError, match="Fashion-MNIST test is empty"):
        empty = fmnist_slice.subset([])
        fit(net, fmnist_slice, TrainConfig(), val=empty, progress=False)


# -- soft distillation from the anchors and anchor-path sampling -----------------------------------


def test_soft_distillation_loss_on_hand_made_logits():
    from snnet.train.step import loss_fn

    s = torch.tensor([[0.0, 0.0]])  # student: p = (1/2, 1/2)
    t = torch.tensor([[2 * math.log(3.0), 0.0]])  # teacher at T = 2: p = (3/4, 1/4)
    y = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    config = TrainConfig(distill="end", distill_weight=0.5, label_smoothing=0.0)
    expected = 0.5 * math.log(2.0) + 0.5 * 4.0 * kl  # (1-w)·CE + w·T²·KL
    assert loss_fn(s, y, t, config).item() == pytest.approx(expected, rel=1e-6)
    # the same teacher logits under distill="none" (an external teacher) distil hard: its argmax
    hard = TrainConfig(distill_weight=0.5, label_smoothing=0.0)
    assert loss_fn(s, y, t, hard).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # a teacher that agrees with the student adds nothing; no teacher: the plain cross-entropy
    assert loss_fn(s, y, s, config).item() == pytest.approx(0.5 * math.log(2.0), rel=1e-6)
    assert loss_fn(s, y, None, config).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_each_stitch_is_taught_by_its_end_anchor_or_the_largest():
    from snnet.stitch import Stitch
    from snnet.train.teachers import teacher_anchor

    end, largest = TrainConfig(distill="end"), TrainConfig(distill="largest")
    assert teacher_anchor(Stitch.parse("0:3-1:4"), end, 3) == 1
    assert teacher_anchor(Stitch.parse("0:3-1:4:7-2:8"), end, 3) == 2
    assert teacher_anchor(Stitch.anchor(0), end, 3) == 0  # an anchor: its own starting self
    assert teacher_anchor(Stitch.parse("0:3-1:4"), largest, 3) == 2
    assert teacher_anchor(Stitch.anchor(0), largest, 3) == 2


def test_recipe_options_default_to_off():
    config = TrainConfig()
    assert (config.distill, config.distill_temperature, config.anchor_probability) == (
        "none",
        2.0,
        None,
    )
    # a checkpoint whose config does not name them resumes with these defaults (checked below)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distill": "teacher"}, "unknown distill 'teacher'"),
        ({"distill_temperature": 0.0}, "distill_temperature must be positive"),
        ({"anchor_probability": 1.5}, "anchor_probability must lie in [0, 1]"),
    ],
)
def test_bad_recipe_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**kwargs)


def test_anchor_probability_sets_how_often_anchor_paths_train():
    net = tiny_fmnist_net()
    stitches = net.stitches
    anchors = [s for s in stitches if s.is_anchor]
    p, n = 0.25, 20_000
    sampler = StitchSampler(stitches, seed=3, anchor_probability=p)
    draws = [sampler.draw()[0] for _ in range(n)]
    # p anchor paths, plus the anchors among the policy's (uniform) draws
    expected = p + (1 - p) * len(anchors) / len(stitches)
    share = sum(s.is_anchor for s in draws) / n
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (share, expected)
    counts = [draws.count(a) for a in anchors]
    assert max(counts) - min(counts) < 0.1 * max(counts)  # anchors equally often
    assert len(set(draws)) == len(stitches)  # every stitch still trains
    always = StitchSampler(stitches, seed=3, anchor_probability=1.0)
    assert all(always.draw()[0].is_anchor for _ in range(200))


def test_no_anchor_probability_draws_nothing_extra():
    from snnet.train.sampling import sample_stitch

    stitches = tiny_fmnist_net().stitches
    sampler = StitchSampler(stitches, seed=5)
    rank0 = torch.Generator().manual_seed(5 + 1_000_003)  # rank 0's generator
    assert [sampler.draw()[0] for _ in range(300)] == [
        sample_stitch(stitches, rank0) for _ in range(300)
    ]


#: A short run of the demo's recipe: distillation from the end anchor, anchor paths, anchors slower.
DISTILL_RECIPE = {
    "epochs": 2,
    "batch_size": 64,
    "lr": 3e-3,
    "anchor_lr_scale": 0.5,
    "warmup": 2,
    "distill": "end",
    "anchor_probability": 0.3,
}


def test_resume_with_distillation_and_anchor_paths_equals_an_uninterrupted_run(
    fmnist_slice, tmp_path
):
    from safetensors.torch import load_file

    config = TrainConfig(**DISTILL_RECIPE)
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)
    start = tiny_fmnist_net(drop_rate=0.1)
    start_anchors = {k: v.clone() for k, v in start.anchors.state_dict().items()}
    whole = train_loop(start, batches, config, progress=False)
    plain = train_loop(
        tiny_fmnist_net(drop_rate=0.1),
        batches,
        TrainConfig(**{**config.to_json(), "distill": "none"}),
        progress=False,
    )
    assert whole.losses != plain.losses  # the teachers took part

    run = tmp_path / "run"
    stopped_run(batches, config, run)
    # the frozen teachers are not in the checkpoint; the anchors as they started are beside it
    assert load_checkpoint(run)["model"].keys() == whole.net.state_dict().keys()
    teacher = load_file(str(run / "teacher.safetensors"))
    assert teacher.keys() == start_anchors.keys()
    assert all(torch.equal(teacher[k], start_anchors[k]) for k in teacher)

    other_init = tiny_fmnist_net(drop_rate=0.1)
    with torch.no_grad():
        for p in other_init.parameters():
            p.add_(
                1.0
            )  # neither the construction nor the anchors at resume may decide the teachers
    rest = train_loop(other_init, batches, config, run_dir=run, resume=True, progress=False)
    assert rest.losses == whole.losses and rest.stitches == whole.stitches
    assert state_equal(rest.net, whole.net)


def test_cached_teachers_hold_the_teachers_logits_and_a_resumed_run_equals_a_whole_one(
    fmnist_slice, tmp_path, monkeypatch
):
    from snnet.train.teachers import TeacherLogits

    config = TrainConfig(**DISTILL_RECIPE, cache_teachers=True)
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)
    teachers = tiny_fmnist_net().eval()
    cache = TeacherLogits(teachers, batches, torch.device("cpu"), contextlib.nullcontext())
    with torch.no_grad():
        for position, (images, _) in enumerate(batches(1)):
            for a in range(len(teachers.anchors)):
                expected = teachers(images, stitch=snnet.Stitch.anchor(a))
                torch.testing.assert_close(cache(a, 1, position), expected, rtol=1e-5, atol=1e-5)

    reads = []
    read = TeacherLogits.__call__
    monkeypatch.setattr(TeacherLogits, "__call__", lambda c, *a: reads.append(a) or read(c, *a))
    whole = train_loop(tiny_fmnist_net(drop_rate=0.1), batches, config, progress=False)
    assert len(reads) == whole.steps  # every step read its teacher's logits from the cache
    uncached = dataclasses.replace(config, cache_teachers=False)
    live = train_loop(tiny_fmnist_net(drop_rate=0.1), batches, uncached, progress=False)
    assert whole.stitches == live.stitches
    assert whole.losses == pytest.approx(live.losses, rel=1e-4)

    run = tmp_path / "run"
    stopped_run(batches, config, run)
    rest = train_loop(
        tiny_fmnist_net(drop_rate=0.1), batches, config, run_dir=run, resume=True, progress=False
    )
    assert rest.losses == whole.losses and state_equal(rest.net, whole.net)

    shifted = fmnist_slice.augmented(Augment("light", hflip=0.5))
    with pytest.raises(ValueError, match="drop --cache-teachers"):
        train_loop(tiny_fmnist_net(), EpochBatches(shifted, 64), config, progress=False)


def test_distillation_from_the_anchors_and_an_external_teacher_exclude_each_other(fmnist_slice):
    batches = EpochBatches(fmnist_slice, 64)
    with pytest.raises(ValueError, match="drop the external teacher"):
        train_loop(
            tiny_fmnist_net(),
            batches,
            TrainConfig(distill="largest", steps=1),
            teacher=copy.deepcopy(tiny_fmnist_net().anchors[1]),
            progress=False,
        )


def test_a_checkpoint_without_newer_config_keys_resumes_with_their_defaults(fmnist_slice, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup=2, steps=6)
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)
    whole = train_loop(tiny_fmnist_net(), batches, config, progress=False)
    run = tmp_path / "run"
    train_loop(tiny_fmnist_net(), SignalAfter(batches, 4), config, run_dir=run, progress=False)
    state = load_checkpoint(run)
    for key in ("distill", "distill_temperature", "anchor_probability"):
        del state["config"][key]
    del state["format"], state["version"]
    snnet.train.checkpoint.save_checkpoint(run, state)
    rest = train_loop(tiny_fmnist_net(), batches, config, run_dir=run, resume=True, progress=False)
    assert rest.losses == whole.losses and state_equal(rest.net, whole.net)
