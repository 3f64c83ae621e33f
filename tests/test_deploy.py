"""Deploying: latency per stitch, selection by budget, runtime switching, exporting one stitch."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import snnet
import snnet.export as export_mod
import snnet.latency as latency_mod
from families import FAMILIES
from snnet import Stitch
from snnet.cli import main
from snnet.export import check_onnx, export, export_onnx, export_stitch, load_stitch, save_stitch
from snnet.latency import measure_latency, percentile, time_callable
from snnet.results import Record, Results
from snnet.select import pareto, select


def _perturb(net: snnet.SNNet) -> None:
    """Make stitching layers and anchors non-trivial so copies and loads are really checked."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers.values():
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    models = FAMILIES[request.param][0]()
    net = snnet.SNNet(models).eval()
    _perturb(net)
    x = torch.randn(3, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    return request.param, models, net, x


def _some_stitches(net: snnet.SNNet) -> list[Stitch]:
    """Every anchor, plus stitches spread over the space (first, middle, last)."""
    hops = [s for s in net.stitches if not s.is_anchor]
    picked = {hops[0], hops[len(hops) // 2], hops[-1]} if hops else set()
    return [s for s in net.stitches if s.is_anchor or s in picked]


# -- export -----------------------------------------------------------------------------------
def test_exported_stitch_equals_the_stitch_in_the_network(family):
    _, _, net, x = family
    with torch.no_grad():
        for stitch in _some_stitches(net):
            model = export_stitch(net, stitch).eval()
            assert torch.equal(model(x), net(x, stitch=stitch)), stitch
            assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params, stitch
            assert model.stitch == stitch and model.info["params"] == net.cost(stitch).params


def test_export_copies_only_what_the_stitch_runs(family, monkeypatch):
    _, _, net, x = family
    copied = []
    original = nn.Parameter.__deepcopy__

    def counting(self, memo):
        copied.append(self.numel())
        return original(self, memo)

    monkeypatch.setattr(nn.Parameter, "__deepcopy__", counting)
    stitch = next(s for s in net.stitches if not s.is_anchor)
    model = export_stitch(net, stitch)
    assert sum(copied) == net.cost(stitch).params  # nothing else was ever copied
    # The copy shares no storage with the network, and the network is untouched.
    ptrs = {p.data_ptr() for p in net.parameters()}
    assert not any(p.data_ptr() in ptrs for p in model.parameters())
    with torch.no_grad():
        before = net(x, stitch=stitch)
        next(model.parameters()).add_(1.0)
        assert torch.equal(net(x, stitch=stitch), before)
    assert len(list(net.parameters())) > len(list(model.parameters()))


def test_save_and_load_an_exported_stitch(family, tmp_path):
    name, _, net, x = family
    stitch = _some_stitches(net)[-1]
    model = export_stitch(net, stitch).eval()
    save_stitch(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stitch"] == str(stitch) and config["format"] == "snnet-stitch"
    assert [a["index"] for a in config["anchors"]] == list(stitch.route)
    if any(a["source"] is None for a in config["anchors"]):  # the user's own modules
        with pytest.raises(ValueError, match="pass anchors"):
            load_stitch(tmp_path)
        loaded = load_stitch(tmp_path, anchors=FAMILIES[name][0]())
    else:
        loaded = load_stitch(tmp_path)  # rebuilt from the recorded source, no SN-Net
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert sum(p.numel() for p in loaded.parameters()) == net.cost(stitch).params
    assert not any(p.is_meta for p in loaded.parameters())


def test_onnx_export_matches_onnxruntime(family, tmp_path):
    net = family[2]
    stitch = next(s for s in net.stitches if not s.is_anchor)
    model = export_stitch(net, stitch).eval()
    path = export_onnx(model, tmp_path / "model.onnx")  # checks itself within 1e-4
    assert check_onnx(model, path, batch_size=5) <= 1e-4  # another batch size: dynamic batch


def test_pt2_export_round_trip(tmp_path):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    model = export_stitch(net, "0:1-1:2").eval()
    paths = export(model, tmp_path, ["safetensors", "pt2"])
    program = torch.export.load(paths["pt2"]).module()
    x = torch.randn(5, *model.input_size)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-6)
    assert (tmp_path / "config.json").is_file()


def test_export_errors(tmp_path, monkeypatch):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    with pytest.raises(ValueError, match="not in this network"):
        export_stitch(net, "0:3-1:0")
    with pytest.raises(ValueError, match=r"has anchors 0\.\.2"):
        export_stitch(net, "5")
    model = export_stitch(net, "0")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export(model, tmp_path, ["tflite"])
    real = export_mod.importlib.util.find_spec
    monkeypatch.setattr(
        export_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"needs onnxscript: pip install 'snnet\[export\]'"):
        export(model, tmp_path, ["onnx"])
    assert not (tmp_path / "model.onnx").exists()
    snnet.save(net, tmp_path / "net")
    with pytest.raises(ValueError, match=r"not an exported stitch.*snnet\.load"):
        load_stitch(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="snnet export"):
        load_stitch(tmp_path / "nowhere")


# -- runtime switching ------------------------------------------------------------------------
def test_switching_moves_no_weights():
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    before = {n: (p.data_ptr(), p.device) for n, p in net.named_parameters()}
    for stitch in net.stitches:
        net.stitch = stitch
        with net.using("0"):
            assert net.stitch == Stitch.parse("0")
        assert net.stitch == stitch
    assert {n: (p.data_ptr(), p.device) for n, p in net.named_parameters()} == before
    with pytest.raises(ValueError, match="not in this network"):
        net.stitch = "0:3-1:0"
    assert net.stitch == net.stitches[-1]  # a rejected stitch leaves the current one


def test_concurrent_callers_with_different_stitches_match_sequential_runs():
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    _perturb(net)
    x = torch.randn(4, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    stitches = list(net.stitches)
    with torch.no_grad():
        expected = {s: net(x, stitch=s) for s in stitches}
    current = net.stitch
    start = threading.Barrier(4)

    def worker(k: int) -> list[tuple[Stitch, torch.Tensor]]:
        start.wait()  # all threads run at once
        order = stitches[k::4] * 3 + stitches[::-1][k::4] * 3
        with torch.no_grad():
            return [(s, net(x, stitch=s)) for s in order]

    with ThreadPoolExecutor(4) as pool:
        outs = [o for batch in pool.map(worker, range(4)) for o in batch]
    assert len(outs) == 6 * len(stitches)
    for s, out in outs:
        assert torch.equal(out, expected[s]), s
    assert net.stitch == current  # per-call stitches never touch the shared one


# -- selection --------------------------------------------------------------------------------
def _results(rows, *, network=None) -> Results:
    return Results(
        [
            Record(Stitch.parse(s), g, p, top1=t, latency_ms=lat, latency_p90_ms=lat)
            for s, g, p, t, lat in rows
        ],
        network=network,
    )


HAND = [  # stitch, gmacs, params, top1, latency_ms
    ("0", 1.25, 5, 70.0, 2.0),
    ("1", 4.6, 22, 79.0, 6.0),
    ("2", 17.5, 86, 81.0, 20.0),
    ("0:3-1:4", 2.5, 14, 74.0, 3.5),
    ("0:5-1:6", 3.0, 12, 76.0, 4.0),
    ("0:6-1:6", 3.0, 12, 76.0, 4.5),  # ties 0:5-1:6 on GMACs and accuracy, slower
    ("1:2-2:3", 9.0, 60, 78.0, 9.0),  # worse than anchor 1 and costlier: off the front
    ("1:5-2:6", 9.5, 60, 80.0, 10.0),
]


def test_select_most_accurate_within_budget():
    res = _results(HAND)
    assert str(select(res, max_gmacs=3.0).stitch) == "0:5-1:6"  # tie -> cheaper -> first
    assert str(select(res, max_gmacs=3.0, max_latency_ms=4.2).stitch) == "0:5-1:6"
    assert str(select(res, max_gmacs=3.0, max_latency_ms=3.9).stitch) == "0:3-1:4"
    assert str(select(res, max_gmacs=9.2).stitch) == "1"
    assert str(select(res, max_params=60).stitch) == "1:5-2:6"
    assert str(select(res, max_latency_ms=100).stitch) == "2"
    assert str(select(res, max_gmacs=1.25).stitch) == "0"  # the budget is inclusive


def test_select_cheapest_above_a_floor():
    res = _results(HAND)
    assert str(select(res, min_top1=76).stitch) == "0:5-1:6"
    assert str(select(res, min_top1=78).stitch) == "1"
    assert str(select(res, min_top1=80, cost="latency_ms").stitch) == "1:5-2:6"
    # floor and budget together: the most accurate stitch that meets both
    assert str(select(res, min_top1=74, max_gmacs=5).stitch) == "1"


def test_select_exact_duplicates_are_deterministic():
    rows = [("0:5-1:6", 3.0, 12, 76.0, 4.0), ("0:6-1:6", 3.0, 12, 76.0, 4.0), ("0", 1, 5, 70, 2)]
    assert str(select(_results(rows), max_gmacs=3).stitch) == "0:5-1:6"
    assert str(select(_results(rows[::-1]), max_gmacs=3).stitch) == "0:6-1:6"  # first listed
    assert [str(r.stitch) for r in pareto(_results(rows), "gmacs")] == ["0", "0:5-1:6", "0:6-1:6"]


def test_select_infeasible_budgets_name_the_nearest_stitch():
    res = _results(HAND)
    with pytest.raises(
        ValueError, match=r"no stitch fits 0.5 GMACs; the cheapest is '0' at 1.25 GMACs"
    ):
        select(res, max_gmacs=0.5)
    with pytest.raises(
        ValueError, match=r"no stitch fits at least 90.00 % top-1; the most accurate is '2'"
    ):
        select(res, min_top1=90)
    with pytest.raises(
        ValueError,
        match=r"no stitch fits 3 GMACs and at least 79.00 % top-1; the nearest is '0:5-1:6' at 3 GMACs, 76.00 % top-1",
    ):
        select(res, max_gmacs=3, min_top1=79)
    with pytest.raises(ValueError, match="give a budget"):
        select(res)


def test_select_on_fields_not_measured():
    rows = [(s, g, p, t, None) for s, g, p, t, _ in HAND]
    res = _results(rows)
    with pytest.raises(ValueError, match=r"no stitch has latency_ms measured; run `snnet latency"):
        select(res, max_latency_ms=5)
    res.update("0", latency_ms=1.0)
    with pytest.raises(ValueError, match=r"measured for only 1 of 8 stitches.*resumes"):
        select(res, max_latency_ms=5)
    no_acc = _results([(s, g, p, None, lat) for s, g, p, _, lat in HAND])
    with pytest.raises(ValueError, match=r"no stitch has top1 measured; run `snnet evaluate"):
        select(no_acc, max_gmacs=3)
    with pytest.raises(ValueError, match="hold no stitches"):
        select(Results([]), max_gmacs=3)


def test_pareto_over_any_cost():
    res = _results(HAND)
    assert [str(r.stitch) for r in pareto(res, "gmacs")] == [
        "0", "0:3-1:4", "0:5-1:6", "0:6-1:6", "1", "1:5-2:6", "2",
    ]  # fmt: skip
    assert [str(r.stitch) for r in pareto(res, "latency_ms")] == [
        "0", "0:3-1:4", "0:5-1:6", "1", "1:5-2:6", "2",
    ]  # fmt: skip


# -- latency ----------------------------------------------------------------------------------
def test_time_callable_records_stats():
    calls = []
    t = time_callable(lambda: calls.append(1), repeats=7, warmup=3)
    assert len(calls) == 10 and t.repeats == 7 and t.warmup == 3
    assert 0 <= t.min_ms <= t.median_ms <= t.p90_ms
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)  # numpy's value
    with pytest.raises(ValueError):
        time_callable(lambda: None, repeats=0)


class Crash(Exception):
    pass


def test_measure_latency_records_and_resumes(tmp_path, monkeypatch):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    path = tmp_path / "results.json"
    real = latency_mod.time_callable
    calls, crash_at = [], [4]

    def flaky(fn, **kw):
        calls.append(1)
        if len(calls) == crash_at[0]:
            raise Crash  # the run dies after three stitches
        return real(fn, **kw)

    monkeypatch.setattr(latency_mod, "time_callable", flaky)
    with pytest.raises(Crash):
        measure_latency(
            net, batch_size=2, repeats=3, warmup=1, save_to=path, settle_s=0, progress=False
        )
    saved = Results.load(path)
    assert len(saved) - len(saved.missing("latency_ms")) == 3
    meta = saved.meta["latency"]
    assert meta["batch_size"] == 2 and meta["repeats"] == 3 and meta["device"] == "cpu"
    assert meta["threads"] == torch.get_num_threads() and "load_avg_1min" in meta
    kept = {r.stitch: r.latency_ms for r in saved if r.latency_ms is not None}

    calls.clear()
    crash_at[0] = 0
    done = measure_latency(
        net, saved, batch_size=2, repeats=3, warmup=1, save_to=path, progress=False
    )
    assert len(calls) == len(net.stitches) - 3  # only the missing ones
    assert done.missing("latency_ms") == [] and Results.load(path).missing("latency_ms") == []
    assert all(done[s].latency_ms == v for s, v in kept.items())
    assert all(0 < r.latency_ms <= r.latency_p90_ms for r in done)
    with pytest.raises(ValueError, match=r"batch_size=2, not 4.*overwrite"):
        measure_latency(net, done, batch_size=4, repeats=3, warmup=1, settle_s=0, progress=False)
    calls.clear()
    measure_latency(
        net, done, batch_size=4, repeats=2, warmup=0, overwrite=True, settle_s=0.1, progress=False
    )
    assert len(calls) == len(net.stitches) and done.meta["latency"]["batch_size"] == 4


# -- command line -----------------------------------------------------------------------------
def test_cli_latency_select_export(tmp_path, capsys):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    _perturb(net)
    snnet.save(net, tmp_path / "net")
    args = ["--repeats", "2", "--warmup", "0", "--threads", "1", "--settle", "0", "--no-progress"]
    assert main(["latency", str(tmp_path / "net"), *args]) == 0
    results = Results.load(tmp_path / "net" / "results.json")
    assert results.missing("latency_ms") == [] and results.meta["latency"]["threads"] == 1
    for i, r in enumerate(sorted(results, key=lambda r: r.gmacs)):
        results.update(r.stitch, top1=60.0 + i)
    results.save(tmp_path / "net" / "results.json")
    capsys.readouterr()

    budget = sorted(r.gmacs for r in results)[5]
    res_path = str(tmp_path / "net" / "results.json")
    assert main(["select", "--results", res_path, "--max-gmacs", str(budget), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["stitch"] == str(select(results, max_gmacs=budget).stitch)
    assert main(["select", "--results", res_path, "--pareto", "--cost", "latency_ms"]) == 0
    assert "on the front of latency_ms" in capsys.readouterr().out

    out = tmp_path / "deploy"
    assert (
        main(["export", str(tmp_path / "net"), "--max-gmacs", str(budget), "--out", str(out)]) == 0
    )
    assert f"selected stitch {row['stitch']}" in capsys.readouterr().out
    model = load_stitch(out)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        assert torch.equal(model(x), net(x, stitch=row["stitch"]))


def test_cli_errors_are_one_line(tmp_path, capsys):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    snnet.save(net, tmp_path / "net")
    other = Results.for_network(snnet.SNNet(FAMILIES["sequential"][0]()))
    other.save(tmp_path / "other.json")
    (tmp_path / "empty.json").write_text(json.dumps({"format": "snnet-results", "records": []}))
    cases = [
        (["export", str(tmp_path / "net"), "--stitch", "0:3-1:0", "--out", str(tmp_path / "o")],
         "not in this network"),
        (["latency", str(tmp_path / "net"), "--results", str(tmp_path / "other.json")],
         "results are for another network"),
        (["select", "--results", str(tmp_path / "empty.json"), "--max-gmacs", "1"], "no results"),
        (["select", "--results", str(tmp_path / "other.json"), "--max-latency-ms", "1"],
         "snnet latency"),
        (["export", str(tmp_path / "net"), "--out", str(tmp_path / "o")], "give --stitch"),
        (["export", str(tmp_path / "net"), "--max-gmacs", "1", "--out", str(tmp_path / "o")],
         "results.json does not exist"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
