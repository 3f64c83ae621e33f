"""`snnet serve` on dense networks over real HTTP: a segmentation network answers each image
with its label map as a PNG, a depth network with a 16-bit PNG in millimetres, both equal to
the network's own output for the stitch the answer names; the front and the SLO rank stitches
by the task's metric in its direction (AbsRel: lower is better). An exported dense front computes
the network's maps and is served the same way by ONNX Runtime."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import snnet
from snnet.data.anchors import network_preprocessing
from snnet.measure.results import Results
from snnet.serve.maps import decode_png
from snnet.task import Task
from test_serve import AUTH, KEY, Server, make_run, png, predict

pytestmark = pytest.mark.slow  # real server processes
FRONT = ["0", "0:6-1:6", "1", "2"]


def dense_run(path, task: Task):
    """The demo anchors with a shared ``task`` head (random init) as a run whose front is
    :data:`FRONT` (:func:`test_serve.make_run`), and its network."""
    make_run(path, front=FRONT, task=task)
    return path, snnet.load(path / "model").eval()


def expected(net, stitch: str, image: bytes) -> torch.Tensor:
    pre = network_preprocessing(net)
    x = pre.normalize(pre.pixels(Image.open(io.BytesIO(image)))[None])
    with torch.no_grad():
        return net(x, stitch=stitch)


@pytest.mark.parametrize("kind", ["segmentation", "depth"])
def test_a_dense_server_answers_with_the_networks_map(tmp_path, kind):
    task = Task(kind, num_classes=3 if kind == "segmentation" else None, channels=8)
    run, net = dense_run(tmp_path / "run", task)
    server = Server(run, "--slo-ms", "500", "--api-key", KEY, log=tmp_path / "server.log")
    try:
        stitches = httpx.get(f"{server.url}/v1/stitches", headers=AUTH, timeout=30).json()
        assert stitches["metric"] == task.metric
        # the front, read in the metric's direction (AbsRel: lower is better)
        assert [r["stitch"] for r in stitches["front"]] == FRONT
        image = png(seed=3)
        r = predict(server.url, image)
        assert r.status_code == 200, r.text
        [answer] = r.json()["predictions"]
        check_answer(answer, expected(net, answer["stitch"], image)[0], kind)
        # a stitch asked for by name is the one that runs
        r = predict(server.url, image, stitch="0")
        assert r.json()["predictions"][0]["stitch"] == "0"
    finally:
        server.stop()


def check_answer(answer, out: torch.Tensor, kind: str) -> None:
    """``answer`` is the map ``out`` (one image's network output) predicts."""
    if kind == "segmentation":
        labels = decode_png(answer["mask"])
        assert labels.dtype == np.uint8 and labels.shape == (28, 28)
        want = out.argmax(0).numpy()
        assert (labels == want).mean() > 0.999  # a traced forward may round a near-tie apart
        shares = {c["index"]: c["share"] for c in answer["classes"]}
        assert shares == {
            int(i): pytest.approx((want == i).mean(), abs=1e-4) for i in np.unique(want)
        }
    else:
        mm = decode_png(answer["depth"])
        assert mm.dtype == np.uint16 and mm.shape == (28, 28) and answer["units"] == "mm"
        want = np.rint(out.numpy() * 1000)
        assert np.abs(mm.astype(np.int64) - want).max() <= 1


@pytest.mark.parametrize("kind", ["segmentation", "depth"])
def test_a_dense_front_artifact_computes_the_networks_maps_and_serves_them_without_torch(
    tmp_path, kind
):
    from snnet.artifact import read_front_config
    from snnet.export.front import export_front, front_stitches

    task = Task(kind, num_classes=3 if kind == "segmentation" else None, channels=8)
    run, net = dense_run(tmp_path / "run", task)
    results = Results.load(run / "results.json")
    assert list(map(str, front_stitches(results))) == FRONT  # ranked by the task's metric
    exported = ["0:6-1:6", "2"]  # two of them: each stitch's ONNX export takes seconds
    formats = ["onnx", "safetensors"]
    export_front(net, tmp_path / "front", formats, stitches=exported, results=results, atol=1e-5)
    config = read_front_config(tmp_path / "front")
    assert [r["stitch"] for r in config["stitches"]] == exported
    assert config["task"] == task.to_json()
    assert len(config["checked"]["onnx"]) == 2 and max(config["checked"]["onnx"]) <= 1e-5
    smaller = snnet.load(tmp_path / "front")
    assert smaller.task == task and sorted(map(str, smaller.stitches)) == sorted(exported)

    server = Server(tmp_path / "front", "--slo-ms", "500", log=tmp_path / "server.log")
    try:
        stitches = httpx.get(f"{server.url}/v1/stitches", timeout=30).json()
        assert stitches["metric"] == task.metric
        # the front of latency measured here against the metric, in its direction
        front = [r["stitch"] for r in stitches["front"]]
        assert set(front) <= set(exported) and front[-1] == "2"
        image = png(seed=3)
        for stitch in (None, "0:6-1:6"):
            r = predict(server.url, image, **({"stitch": stitch} if stitch else {}))
            assert r.status_code == 200, r.text
            [answer] = r.json()["predictions"]
            assert stitch is None or answer["stitch"] == stitch
            check_answer(answer, expected(net, answer["stitch"], image)[0], kind)
    finally:
        server.stop()
