"""`snnet serve` of an exported front on ONNX Runtime: the same answers as the network, the same
API and errors as the torch server, no torch in the serving process, batch times measured once
and kept beside the artifact. The front file is made by ``fronts.py`` (``snnet export --front``, the format of
`snnet export RUN --front --format onnx`)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snnet
from fronts import DEMO_FRONT
from test_serve import AUTH, BAD, KEY, SRC, Server, png, predict

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow  # real server processes, and a front exported to ONNX

STITCHES = DEMO_FRONT


@pytest.fixture(scope="module")
def front(tmp_path_factory) -> tuple[Path, Path]:
    from fronts import demo_front

    return demo_front(tmp_path_factory, tmp_path_factory.mktemp("ort") / "demo")


def test_each_stitch_answers_as_the_network_does(front):
    from snnet.serialize import read_config
    from snnet.serve.model import preprocessing
    from snnet.serve.ort import OrtBackend

    run, directory = front
    backend = OrtBackend.load(directory)
    assert [str(r.stitch) for r in backend.results] == STITCHES
    assert backend.classes[0] == "t-shirt_top"
    net = snnet.load(run / "model").eval()
    prep = preprocessing(net, read_config(run / "model"))
    images = [Image.open(io.BytesIO(png(i))) for i in range(3)]
    pixels = [backend.pixels(img) for img in images]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.uint8 for p in pixels)
    for stitch in STITCHES:
        s = backend.check(stitch)
        got = backend.run(pixels, s)
        with torch.inference_mode():
            want = net(torch.stack([prep(img) for img in images]), stitch=s).softmax(-1)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
        tops = [a["top"] for a in backend.answers(got, 3)]
        assert [t["index"] for t in tops[0]] == want[0].topk(3).indices.tolist()
    with pytest.raises(ValueError, match="holds the stitches"):
        backend.check("0:3-1:4")


def test_batch_times_are_measured_once_per_device_and_kept(front, tmp_path):
    from snnet.serve import timings

    stitches = [snnet.Stitch.parse(s) for s in STITCHES]
    calls = []
    run = lambda s, n: calls.append((s, n))  # noqa: E731
    path = tmp_path / timings.FILE
    here = timings.device("onnxruntime", "1.0", threads=1)
    first = timings.kept(path, here, stitches, (1, 8), run)
    assert set(first) == {1, 8} and set(first[1]) == set(stitches) and calls
    calls.clear()
    assert timings.kept(path, here, stitches, (1, 8), run) == first and not calls
    timings.kept(path, {**here, "threads": 2}, stitches, (1,), run)  # another device: again
    assert calls and json.loads(path.read_text())["device"]["threads"] == 2


@pytest.fixture(scope="module")
def server(front, tmp_path_factory):
    _, directory = front
    args = ["--slo-ms", "200", "--max-body-mb", "1", "--max-images", "4", "--api-key", KEY]
    first = Server(directory, *args, log=tmp_path_factory.mktemp("log") / "first.log")
    first.stop()
    assert "measured" in first.log.read_text()  # the first start on this machine measures
    s = Server(directory, *args, log=tmp_path_factory.mktemp("log") / "ort.log")
    yield s
    s.stop()


def test_the_server_runs_without_torch_and_reads_the_kept_batch_times(server):
    r = predict(server.url, png(1), top_k=3)
    assert r.status_code == 200, r.text
    assert r.json()["stitch"] in STITCHES and len(r.json()["predictions"][0]["top"]) == 3
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps
    assert "measured" not in server.log.read_text()  # read from latency.json beside the front
    status = httpx.get(f"{server.url}/v1/status", headers=AUTH).json()
    assert status["mode"] == "slo" and status["slo_front"]
    stitches = httpx.get(f"{server.url}/v1/stitches", headers=AUTH).json()
    assert {r["stitch"] for r in stitches["stitches"]} == set(STITCHES)
    assert (
        "snnet_request_latency_seconds_bucket"
        in httpx.get(f"{server.url}/metrics", headers=AUTH).text
    )


@pytest.mark.parametrize("code", list(BAD))
def test_bad_input_gets_the_same_json_4xx(server, code):
    r = BAD[code](server.url)
    if code == "unknown_stitch":  # a stitch of the network that the front does not hold
        assert predict(server.url, png(), stitch="0:3-1:4").json()["error"]["code"] == code
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert predict(server.url, png(7)).status_code == 200


def test_the_serving_process_imports_no_torch(front):
    """The whole path in one process: load the front, build the app, answer a request."""
    _, directory = front
    probe = f"""
import asyncio, io, sys
import numpy as np
from PIL import Image
from snnet.serve.app import create_app
from snnet.serve.backend import load_backend
from snnet.serve.settings import ServeSettings
import httpx

app = create_app(load_backend({str(directory)!r}), ServeSettings(slo_ms=50))
buf = io.BytesIO(); Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, "PNG")

async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/v1/predict", content=buf.getvalue(),
                             headers={{"content-type": "image/png"}})
            assert r.status_code == 200, r.text

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_a_damaged_front_one_without_onnx_or_another_kind_is_refused_with_the_fix(front, tmp_path):
    import shutil

    from snnet.serve.ort import OrtBackend

    _, directory = front
    copy = tmp_path / "front"
    shutil.copytree(directory, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match"):
        OrtBackend.load(copy)  # a damaged artifact is never loaded
    (copy / "model.onnx").unlink()
    with pytest.raises(ValueError, match="--format onnx"):
        OrtBackend.load(copy)
    with pytest.raises(FileNotFoundError, match="written by snnet export --front"):
        OrtBackend.load(tmp_path)
