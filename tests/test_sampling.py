"""The stitch sampler's importance policy: follows the estimate, keeps a floor, warms up uniformly,
checkpoints its estimate, and leaves the other policies exactly as they were."""

import collections

import pytest
import torch

import snnet
from families import vit_family
from snnet.train.importance import StitchImportance
from snnet.train.sampling import POLICIES, StitchSampler, sample_stitch


@pytest.fixture(scope="module")
def net() -> snnet.SNNet:
    return snnet.SNNet(vit_family())


def test_importance_is_a_policy():
    assert "importance" in POLICIES


def test_uniform_draws_are_what_they_always_were(net):
    # The uniform policy's stitches are sample_stitch's on rank 0's generator, seeded as before
    # importance sampling existed; its state holds only the generators.
    sampler = StitchSampler(net.stitches, seed=7)
    g = torch.Generator().manual_seed(7 + 1_000_003)
    assert [sampler.draw()[0] for _ in range(50)] == [
        sample_stitch(net.stitches, g) for _ in range(50)
    ]
    assert sampler.importance is None and set(sampler.state_dict()) == {"shared", "per_rank"}
    with pytest.raises(ValueError, match="keeps no importance estimate"):
        sampler.observe({net.stitches[0]: 1.0})


def test_draws_follow_the_importance_with_a_floor(net):
    stitches = list(net.stitches)
    est = StitchImportance(stitches, momentum=0.0, warmup=0, floor=0.2)
    favourite = stitches[3]
    est.observe({s: (10.0 if s == favourite else 1.0) for s in stitches})
    p = est.probabilities()
    n = len(stitches)
    assert sum(p) == pytest.approx(1.0)
    assert min(p) >= 0.2 / n - 1e-12  # the floor
    expected_top = 0.2 / n + 0.8 * 10 / (10 + (n - 1))
    assert p[3] == pytest.approx(expected_top)
    sampler = StitchSampler(stitches, policy="importance", importance=est, seed=0)
    counts = collections.Counter(sampler.draw()[0] for _ in range(4000))
    assert counts[favourite] / 4000 == pytest.approx(expected_top, abs=0.03)
    assert len(counts) == n  # every stitch still drawn


def test_temperature_flattens_and_unseen_stitches_count_as_the_most_important(net):
    stitches = list(net.stitches)
    sharp = StitchImportance(stitches, floor=0.1, temperature=0.5)
    flat = StitchImportance(stitches, floor=0.1, temperature=4.0)
    for est in (sharp, flat):
        est.observe({stitches[0]: 4.0, stitches[1]: 1.0})
    ps, pf = sharp.probabilities(), flat.probabilities()
    assert ps[0] / ps[1] > pf[0] / pf[1] > 1
    assert ps[2] == ps[0]  # stitches[2] is not observed yet: weighs as much as the top one


def test_warmup_draws_uniformly_then_importance_takes_over(net):
    stitches = list(net.stitches)
    est = StitchImportance(stitches, warmup=3, floor=0.1)
    for _ in range(3):
        assert est.probabilities() == [1 / len(stitches)] * len(stitches)
        est.observe({stitches[0]: 5.0, stitches[1]: 0.5})
    assert not est.warming_up and est.probabilities()[0] > est.probabilities()[1]


def test_moving_average(net):
    s = net.stitches[0]
    est = StitchImportance(net.stitches, momentum=0.75)
    est.observe({s: 4.0})
    assert est.values[s] == 4.0  # the first observation sets the value
    est.observe({s: 8.0})
    assert est.values[s] == 0.75 * 4.0 + 0.25 * 8.0 and est.observations[s] == 2
    est.observe({s: float("inf")})  # an fp16 step the grad scaler skips
    assert est.values[s] == 5.0 and est.observations[s] == 2 and est.steps == 3


@pytest.mark.parametrize("rank_sampling", ["independent", "balanced"])
def test_the_state_restores_the_draws_and_the_estimate(net, rank_sampling):
    stitches = list(net.stitches)
    costs = {s: net.cost(s).gmacs for s in stitches}

    def make() -> StitchSampler:
        return StitchSampler(
            stitches,
            costs,
            policy="importance",
            rank_sampling=rank_sampling,
            world_size=2,
            seed=1,
            importance=StitchImportance(stitches, warmup=2),
        )

    def steps(sampler: StitchSampler) -> list:
        draws = []
        for i in range(6):
            draw = sampler.draw()
            draws.append(draw)
            sampler.observe({s: float(i) + 0.5 for s in draw})
        return draws

    a = make()
    for i in range(6):
        a.observe({s: float(i + len(str(s))) for s in a.draw()})
    state = a.state_dict()
    ahead = steps(a)
    b = make()
    b.load_state_dict(state)
    assert b.importance.values == make_values(state)
    assert steps(b) == ahead and b.importance.values == a.importance.values


def make_values(state: dict) -> dict:
    return {snnet.Stitch.parse(k): v for k, v in state["importance"]["values"].items()}


def test_resuming_importance_from_a_state_without_an_estimate_is_an_error(net):
    plain = StitchSampler(net.stitches, seed=0).state_dict()
    sampler = StitchSampler(net.stitches, policy="importance", seed=0)
    with pytest.raises(ValueError, match="holds no importance estimate"):
        sampler.load_state_dict(plain)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": 1.0}, "momentum must lie in"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"floor": 0.0}, "floor must lie in"),
        ({"temperature": 0.0}, "temperature must be positive"),
    ],
)
def test_bad_knobs_are_errors(net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StitchImportance(net.stitches, **kwargs)
