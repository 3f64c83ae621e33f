"""Latency of every stitch: statistics of timed calls, saved after each stitch, resumed."""

import pytest
import torch

import snnet
import snnet.measure.latency as latency_mod
from families import FAMILIES
from snnet.measure.latency import measure_latency, percentile, time_callable
from snnet.measure.results import Results


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


def test_cli_latency_saves_each_stitch_once(tmp_path, monkeypatch, capsys):
    """measure_latency saves after every stitch; the CLI used to save the same results again."""
    from snnet.cli import main

    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    snnet.save(net, tmp_path / "net")
    saves = []
    real = Results.save
    monkeypatch.setattr(Results, "save", lambda self, path: saves.append(path) or real(self, path))
    args = ["--repeats", "1", "--warmup", "0", "--threads", "1", "--settle", "0", "--no-progress"]
    assert main(["latency", str(tmp_path / "net"), *args]) == 0
    assert len(saves) == len(net.stitches)
    saves.clear()
    assert main(["latency", str(tmp_path / "net"), *args]) == 0  # nothing left to measure
    assert saves == [] and "measuring 0 of" in capsys.readouterr().out
