"""The live page at `/` in a real headless browser (Debian's chromium via chromedriver): it loads
offline, draws the front, latency and requests per stitch, and follows a stitch switch."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_serve import Server, make_run, png

httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (./run tests installs them)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="snnet-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("page") / "run")
    s = Server(run, "--stitch", "2", "--no-trace", log=tmp_path_factory.mktemp("log") / "page.log")
    yield s
    s.stop()


def _wait(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: condition(d), message=what
    )


INK = """
const c = document.getElementById(arguments[0]);
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
return n;
"""


def test_the_page_draws_the_front_and_follows_a_stitch_switch(server, browser):
    for i in range(5):
        httpx.post(
            f"{server.url}/v1/predict", content=png(i), headers={"content-type": "image/png"}
        ).raise_for_status()
    browser.get(server.url + "/")
    by_id = lambda d, name: d.find_element("id", name)  # noqa: E731
    _wait(browser, lambda d: by_id(d, "current-stitch").text == "2", "the page shows stitch 2")
    pareto = by_id(browser, "pareto")
    assert pareto.get_attribute("data-points") == "71"
    assert pareto.get_attribute("data-highlighted") == "2"
    _wait(
        browser,
        lambda d: int(by_id(d, "latency-chart").get_attribute("data-points") or 0) >= 1,
        "latency history drawn",
    )
    assert by_id(browser, "per-stitch").get_attribute("data-bars") == "1"
    for canvas in ("pareto", "latency-chart", "per-stitch"):
        assert browser.execute_script(INK, canvas) > 500, f"{canvas} is blank"
    assert by_id(browser, "error").text == ""
    # offline: everything the page loaded came from the server itself
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and all(u.startswith(server.url) for u in urls)

    # switch the stitch on the server: the page follows without a reload
    before = browser.execute_script(INK, "pareto")
    updates = int(browser.find_element("tag name", "body").get_attribute("data-updates"))
    r = httpx.put(f"{server.url}/v1/stitch", json={"stitch": "0"})
    assert r.json() == {"stitch": "0"}
    _wait(browser, lambda d: by_id(d, "current-stitch").text == "0", "the page shows stitch 0")
    assert by_id(browser, "pareto").get_attribute("data-highlighted") == "0"
    assert int(browser.find_element("tag name", "body").get_attribute("data-updates")) > updates
    httpx.post(
        f"{server.url}/v1/predict", content=png(9), headers={"content-type": "image/png"}
    ).raise_for_status()
    _wait(
        browser,
        lambda d: by_id(d, "per-stitch").get_attribute("data-bars") == "2",
        "requests of both stitches drawn",
    )
    assert browser.execute_script(INK, "pareto") > 0 and before > 0
    assert by_id(browser, "per-stitch").get_attribute("data-labels") == "0 2"
    shots = Path(os.environ.get("SNNET_SCREENSHOTS", tempfile.gettempdir()))
    browser.save_screenshot(str(shots / "serve-page-fixed.png"))


# -- the page read from a screenshot, on a server holding an SLO ------------------------------------
def _shot(element) -> np.ndarray:
    """What the browser drew for ``element``, as RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"), np.int16)


def _near(pixels: np.ndarray, hex_color: str, tol: int = 40) -> np.ndarray:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(pixels - rgb).sum(axis=-1) <= tol


@pytest.fixture(scope="module")
def slo_server(tmp_path_factory):
    """The ONNX Runtime server of a four-stitch front, holding a 50 ms SLO (it starts fast)."""
    pytest.importorskip("onnxruntime")
    from fronts import demo_front

    root = tmp_path_factory.mktemp("page-slo")
    _, front = demo_front(tmp_path_factory, root / "demo")
    s = Server(front, "--slo-ms", "50", log=root / "slo.log")
    yield s
    s.stop()


def test_the_charts_read_at_a_glance(slo_server, browser, tmp_path):
    stitches = ["0", "0:5-1:6", "2"]
    for i in range(12):
        httpx.post(
            f"{slo_server.url}/v1/predict",
            params={"stitch": stitches[i % 3]},
            content=png(i),
            headers={"content-type": "image/png"},
        ).raise_for_status()
    browser.set_window_size(1400, 1100)
    browser.get(slo_server.url + "/")
    by_id = lambda d, name: d.find_element("id", name)  # noqa: E731
    _wait(
        browser,
        lambda d: int(by_id(d, "latency-chart").get_attribute("data-points") or 0) >= 2,
        "two seconds of latency history drawn",
    )
    shots = Path(os.environ.get("SNNET_SCREENSHOTS", tmp_path))
    browser.save_screenshot(str(shots / "serve-page.png"))
    # the requests chart names its stitches, fastest first, instead of numbering the bars
    rows = httpx.get(f"{slo_server.url}/v1/stitches").json()["stitches"]  # by latency
    fastest_first = [r["stitch"] for r in rows if r["stitch"] in stitches]
    per_stitch = by_id(browser, "per-stitch")
    assert per_stitch.get_attribute("data-labels") == " ".join(fastest_first)
    # the SLO line runs across the latency chart, and the p99 line is drawn beside it
    latency = _shot(by_id(browser, "latency-chart"))
    slo_rows = _near(latency, "#c0392b").sum(axis=1)
    assert slo_rows.max() > 0.3 * latency.shape[1], "no SLO line across the chart"
    assert _near(latency, "#d35400").sum() > 100, "no p99 line"
    # every chart has text along its axes (tick labels and titles), not only marks
    for name in ("pareto", "latency-chart", "per-stitch"):
        px = _shot(by_id(browser, name))
        dark = (px.sum(axis=-1) < 200).sum(axis=0)  # dark ink per column: text and axes
        assert (dark[: px.shape[1] // 12] > 0).sum() > 10, f"{name}: no y-axis labels"
