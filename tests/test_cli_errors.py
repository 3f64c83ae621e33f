"""The CLI's error contract, for every bad input a user can give: a non-zero exit, one line on
stderr that names the fix, no traceback, and no file on disk changed.

To add a case, append ``(command line, fragment of the expected message)`` to ``CASES``; words in
braces name the paths that :func:`workspace` prepares (add one there if a case needs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import snnet
from families import FAMILIES, vit_family
from snnet.cli import COMMANDS, main
from snnet.data import fashion_mnist, write_image_folder
from snnet.measure.results import Results

CASES = [
    # -- evaluate: outputs are checked before the evaluation, results must be this network's
    ("evaluate {net} --data {images} --out {file}/x.json", "file is not a directory"),
    ("evaluate {net} --data {images} --out {readonly}/r.json", "permission denied"),
    ("evaluate {net} --data {images} --out {folder}", "folder is a directory"),
    ("evaluate {net} --data {images} --out {other}", "results are for another network"),
    ("evaluate {net} --data {images} --out {bad}", "not valid JSON"),
    ("evaluate {net} --data {images} --stitches 7", "names anchor 7"),
    ("evaluate {net} --data {images} --stitches 0:9-1:0", "not in this network"),
    ("evaluate {net} --data {images} --batch-size 0", "batch_size must be at least 1"),
    ("evaluate {net} --data {images} --max-images 0", "max_images must be at least 1"),
    ("evaluate {net} --data {tmp}/nowhere", "does not exist"),
    ("evaluate {tmp}/nowhere", "does not exist"),
    ("evaluate {images}", "no config.json"),
    ("evaluate {net}", "pass --data PATH"),
    ("evaluate {net} --batch-size x", "invalid int value: 'x'"),
    # -- latency
    ("latency {net} --results {other}", "results are for another network"),
    ("latency {net} --results {readonly}/r.json", "permission denied"),
    ("latency {net} --results {file}/r.json", "file is not a directory"),
    ("latency {net} --repeats 0", "repeats must be at least 1"),
    ("latency {net} --batch-size 0", "batch_size must be at least 1"),
    # -- select: budgets, and results that cannot answer them
    ("select --results {measured} --max-gmacs -1", "max_gmacs must be a number above 0"),
    ("select --results {measured} --max-gmacs nan", "max_gmacs must be a number above 0"),
    ("select --results {measured} --min-top1 150", "min_top1 is a percentage"),
    ("select --results {measured} --max-gmacs 1e-9", "no stitch fits 1e-09 GMACs; the cheapest"),
    ("select --results {measured}", "give a budget"),
    ("select --results {empty} --max-gmacs 1", "no results"),
    ("select --results {other} --max-latency-ms 1", "snnet latency"),
    ("select --results {tmp}/nowhere.json --max-gmacs 1", "does not exist"),
    ("select --results {folder} --max-gmacs 1", "folder is a directory"),
    ("select --results {net}/config.json --max-gmacs 1", "not an snnet results file"),
    ("select --results {measured} --cost top1 --min-top1 1", "invalid choice: 'top1'"),
    # -- plot
    ("plot {tmp}/missing.json", "does not exist"),
    ("plot {bad}", "not valid JSON"),
    ("plot {measured} --out {file}/p.png", "file is not a directory"),
    ("plot {measured} --out {readonly}/p.png", "permission denied"),
    ("plot {measured} --cost latency_ms", "run `snnet latency"),
    ("plot {other}", "run `snnet evaluate"),
    # -- export
    ("export {net} --stitch 0:3-1:0 --out {tmp}/o", "not in this network"),
    ("export {net} --out {tmp}/o", "give --stitch"),
    ("export {net} --max-gmacs 1 --out {tmp}/o", "results.json does not exist"),
    ("export {net} --front --stitch 0 --out {tmp}/o", "--stitch one: give one of them"),
    ("export {net} --front --stitches 0 1 --out {tmp}/o", "give --front or --stitches, not"),
    ("export {net} --stitches 0 1 --max-gmacs 1 --out {tmp}/o", "takes no budget (--max-gmacs)"),
    ("export {net} --front --out {tmp}/o", "results.json does not exist"),
    ("export {net} --front --results {other} --out {tmp}/o", "results are for another network"),
    ("export {net} --front --results {costs} --out {tmp}/o", "run `snnet evaluate"),
    ("export {net} --stitches 0 0 --out {tmp}/o", "stitch 0 is listed twice"),
    ("export {net} --stitches 0 0:3-1:0 --out {tmp}/o", "not in this network"),
    ("export {net} --stitches 0 1 --out {measured}", "is a file"),
    # -- train: every input is checked before anything is written
    ("train fmnist --out {tmp}/run --lr inf", "lr must be a finite number, got inf"),
    ("train fmnist --out {tmp}/run --min-lr nan", "min_lr must be a finite number, got nan"),
    ("train fmnist --out {tmp}/run --save-every -1", "--save-every must be >= 0 steps"),
    ("train fmnist --out {tmp}/run --workers -1", "--workers must be >= 0 data-loader processes"),
    (
        "train fmnist --out {tmp}/run --num-classes 5",
        "predicts 10 classes and its classifier cannot",
    ),
    ("train fmnist --out {tmp}/run --img-size 32", "takes 1×28×28 images and cannot be resized"),
    ("train fmnist --out {tmp}/run --img-size 0", "--img-size: must be a whole number >= 1, got 0"),
    (
        "train deit_tiny_patch16_224 deit_small_patch16_224 --out {tmp}/run --workers -1",
        "--workers must be >= 0",
    ),
    ("train fmnist --out {file}", "is a file, not a directory"),
    ("train fmnist --out {file}/run", "is a file, not a directory"),
    ("train fmnist --out {truncated_run} --resume", "start a new run in another --out"),
    ("train fmnist --out {tmp}/nowhere --resume", "--resume: no checkpoint at"),
    # -- saved networks that are damaged, and writes that would destroy one
    ("evaluate {damaged} --data {images}", "save it again"),
    ("evaluate {notjson} --data {images}", "not valid JSON"),
    ("export {net} --stitch 0 --out {measured}", "is a file"),
    # -- the command line itself
    ("nosuchcommand", "invalid choice: 'nosuchcommand'"),
    ("", "the following arguments are required: COMMAND"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Paths the cases name: a saved network, its results, other files and folders."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    net = snnet.SNNet(vit_family()).eval()
    paths = {"tmp": tmp, "net": snnet.save(net, tmp / "net")}
    paths["images"] = write_image_folder(fashion_mnist("test"), tmp / "images", limit=64)
    measured = Results.for_network(net)
    for i, r in enumerate(sorted(measured, key=lambda r: r.gmacs)):
        measured.update(r.stitch, top1=50.0 + i)
    paths["measured"] = measured.save(tmp / "measured.json")
    paths["costs"] = Results.for_network(net).save(tmp / "costs.json")  # nothing measured
    other = Results.for_network(snnet.SNNet(FAMILIES["sequential"][0]()))
    paths["other"] = other.save(tmp / "other.json")
    paths["empty"] = tmp / "empty.json"
    paths["empty"].write_text(json.dumps({"format": "snnet-results", "version": 1, "records": []}))
    paths["bad"] = tmp / "bad.json"
    paths["bad"].write_text("{")
    paths["file"] = tmp / "file"
    paths["file"].write_text("a file where a folder is expected")
    paths["folder"] = tmp / "folder"
    paths["folder"].mkdir()
    paths["truncated_run"] = tmp / "truncated_run"
    paths["truncated_run"].mkdir()
    (paths["truncated_run"] / "checkpoint.pt").write_bytes(b"PK\x03\x04 a torch file cut short")
    paths["damaged"] = snnet.save(net, tmp / "damaged")
    weights = paths["damaged"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    paths["notjson"] = snnet.save(net, tmp / "notjson")
    (paths["notjson"] / "config.json").write_text("{ not json")
    paths["readonly"] = tmp / "readonly"
    paths["readonly"].mkdir()
    paths["readonly"].chmod(0o555)
    yield paths
    paths["readonly"].chmod(0o755)


@pytest.fixture
def readonly_binds(workspace, monkeypatch):
    """Root ignores permission bits: there, refuse new files and folders in ``{readonly}`` as
    the kernel does for everyone else (at the two calls that create them)."""
    if os.geteuid() != 0:
        return
    ro = workspace["readonly"]

    def refuse(where) -> None:
        if Path(where).resolve().is_relative_to(ro.resolve()):
            raise PermissionError(13, "Permission denied", str(where))

    real_open, real_mkdir = os.open, os.mkdir

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            refuse(Path(path).parent)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(Path(path).parent)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden temp files too) with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.blake2b(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("command", "message"), CASES, ids=[c for c, _ in CASES])
def test_a_bad_input_ends_in_one_line_naming_the_fix(
    command, message, workspace, readonly_binds, capsys
):
    argv = [arg.format(**workspace) for arg in shlex.split(command)]
    before = snapshot(workspace["tmp"])
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refused the command line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line
    assert "Traceback" not in err and message in err, err
    assert snapshot(workspace["tmp"]) == before  # nothing written, nothing destroyed


COMMAND_LINES = [
    "",
    "train",
    "demo",
    "evaluate",
    "latency",
    "select",
    "plot",
    "zoo",
    "stitches",
    "export",
    "serve",
    "importance",
]


@pytest.mark.parametrize("command", COMMAND_LINES)
def test_help_answers_without_importing_torch(command):
    assert sorted(COMMAND_LINES[1:]) == sorted(COMMANDS)  # every command is listed here
    argv = [*command.split(), "--help"]
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['snnet', *{argv!r}]\n"
        "try:\n    runpy.run_module('snnet', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code, file=sys.stderr)\n"
    )
    src = str(Path(snnet.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.stderr.strip().splitlines()[-1] == "False 0", done.stderr
    assert "usage: snnet" in done.stdout
    if command:  # the command's own options are all there
        assert "--" in done.stdout.split("options:")[1], done.stdout
    else:
        assert all(name in done.stdout for name in COMMANDS)
