"""Stitch importance: the saliency reads gradients without touching them, a run with importance
sampling resumes exactly and ranks its stitches, and rankings and fronts are compared correctly."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnet
from snnet.cli import main
from snnet.data import EpochBatches, ImageSet, fashion_mnist
from snnet.measure.evaluate import evaluate_all
from snnet.measure.results import Record, Results, hypervolume, kendall_tau
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.train import TrainConfig, train_loop
from snnet.train.checkpoint import load_checkpoint, save_checkpoint
from snnet.train.importance import Importance, StitchImportance, agreement, load_ranking, saliencies
from test_train import SignalAfter, state_equal, stopped_run, tiny_fmnist_net

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fmnist_slice() -> ImageSet:
    test = fashion_mnist("test")
    return test.subset(range(512))


def backward(net: snnet.SNNet, stitch: Stitch) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x, stitch=stitch), y).backward()


# -- the saliency -------------------------------------------------------------------------------


def test_saliency_is_the_mean_grad_times_weight_and_leaves_gradients_alone():
    net = tiny_fmnist_net()
    stitch = next(s for s in net.stitches if not s.is_anchor)
    backward(net, stitch)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    got = saliencies(net, [stitch, stitch])
    ran = net.parameters_of(stitch)
    total = sum(float((p.grad.double() * p.detach().double()).abs().sum()) for p in ran)
    assert set(got) == {stitch}
    assert got[stitch] == pytest.approx(total / sum(p.numel() for p in ran), rel=1e-6)
    after = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert after.keys() == grads.keys() and all(torch.equal(after[n], grads[n]) for n in grads)


def test_saliency_counts_only_the_trainable_parameters():
    # Frozen anchors (parameter-efficient training) hold no gradients: the stitch's saliency is
    # the mean over its stitching layer alone, and a stitch that trains nothing is left out.
    net = tiny_fmnist_net()
    net.anchors.requires_grad_(False)
    stitch = next(s for s in net.stitches if not s.is_anchor)
    backward(net, stitch)
    trained = [p for p in net.parameters_of(stitch) if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    total = sum(float((p.grad.double() * p.detach().double()).abs().sum()) for p in trained)
    got = saliencies(net, [stitch, Stitch.anchor(0)])
    assert set(got) == {stitch}
    assert got[stitch] == pytest.approx(total / sum(p.numel() for p in trained), rel=1e-6)


# -- training with importance sampling --------------------------------------------------------


def importance_config(**kwargs) -> TrainConfig:
    return TrainConfig(
        epochs=2,
        batch_size=64,
        lr=3e-3,
        anchor_lr_scale=0.5,
        warmup=2,
        sampling="importance",
        importance_warmup=4,
        importance_momentum=0.5,
        **kwargs,
    )


def test_importance_run_resumes_exactly_and_ranks_its_stitches(fmnist_slice, tmp_path):
    config = importance_config()
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)  # 8 batches per epoch
    whole_dir = tmp_path / "whole"
    whole = train_loop(
        tiny_fmnist_net(drop_rate=0.1), batches, config, run_dir=whole_dir, progress=False
    )
    run = tmp_path / "run"
    stopped_run(batches, config, run)
    saved = load_checkpoint(run)["sampler"]["importance"]
    assert saved["steps"] == 11 and sum(saved["observations"].values()) == 11
    rest = train_loop(
        tiny_fmnist_net(drop_rate=0.1), batches, config, run_dir=run, resume=True, progress=False
    )
    assert rest.losses == whole.losses and rest.stitches == whole.stitches
    assert state_equal(rest.net, whole.net)
    # The ranking after training: every stitch trained, most important first, identical for the
    # interrupted run and the uninterrupted one.
    ranking = load_ranking(RunDir(run).importance)
    assert ranking == load_ranking(RunDir(whole_dir).importance)
    assert [i.value for i in ranking] == sorted((i.value for i in ranking), reverse=True)
    assert sum(i.observations for i in ranking) == 16
    assert {str(i.stitch) for i in ranking} == set(whole.stitches)


def test_the_importance_policy_draws_important_stitches_more_often(fmnist_slice):
    # After the warmup the sampler follows the estimate: over the whole run, the stitches drawn
    # most often are among the most important ones (a floor of 0.1 leaves 90 % to importance).
    config = importance_config(importance_floor=0.1, importance_temperature=0.25, steps=60)
    config = TrainConfig.from_json({**config.to_json(), "epochs": 8})
    result = train_loop(
        tiny_fmnist_net(), EpochBatches(fmnist_slice, 64, seed=0), config, progress=False
    )
    assert result.steps == 60
    counts = {s: result.stitches[4:].count(s) for s in set(result.stitches[4:])}
    most_drawn = max(counts, key=counts.get)
    assert counts[most_drawn] >= 10  # 56 draws over 34 stitches: uniform gives about 2 each


def test_a_checkpoint_from_before_the_importance_options_resumes(fmnist_slice, tmp_path):
    # A run checkpointed before TrainConfig had the importance_* knobs trained with their
    # defaults' behaviour (uniform sampling): it must resume, not be refused as "other options".
    config = TrainConfig(epochs=1, batch_size=64, lr=3e-3, warmup=2, steps=6)
    batches = EpochBatches(fmnist_slice, 64, seed=config.seed)
    whole = train_loop(tiny_fmnist_net(), batches, config, progress=False)
    run = tmp_path / "run"
    train_loop(tiny_fmnist_net(), SignalAfter(batches, 4), config, run_dir=run, progress=False)
    state = load_checkpoint(run)
    state["config"] = {k: v for k, v in state["config"].items() if not k.startswith("importance_")}
    save_checkpoint(run, state)
    rest = train_loop(tiny_fmnist_net(), batches, config, run_dir=run, resume=True, progress=False)
    assert rest.losses == whole.losses and state_equal(rest.net, whole.net)


def test_cli_ranks_the_stitches_against_their_accuracy(fmnist_slice, tmp_path, capsys):
    config = importance_config(steps=10)
    run = tmp_path / "run"
    net = tiny_fmnist_net()
    train_loop(net, EpochBatches(fmnist_slice, 64, seed=0), config, run_dir=run, progress=False)
    assert main(["importance", str(run)]) == 0
    out = capsys.readouterr().out
    assert "evaluate the run" in out and "importance" in out.splitlines()[0]

    evaluate_all(net, fmnist_slice, path=RunDir(run).results, progress=False)
    assert main(["importance", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ranking = load_ranking(RunDir(run).importance)
    assert [r["stitch"] for r in data["ranking"]] == [str(i.stitch) for i in ranking]
    expected = agreement(ranking, Results.load(RunDir(run).results))
    assert data["agreement"]["tau"] == pytest.approx(expected.tau)
    assert main(["importance", str(run)]) == 0
    assert "Kendall tau (importance vs top-1)" in capsys.readouterr().out


def test_cli_on_a_run_without_importance_is_one_line_naming_the_fix(fmnist_slice, tmp_path, capsys):
    run = tmp_path / "run"
    config = TrainConfig(epochs=1, batch_size=64, steps=2)
    train_loop(
        tiny_fmnist_net(), EpochBatches(fmnist_slice, 64), config, run_dir=run, progress=False
    )
    assert main(["importance", str(run)]) == 2
    assert "--sampling importance" in capsys.readouterr().err


# -- comparing rankings and fronts -------------------------------------------------------------


def brute_tau_b(a, b):
    """tau-b straight from its definition, for checking."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    s = sum(sign(a[i] - a[j]) * sign(b[i] - b[j]) for i, j in pairs)
    ta = sum(a[i] != a[j] for i, j in pairs)
    tb = sum(b[i] != b[j] for i, j in pairs)
    return s / math.sqrt(ta * tb)


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3, 4], [5, 6, 7, 8]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [8, 7, 6, 5]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(4 / 6)
    # With ties: a = (1,1,2,3), b = (1,2,2,3): 5 untied pairs in each, 4 concordant, 0 discordant
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(4 / 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 4, (9,), generator=g).tolist()
        b = torch.randint(0, 4, (9,), generator=g).tolist()
        assert kendall_tau(a, b) == pytest.approx(brute_tau_b(a, b))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2], [1])


