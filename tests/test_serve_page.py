"""The live page at `/` in a real headless browser (Debian's chromium via chromedriver): it loads
offline, draws the front, latency and requests per stitch, and follows a stitch switch."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

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
