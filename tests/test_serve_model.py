"""The torch backend of the server: traced stitches, preprocessing, latency measured at
start-up where the results lack it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import snnet
from snnet.measure.results import Results
from test_serve import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("model") / "run")


def test_traced_stitches_give_the_same_answers_from_the_same_weights(run_dir):
    from snnet.serve.executor import prepare
    from snnet.serve.model import ServedModel
    from snnet.serve.settings import ServeSettings

    model = ServedModel.load(run_dir)
    stitches = [model.front[0].stitch, snnet.Stitch.parse("0:5-1:6"), model.front[-1].stitch]
    assert model.trace(stitches, max_batch=4) == [] and set(model.traced) == set(stitches)
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)

    def eager(s):
        with torch.inference_mode():
            return model.net(model.preprocess.normalize(pixels), stitch=s).softmax(-1)

    before = model.predict(pixels, stitches[2])
    for s in stitches:
        assert torch.equal(model.predict(pixels, s), eager(s))
    # the traces read the network's own parameters: nothing was copied, a change shows
    with torch.no_grad():
        model.net.anchors[2].model.head.weight.mul_(2.0)
    after = model.predict(pixels, stitches[2])
    assert torch.equal(after, eager(stitches[2])) and not torch.equal(after, before)
    times = model.batch_ms((1, 4), rounds=1)
    assert set(times) == {1, 4} and set(times[1]) == {r.stitch for r in model.front}
    # a serving replica traces the front and its fixed stitch, unless told not to
    asked = []
    model.trace = lambda stitches, max_batch: asked.append(list(stitches)) or []
    prepare(model, ServeSettings(stitch="0:5-1:6", max_batch=2))
    prepare(model, ServeSettings(stitch="0:5-1:6", trace=False))
    assert asked == [[r.stitch for r in model.front] + [stitches[1]]]


def test_a_stitch_whose_trace_fails_or_disagrees_stays_eager(run_dir, monkeypatch, caplog):
    from snnet.serve.model import ServedModel

    model = ServedModel.load(run_dir)
    good, bad = snnet.Stitch.parse("0:5-1:6"), snnet.Stitch.parse("1:3-2:3")
    real = torch.jit.trace

    calls = []

    def trace(fn, x, **kw):  # the second stitch cannot be traced
        calls.append(fn)
        if len(calls) == 2:
            raise RuntimeError("cannot trace this")
        return real(fn, x, **kw)

    monkeypatch.setattr(torch.jit, "trace", trace)
    with caplog.at_level("WARNING", logger="snnet.serve"):
        assert model.trace([good, bad], max_batch=2) == [bad]
    assert set(model.traced) == {good} and "1:3-2:3 stays eager" in caplog.text
    monkeypatch.setattr(torch.jit, "trace", lambda fn, x, **kw: lambda y: fn(y) * 0.9)
    with caplog.at_level("WARNING", logger="snnet.serve"):
        assert model.trace([model.front[0].stitch], max_batch=2) == [model.front[0].stitch]
    pixels = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        want = model.net(model.preprocess.normalize(pixels), stitch=bad).softmax(-1)
    assert torch.equal(model.predict(pixels, bad), want)  # an eager stitch still answers


def test_preprocessing_of_the_demo_family_matches_training():
    from snnet.serve.model import Preprocess

    test = snnet.data.fashion_mnist("test")
    prep = Preprocess(
        1, (28, 28), (snnet.data.FASHION_MNIST_MEAN,), (snnet.data.FASHION_MNIST_STD,)
    )
    u8 = test.memory[0, 0]
    assert torch.equal(prep(Image.fromarray(u8.numpy(), "L")), test.batch([0])[0][0])
    assert prep(Image.fromarray(np.zeros((56, 40, 3), np.uint8), "RGB")).shape == (1, 28, 28)


def test_timm_anchors_preprocess_with_their_data_config():
    from timm.data import resolve_data_config

    from families import FAMILIES
    from snnet.serve.model import preprocessing

    net = snnet.SNNet(FAMILIES["vit"][0]())  # timm ViTs at 32×32
    prep = preprocessing(net, {})
    assert prep.channels == 3 and prep.size == (32, 32)
    timm_cfg = resolve_data_config(model=net.anchors[0].model)
    assert prep.mean == tuple(timm_cfg["mean"]) and prep.std == tuple(timm_cfg["std"])
    x = prep(Image.fromarray(np.full((64, 48), 200, np.uint8), "L"))  # grey is made RGB
    assert x.shape == (3, 32, 32)
    net.data_config = replace(prep, mean=(0.5,) * 3, std=(0.25,) * 3)  # what training recorded
    custom = preprocessing(net, {})
    assert custom.mean == (0.5,) * 3 and custom.std == (0.25,) * 3


def counting_measure(calls: list[int], *, base_ms: float):
    """A stand-in for measuring latency at start-up: records how many stitches it was asked
    for and gives each ``base_ms + GMACs``."""

    def measure(net, res):
        calls.append(len(res.missing("latency_ms")))
        for r in res:
            res.update(r.stitch, latency_ms=base_ms + r.gmacs)
        return res

    return measure


def test_latency_missing_from_results_is_measured_at_start_up(tmp_path, caplog):
    from snnet.serve.model import ServedModel

    run = make_run(tmp_path / "run", latency=False)
    calls = []
    measure = counting_measure(calls, base_ms=1)
    with caplog.at_level("WARNING", logger="snnet.serve"):
        model = ServedModel.load(run, measure=measure)
    assert calls == [71] and "measuring it now" in caplog.text
    assert model.front and all(r.latency_ms is not None for r in model.results)


def test_latency_measured_on_another_kind_of_device_is_measured_again(tmp_path, caplog):
    # The SLO controller predicts from these latencies: a GPU's would make a CPU server promise
    # what it cannot hold (and the reverse), so the server measures them where it runs.
    from snnet.serve.model import ServedModel

    run = make_run(tmp_path / "run")
    res = Results.load(run / "results.json")
    res.meta["latency"] = {"device": "cuda:0", "batch_size": 1}
    res.save(run / "results.json")
    calls = []
    measure = counting_measure(calls, base_ms=2)
    with caplog.at_level("WARNING", logger="snnet.serve"):
        model = ServedModel.load(run, measure=measure, device="cpu")
    assert calls == [71] and "measured on cuda:0" in caplog.text
    assert all(r.latency_ms >= 2 for r in model.results) and model.device.type == "cpu"

    res.meta["latency"] = {"device": "cpu", "batch_size": 1}  # same kind: kept as measured
    res.save(run / "results.json")
    model = ServedModel.load(run, measure=measure)
    assert calls == [71] and next(iter(model.results)).latency_ms < 2


def test_serving_on_a_gpu_that_is_not_there_names_the_fix(run_dir):
    from snnet.serve.model import ServedModel

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing to refuse")  # CI has none
    with pytest.raises(ValueError, match="--device cpu"):
        ServedModel.load(run_dir, device="cuda")