def test_hypervolume_of_a_hand_made_front():
    reference = (10.0, 50.0)
    front = [(1.0, 60.0), (4.0, 70.0), (8.0, 75.0)]
    # strips: (10-1)·(60-50) + (10-4)·(70-60) + (10-8)·(75-70) = 90 + 60 + 10
    assert hypervolume(front, reference) == 160.0
    dominated = [(5.0, 65.0), (9.0, 74.0), (4.0, 70.0)]  # add nothing
    outside = [(12.0, 99.0), (0.5, 40.0)]  # beyond the reference cost, below its value
    assert hypervolume(front + dominated + outside, reference) == 160.0
    assert hypervolume([], reference) == 0.0
    assert hypervolume([(2.0, 80.0)], reference) > hypervolume(front[:2], reference)


def test_agreement_of_a_ranking_with_results():
    stitches = [
        Stitch.anchor(0),
        Stitch.anchor(1),
        Stitch.parse("0:1-1:2"),
        Stitch.parse("0:2-1:3"),
    ]
    results = Results(
        [Record(s, gmacs=0.1 * i, params=10, top1=70.0 + i) for i, s in enumerate(stitches)]
    )
    ranking = [Importance(s, float(i), 1) for i, s in enumerate(stitches)]
    found = agreement(ranking, results, top=2)
    assert (found.tau, found.count, found.top_overlap) == (1.0, 4, 2)
    reversed_ = [Importance(s, -float(i), 1) for i, s in enumerate(stitches)]
    assert agreement(reversed_, results, top=2).tau == -1.0
    assert agreement(reversed_, results, top=2).top_overlap == 0
    with pytest.raises(ValueError, match="evaluate the run"):
        agreement(ranking[:1], results)


