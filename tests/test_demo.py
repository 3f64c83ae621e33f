"""`snnet demo` end to end on the shipped family, cut short; the full run's expected table is
``docs/demo-table.txt``, which the README and the docs show."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import snnet
from snnet.cli import main
from snnet.measure.results import Record, Results
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.zoo import demo_family_names
from test_readme import code_blocks

ROOT = Path(__file__).resolve().parents[1]
DEMO_TABLE = ROOT / "docs" / "demo-table.txt"


def test_the_readme_shows_the_demo_table_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert DEMO_TABLE.read_text(encoding="utf-8") in code_blocks(readme, "")


def test_the_demo_table_file_is_what_the_demo_prints():
    """The file's rows, put through the demo's own report, give the file back: its format is
    the formatter's, its Pareto marks are the front, its anchor lines are the report's."""
    from snnet.demo import DemoReport, format_report

    lines = DEMO_TABLE.read_text(encoding="utf-8").splitlines()
    blank = lines.index("")
    rows = [line.removesuffix("*").split() for line in lines[1:blank]]  # the Pareto mark
    names = demo_family_names()
    results = Results(
        [
            Record(
                Stitch.parse(cells[0]),
                float(cells[-4]) / 1e3,  # MMACs -> GMACs
                int(cells[-3]),
                top1=float(cells[-2]),
                top5=float(cells[-1]),
            )
            for cells in rows
        ],
        network={"anchors": names},
    )
    before, after = zip(
        *(re.findall(r"([\d.]+) % ->\s+([\d.]+) %", line)[0] for line in lines[blank + 3 :]),
        strict=True,
    )
    report = DemoReport(
        run_dir=Path("runs/demo"),
        results_path=Path("runs/demo/results.json"),
        plot_path=Path("runs/demo/pareto.png"),
        model_dir=Path("runs/demo/model"),
        seconds={},
        anchors_before=[float(b) for b in before],
        anchors_after=[float(a) for a in after],
        pareto=[],
    )
    text = format_report(report, results, names)
    # The file is the full run's: 71 stitches evaluated, the 20 shown being the front.
    assert lines[blank + 1].startswith(f"71 stitches evaluated; {len(rows)} on the Pareto front")
    expected = "\n".join(lines).replace("71 stitches evaluated", f"{len(rows)} stitches evaluated")
    assert text.startswith(expected + "\n")


#: A short demo: 30 steps (too few to fill the teachers' cache), evaluated on 2,600 images, so
#: the evaluation saves its progress (every 10 batches of 256) before it ends.
SHORT = ["--steps", "30", "--eval-images", "2600", "--quiet", "--threads", "1"]


def _demo(out: Path, *, stop_when=None, sig=signal.SIGINT) -> subprocess.CompletedProcess:
    """``snnet demo`` (a short one) in a process; with ``stop_when(out)``, stopped by ``sig``
    as soon as that returns True."""
    cmd = [sys.executable, "-m", "snnet", "demo", "--out", str(out), *SHORT]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    if stop_when is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not stop_when(out):
        time.sleep(0.02)
    assert proc.poll() is None, "the demo ended before the moment to stop it"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _table(stdout: str) -> str:
    """What the demo printed, but its timings."""
    return "\n".join(line for line in stdout.splitlines() if not line.startswith("time: "))


def _training(out: Path) -> bool:
    """Some steps done, more to come (steps.csv: a header and a line per step)."""
    log = RunDir(out).train_log
    return log.is_file() and len(log.read_text().splitlines()) > 3


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A short demo run to its end in a process, as a user runs it."""
    out = tmp_path_factory.mktemp("whole") / "demo"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(whole, capsys):
    out, proc = whole
    results = Results.load(out / "results.json")
    assert len(results) == 71 and not results.missing("top1")
    assert (out / "results.csv").is_file() and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["anchors_after"]) == 3 and summary["pareto"]
    for name in demo_family_names():
        assert name in proc.stdout
    assert str(out / "pareto.png") in proc.stdout and "Pareto front" in proc.stdout

    # A second run finds the finished checkpoint and results: it resumes instead of redoing work.
    mtime = (out / "results.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    assert _table(capsys.readouterr().out) == _table(proc.stdout)
    assert Results.load(out / "results.json").records == results.records
    assert json.loads(RunDir(out).train_record.read_text())["step"] == 30
    assert (out / "results.json").stat().st_mtime_ns >= mtime
    # The demo's run directory is the one layout: snnet.load and every command open it.
    assert RunDir.find(out) == RunDir(out) and len(snnet.load(out).stitches) == len(results)


@pytest.mark.slow
def test_a_demo_stopped_at_any_point_stops_and_the_same_command_finishes_it(whole, tmp_path):
    whole_out, whole = whole
    out = tmp_path / "stopped"
    moments = [
        ("anchors scored, before least squares", lambda o: RunDir(o).summary.is_file(), "INT"),
        ("training", _training, "TERM"),
        ("evaluating", lambda o: (o / "results.progress.json").is_file(), "INT"),
    ]
    for moment, when, name in moments:
        sig = getattr(signal, f"SIG{name}")
        stopped = _demo(out, stop_when=when, sig=sig)
        assert stopped.returncode == 128 + sig, (moment, stopped.stderr[-3000:])
        assert "run the same command again to continue" in stopped.stderr, moment
        assert "Pareto front" not in stopped.stdout and not (out / "results.json").exists()
        if moment == "training":  # it says where it stopped; the checkpoint is there
            assert "training stopped at step" in stopped.stderr
    again = _demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _table(again.stdout).replace(str(out), "OUT") == _table(whole.stdout).replace(
        str(whole_out), "OUT"
    )
