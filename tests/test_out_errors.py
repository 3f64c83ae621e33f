"""What the user's machine does to a run's output, each ending in one line naming the fix, exit
code 2, and nothing lost: a disk that fills up mid-run, a read-only ``--out``, a file as
``--out``, too little free space for the checkpoints a run will write.

The small and read-only file systems are real: a tmpfs mounted in a private mount namespace
(``unshare``), so the test needs no privileges beyond the user namespaces these machines allow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
TRAIN = [sys.executable, "-m", "snnet", "train", "fmnist", "--quiet", "--batch-size", "32"]
TRAIN += ["--ls-init", "32", "--val-images", "100", "--max-images", "6400"]


def in_tmpfs(script: str, tmp_path: Path, *, size: str = "64m", options: str = "") -> dict:
    """Run Python ``script`` in a private mount namespace where ``MNT`` (a path in the script's
    globals) is a fresh tmpfs of ``size``; returns what the script printed as JSON."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(f"MNT = {str(mnt)!r}\nTRAIN = {TRAIN!r}\n" + textwrap.dedent(script))
    mount = f"mount -t tmpfs -o size={size}{',' + options if options else ''} tmpfs {mnt}"
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" "$@"', sys.executable, driver],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("snnet train: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_keeps_the_last_checkpoint_and_resumes(tmp_path):
    result = in_tmpfs(
        """
        import json, os, shutil, subprocess, sys, time
        run = os.path.join(MNT, "run")
        args = [*TRAIN, "--out", run, "--epochs", "3", "--save-every", "5"]
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        while not os.path.exists(os.path.join(run, "train.json")):  # the first checkpoint
            time.sleep(0.05)
        time.sleep(0.5)
        try:  # the disk fills up (the run's own saves may have filled it already)
            with open(os.path.join(MNT, "filler"), "wb") as f:
                while True:
                    f.write(b"\\0" * (1 << 16))
                    f.flush()
        except OSError:
            pass
        err = proc.communicate()[1]
        kept = json.load(open(os.path.join(run, "train.json")))
        import torch
        state = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)
        os.remove(os.path.join(MNT, "filler"))
        again = subprocess.run([*args, "--resume"], capture_output=True, text=True)
        print(json.dumps({"rc": proc.returncode, "err": err, "kept": kept["step"],
                          "state": state["step"], "again": again.returncode,
                          "out": again.stdout, "again_err": again.stderr[-2000:]}))
        """,
        tmp_path,
    )
    line = one_line(result["err"])
    assert result["rc"] == 2 and "No space left on device" in line, result["err"]
    assert "free some space or write elsewhere" in line and "is kept" in line
    assert result["kept"] == result["state"] >= 1  # the checkpoint and its record agree
    assert result["again"] == 0, result["again_err"]
    assert "trained 600 steps" in result["out"]


@pytest.mark.slow
def test_a_read_only_out_is_one_line_before_anything_runs(tmp_path):
    result = in_tmpfs(
        """
        import json, os, subprocess
        done = subprocess.run([*TRAIN, "--out", os.path.join(MNT, "run"), "--steps", "2"],
                              capture_output=True, text=True)
        print(json.dumps({"rc": done.returncode, "err": done.stderr, "files": os.listdir(MNT)}))
        """,
        tmp_path,
        options="ro",
    )
    line = one_line(result["err"])
    assert result["rc"] == 2 and "read-only file system" in line and "--out" in line, line
    assert "scoring the anchors" not in result["err"]  # refused before any work
    assert result["files"] == []


@pytest.mark.slow
def test_too_little_free_space_is_refused_up_front(tmp_path):
    result = in_tmpfs(
        """
        import json, os, subprocess
        done = subprocess.run([*TRAIN, "--out", os.path.join(MNT, "run"), "--steps", "2"],
                              capture_output=True, text=True)
        print(json.dumps({"rc": done.returncode, "err": done.stderr, "files": os.listdir(MNT)}))
        """,
        tmp_path,
        size="600k",
    )
    line = one_line(result["err"])
    assert result["rc"] == 2 and "MiB of checkpoints but only" in line, line
    assert result["files"] == []


def test_a_file_as_out_is_one_line_and_kept(tmp_path, capsys):
    from snnet.cli import main

    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    for target in (out, out / "run"):
        assert main(["train", "fmnist", "--out", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is a file, not a directory" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me"