def test_the_estimate_json_round_trips(tmp_path):
    stitches = [Stitch.anchor(0), Stitch.parse("0:1-1:2")]
    est = StitchImportance(stitches)
    est.observe({stitches[1]: 2.0})
    est.observe({stitches[0]: 1.0, stitches[1]: 4.0})
    path = est.save(tmp_path / "importance.json", step=2)
    ranking = load_ranking(path)
    assert [i.stitch for i in ranking] == [stitches[1], stitches[0]]
    assert ranking[0] == Importance(stitches[1], 0.9 * 2.0 + 0.1 * 4.0, 2)


DDP_WORKER = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import snnet.train.loop
from families import vit_family
from snnet.train import distributed
from snnet.data import EpochBatches
from snnet.train import TrainConfig, train_loop

runs = []
start_run = snnet.train.loop.start_run
snnet.train.loop.start_run = lambda *a, **k: runs.append(start_run(*a, **k)) or runs[-1]

out = Path(sys.argv[1])
world = distributed.setup("cpu")
g = torch.Generator().manual_seed(0)  # the same data on every rank
images, labels = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        return images[i], labels[i]

for mode in ("independent", "balanced"):
    runs.clear()
    net = snnet.SNNet(vit_family())
    config = TrainConfig(epochs=1, steps=6, batch_size=8, lr=1e-2, warmup=0, rank_sampling=mode,
                         sampling="importance", importance_warmup=2)
    batches = EpochBatches(Data(), 8, rank=world.rank, world_size=world.world_size)
    train_loop(net, batches, config, progress=False)
    state = runs[0].sampler.state_dict()["importance"]
    (out / f"{{mode}}-rank{{world.rank}}.json").write_text(json.dumps(state))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_under_ddp_every_rank_keeps_the_same_estimate(tmp_path):
    # Each rank computes every rank's stitch's saliency from the all-reduced gradients, so the
    # estimates (and hence the next draws) agree bit for bit without any message of their own.
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for mode in ("independent", "balanced"):
        r0, r1 = (json.loads((tmp_path / f"{mode}-rank{r}.json").read_text()) for r in range(2))
        assert r0 == r1, mode
        # 64 images, 2 ranks, 8 per batch: 4 steps, each observing both ranks' stitches
        assert r0["steps"] == 4 and sum(r0["observations"].values()) > 4


def test_agreement_inside_cost_bands():
    # Importance that favours the cheap stitches disagrees with top-1 overall, yet orders the
    # stitches of each cost band exactly like their accuracy: what choosing per budget needs.
    names = ["0", "0:1-1:2", "0:2-1:3", "1"]
    costs, top1, value = [0.1, 0.11, 1.0, 1.01], [70.0, 71.0, 80.0, 81.0], [10.0, 11.0, 1.0, 2.0]
    stitches = [Stitch.parse(n) for n in names]
    results = Results(
        [
            Record(s, gmacs=c, params=1, top1=t)
            for s, c, t in zip(stitches, costs, top1, strict=True)
        ]
    )
    ranking = [Importance(s, v, 1) for s, v in zip(stitches, value, strict=True)]
    found = agreement(ranking, results)
    assert found.tau == pytest.approx(-1 / 3)
    assert found.band_tau == 1.0 and found.bands == 2


def test_importance_in_parameter_efficient_mode_ranks_only_the_trained_stitches(fmnist_slice):
    # Frozen anchors have nothing to train: the estimate (and every draw) covers the stitches only.
    net = tiny_fmnist_net()
    peft = snnet.SNNet(list(net.anchors), lora_rank=2)
    before = {k: v.clone() for k, v in peft.anchors.state_dict().items() if "lora" not in k}
    config = importance_config(steps=12)
    result = train_loop(peft, EpochBatches(fmnist_slice, 64, seed=0), config, progress=False)
    assert result.steps == 12
    assert not any(Stitch.parse(s).is_anchor for s in result.stitches)
    after = peft.anchors.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
