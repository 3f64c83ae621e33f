"""`snnet demo` end to end on the shipped family, cut short (the full run is the README's)."""

import json

import pytest

import snnet
from snnet.cli import main
from snnet.measure.results import Results
from snnet.rundir import RunDir
from snnet.zoo import demo_family_names


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--steps",
        "20",
        "--eval-images",
        "256",
        "--quiet",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    results = Results.load(out / "results.json")
    assert len(results) == 71 and not results.missing("top1")
    assert (out / "results.csv").is_file() and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["anchors_after"]) == 3 and summary["pareto"]
    for name in demo_family_names():
        assert name in text
    assert str(out / "pareto.png") in text and "Pareto front" in text

    # A second run finds the finished checkpoint and results: it resumes instead of redoing work.
    mtime = (out / "results.json").stat().st_mtime_ns
    assert main(args) == 0
    assert Results.load(out / "results.json").records == results.records
    assert json.loads(RunDir(out).train_record.read_text())["step"] == 20
    assert (out / "results.json").stat().st_mtime_ns >= mtime
    # The demo's run directory is the one layout: snnet.load and every command open it.
    assert RunDir.find(out) == RunDir(out) and len(snnet.load(out).stitches) == len(results)
