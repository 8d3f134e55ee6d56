"""The Dagster web UI over a real materialized run, driven in headless Chromium.

Debian's chromium + chromedriver (installed by .ci/run); Selenium talks to the system driver,
so nothing is downloaded. Skipped where no chromium is installed.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def webserver(pipeline_run, tmp_path):
    workdir = pipeline_run["workdir"]
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "CLINFUSE_WORKDIR": str(workdir),
        "CLINFUSE_LANDING": str(pipeline_run["landing"]),
    }
    binary = Path(sys.executable).parent / "dagster-webserver"
    command = [str(binary), "-h", "127.0.0.1", "-p", str(port)]
    command += ["-w", str(Path(__file__).resolve().parents[1] / "workspace.yaml")]
    log = (tmp_path / "webserver.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, (tmp_path / "webserver.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "dagster-webserver did not answer"
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # Tall: Dagster's asset list renders only the rows in view (a virtualized list).
        "--window-size=1600,3000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        _dismiss_welcome(driver)
        body = driver.find_element("tag name", "body").text
        if all(t in body for t in texts):
            return body
        assert time.monotonic() < deadline, f"never rendered {texts}; page shows:\n{body[:1500]}"
        time.sleep(0.5)


def _dismiss_welcome(driver) -> None:
    """Dagster's first-visit newsletter dialog covers the page; a person would click Skip."""
    for button in driver.find_elements("xpath", "//button[normalize-space()='Skip']"):
        button.click()


def test_asset_graph_and_an_asset_page_render(webserver, browser, tmp_path):
    browser.get(f"{webserver}/locations/clinfuse/asset-groups/ingest")
    _wait_for_text(browser, ["dicom_index", "recording_index", "labevents", "admissions"])
    _dismiss_welcome(browser)
    time.sleep(2)
    browser.save_screenshot(str(tmp_path / "asset_graph.png"))

    browser.get(f"{webserver}/assets/cohort?view=checks")
    # the check results of the materialized run, not just the check names
    _wait_for_text(browser, ["cohort_is_trainable", "modalities_mostly_present", "Succeeded"])
    _dismiss_welcome(browser)
    browser.save_screenshot(str(tmp_path / "cohort_checks.png"))
    assert (tmp_path / "asset_graph.png").stat().st_size > 10_000
