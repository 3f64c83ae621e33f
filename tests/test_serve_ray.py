"""The Ray Serve deployment of the serving core, two local replicas over HTTP (slow: Ray's start
costs tens of seconds). A second application with slow batches and a queue of two images per
replica checks that each replica refuses what its own queue cannot take and drains on shutdown."""

from __future__ import annotations

import io
import time
from collections import Counter
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

    run = make_run(tmp_path_factory.mktemp("ray") / "run", front=["0", "0:5-1:6", "1", "2"])
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ray.init(
        num_cpus=4,  # logical: two applications of two replicas, one CPU each
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"run": str(run), "num_replicas": "2", "max_wait_ms": "20"}), name="snnet")
    # batches wait 4 s to fill 64 images, each replica's queue takes 2: a burst overflows both
    slow = {"num_replicas": "2", "max_batch": "64", "max_wait_ms": "4000", "max_queue": "2"}
    serve.run(build({"run": str(run), **slow}), name="slow", route_prefix="/slow")
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


def _post_slow(url: str, i: int) -> httpx.Response:
    return httpx.post(
        f"{url}/slow/", content=png(i), headers={"content-type": "image/png"}, timeout=120
    )


def test_each_replica_refuses_what_its_own_queue_cannot_take(ray_app):
    url, _ = ray_app
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _post_slow(url, i), range(12)))
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 503}, [r.text for r in answers]
    assert 2 <= codes[200] <= 4 and codes[503] >= 8  # two replicas, two images each
    per_replica = Counter(r.json()["replica"] for r in answers if r.status_code == 200)
    assert max(per_replica.values()) <= 2
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1


def test_a_replica_shut_down_answers_the_requests_it_holds(ray_app):
    from ray import serve

    url, _ = ray_app
    with ThreadPoolExecutor(2) as pool:
        # two requests wait in the replicas' batches (4 s) while the application is deleted
        futures = [pool.submit(_post_slow, url, i) for i in range(2)]
        time.sleep(1.5)
        assert not any(f.done() for f in futures)
        serve.delete("slow")  # blocks until the replicas are gone
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert "slow" not in serve.status().applications  # gone, not merely waiting
