"""The run directory: one layout, found from whatever a user points a command at."""

import pytest
import torch

import snnet
from families import vit_family
from snnet.cli import main
from snnet.rundir import RunDir


@pytest.fixture(scope="module")
def net() -> snnet.SNNet:
    return snnet.SNNet(vit_family()[:2]).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_layout_names_every_file(tmp_path):
    run = RunDir(tmp_path)
    assert run == RunDir(str(tmp_path)) and hash(run) == hash(RunDir(tmp_path))
    assert (run.model, run.checkpoint, run.train_record, run.train_log) == (
        tmp_path / "model",
        tmp_path / "checkpoint.pt",
        tmp_path / "train.json",
        tmp_path / "steps.csv",
    )
    assert (run.results, run.results_csv, run.plot, run.summary) == (
        tmp_path / "results.json",
        tmp_path / "results.csv",
        tmp_path / "pareto.png",
        tmp_path / "summary.json",
    )


@pytest.mark.parametrize(
    "layout, model, training",
    [
        ("saved", ".", "."),  # snnet.save alone: the directory is its own model
        ("run", "model", "."),  # snnet train --out / snnet demo --out
        ("one", "deit", "."),  # a directory holding one saved network
    ],
)
def test_find_opens_every_layout_snnet_wrote(tmp_path, net, layout, model, training):
    root = tmp_path / layout
    snnet.save(net, root / model)
    run = RunDir.find(root)
    assert run.model.resolve() == (root / model).resolve()
    assert run.training.resolve() == (root / training).resolve()
    assert run.results == root / "results.json"  # results go where the command was pointed
    assert _same(snnet.load(root), net)  # snnet.load takes any of them


def test_find_says_what_to_give_instead(tmp_path, net):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*snnet\.save"):
        RunDir.find(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        RunDir.find(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json.*snnet demo"):
        RunDir.find(tmp_path / "empty")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no saved network yet.*--resume"):
        RunDir.find(tmp_path / "started")
    snnet.save(net, tmp_path / "two" / "a")
    snnet.save(net, tmp_path / "two" / "b")
    with pytest.raises(ValueError, match=r"several models \(a, b\)"):
        RunDir.find(tmp_path / "two")


def test_export_finds_the_model_of_a_run(tmp_path, net, capsys):
    snnet.save(net, RunDir(tmp_path / "run").model)
    out = tmp_path / "deploy"
    assert main(["export", str(tmp_path / "run"), "--stitch", "0:1-1:2", "--out", str(out)]) == 0
    model = snnet.load_stitch(out)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        assert torch.equal(model(x), net(x, stitch="0:1-1:2"))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--img-size", "0", "--img-size: must be a whole number >= 1, got 0"),
        ("--num-classes", "-3", "--num-classes: must be a whole number >= 1, got -3"),
        ("--kernel", "0", "--kernel: must be a whole number >= 1"),
        ("--stride", "0", "--stride: must be a whole number >= 1"),
        ("--stages", "-1", "--stages: must be a whole number >= 0"),
        ("--img-size", "big", "--img-size: must be a whole number, got 'big'"),
    ],
)
def test_bad_family_arguments_are_refused_when_parsed(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["stitches", "vit_tiny_patch16_224", "vit_small_patch16_224", option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_commands_find_the_model_of_a_training_or_demo_run(tmp_path):
    net = snnet.SNNet(vit_family()[:2])
    for layout in ("saved", "run/model"):
        snnet.save(net, tmp_path / layout)
        assert RunDir.find(tmp_path / layout.split("/")[0]).model == tmp_path / layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="snnet demo"):
        RunDir.find(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir.find(tmp_path / "nowhere")
