"""The Ray Serve deployment of the serving core, two local replicas over HTTP (slow: Ray's start
costs tens of seconds)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

import snnet
from test_serve import SRC, free_port, make_run, png

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    import ray
    from ray import serve

    from snnet.serve.ray import build

    run = make_run(tmp_path_factory.mktemp("ray") / "run")
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"run": str(run), "num_replicas": "2", "max_wait_ms": "20"}), name="snnet")
    yield f"http://127.0.0.1:{port}", run
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_answer_like_the_network(ray_app):
    url, run = ray_app
    net = snnet.load(run / "model").eval()
    from snnet.serialize import read_config
    from snnet.serve.model import preprocessing

    prep = preprocessing(net, read_config(run / "model"))

    def post(i: int) -> httpx.Response:
        return httpx.post(
            f"{url}/",
            content=png(i),
            headers={"content-type": "image/png"},
            params={"top_k": 10},
            timeout=120,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(48)))
    assert [r.status_code for r in answers] == [200] * 48, answers[0].text
    assert len({r.json()["replica"] for r in answers}) == 2  # both replicas served
    assert max(p["batch_size"] for r in answers for p in r.json()["predictions"]) > 1  # batched
    for i, r in enumerate(answers[:6]):
        pred = r.json()["predictions"][0]
        with torch.inference_mode():
            want = net(prep(Image.open(io.BytesIO(png(i))))[None], stitch=pred["stitch"]).softmax(
                -1
            )[0]
        got = torch.zeros(10)
        for t in pred["top"]:
            got[t["index"]] = t["prob"]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    bad = httpx.post(f"{url}/", content=b"nope", headers={"content-type": "image/png"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_an_image"
