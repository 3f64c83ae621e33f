"""The commands on dense tasks: snnet train --task, evaluate (every stitch in one pass, the task's
metrics), select by the task's metric in its direction, export with the head, and the dense demo.
End-to-end runs use --steps and are marked slow; option checks are fast."""

import json

import pytest
import torch

import snnet
from snnet.cli import main
from snnet.data.canvas import fashion_mnist_canvas
from snnet.data.dense import write_dense_folder
from snnet.measure.results import Record, Results
from snnet.measure.select import select
from snnet.rundir import RunDir
from snnet.stitch import Stitch

TRAIN = ["train", "fmnist", "--img-size", "56", "--threads", "1", "--quiet"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "segmentation", "--num-classes", "11", "--distill", "end"], "--distill distils"),
        (["--task", "segmentation", "--num-classes", "11", "--teacher", "zoo=fmnist_vit_s"], "--teacher"),
        (["--task", "depth", "--label-smoothing", "0.2"], "--label-smoothing smooths class labels"),
        (["--task", "depth", "--num-classes", "3"], "--num-classes is not an option of --task depth"),
        (["--head", "fpn"], "--head is not an option of --task classification"),
        (["--task", "segmentation"], "segmentation needs 2 or more classes"),
        (["--task", "segmentation", "--classes", "a", "b", "--num-classes", "3"], "but 2 class names"),
        (["--task", "segmentation", "--num-classes", "11", "--augment", "timm"], "--augment light"),
        (["--task", "depth", "--lora-rank", "2"], "parameter-efficient mode"),
    ],
)  # fmt: skip
def test_options_without_a_dense_meaning_are_refused_in_one_line(tmp_path, capsys, extra, message):
    code = main([*TRAIN, "--out", str(tmp_path / "run"), "--steps", "1", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("snnet train: error:") and message in err[-1]
    assert not (tmp_path / "run").exists()


def _record(stitch: str, gmacs: float, **metrics) -> Record:
    return Record(Stitch.parse(stitch), gmacs, 1000, **metrics)


def test_select_knows_which_way_each_metric_is_better():
    seg = Results(
        [_record("0", 1.0, miou=40.0), _record("0:1-1:2", 2.0, miou=45.0), _record("1", 3.0, miou=50.0)],
        network={"task": {"kind": "segmentation", "num_classes": 3}},
    )  # fmt: skip
    assert seg.metric == "miou" and str(select(seg, max_gmacs=2.5).stitch) == "0:1-1:2"
    assert str(select(seg, bound=44).stitch) == "0:1-1:2"  # the cheapest with mIoU >= 44
    depth = Results(
        [_record("0", 1.0, absrel=0.20), _record("0:1-1:2", 2.0, absrel=0.15), _record("1", 3.0, absrel=0.10)],
        network={"task": {"kind": "depth"}},
    )  # fmt: skip
    assert depth.metric == "absrel"
    assert str(select(depth, max_gmacs=2.5).stitch) == "0:1-1:2"  # the lowest AbsRel in budget
    assert str(select(depth, bound=0.16).stitch) == "0:1-1:2"  # the cheapest with AbsRel <= 0.16
    assert [str(r.stitch) for r in depth.pareto()] == ["0", "0:1-1:2", "1"]
    with pytest.raises(ValueError, match=r"no stitch fits at most AbsRel 0.0500"):
        select(depth, bound=0.05)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvases")
    write_dense_folder(fashion_mnist_canvas("train", 96, seed=1), root, "train")
    write_dense_folder(fashion_mnist_canvas("test", 32, seed=1), root, "val")
    return root


@pytest.mark.slow
def test_train_evaluate_select_export_a_segmentation_network(tmp_path, folder, capsys):
    run = tmp_path / "run"
    classes = ["background", *(f"c{i}" for i in range(10))]
    args = [*TRAIN, "--task", "segmentation", "--head", "fpn", "--levels", "2"]
    args += ["--classes", *classes, "--data", str(folder), "--out", str(run)]
    assert main([*args, "--steps", "6", "--batch-size", "16", "--ls-init", "32"]) == 0
    net = snnet.load(run)
    assert net.task.kind == "segmentation" and net.task.levels == 2
    assert net.data_config.classes == tuple(classes) and net.data_config.crop_mode == "squash"
    assert len(net.stitches) == 71  # as many as classification's
    assert main(["evaluate", str(run), "--data", str(folder), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    results = Results.load(RunDir(run).results)
    assert results.metric == "miou" and not results.missing("miou")
    assert not results.missing("pixel_acc") and results.missing("top1") == list(net.stitches)
    assert "mIoU %" in out and "pix. acc %" in out
    assert main(["select", "--results", str(RunDir(run).results), "--max-gmacs", "0.01"]) == 0
    assert "mIoU" in capsys.readouterr().out
    deploy = tmp_path / "deploy"
    assert main(["export", str(run), "--stitch", "0:5-1:6", "--out", str(deploy),
                 "--format", "safetensors", "onnx"]) == 0  # fmt: skip
    model = snnet.load_stitch(deploy)
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x, stitch="0:5-1:6"))


@pytest.mark.slow
def test_the_dense_demos_run_end_to_end(tmp_path, capsys):
    for task, metric in (("segmentation", "miou"), ("depth", "absrel")):
        out = tmp_path / task
        args = ["demo", "--task", task, "--out", str(out), "--steps", "8", "--eval-images", "64"]
        assert main([*args, "--quiet", "--threads", "1"]) == 0
        text = capsys.readouterr().out
        results = Results.load(out / "results.json")
        assert len(results) == 71 and results.metric == metric and not results.missing(metric)
        summary = json.loads((out / "summary.json").read_text())
        assert len(summary["anchors_after"]) == 3 and summary["pareto"]
        assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "Pareto front" in text
        assert snnet.load(out).task.kind == task
    assert main(["demo", "--task", "depth", "--epochs", "2", "--out", str(tmp_path / "x")]) == 2
