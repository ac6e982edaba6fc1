"""The annotation page in a real browser: headless Chromium from Debian's packages (`chromium`,
`chromium-driver`; `.ci/run` installs them), driven through WebDriver by Selenium with the system's
chromedriver (nothing downloaded), against the app deployed on Ray Serve as `llama2 annotate` deploys
it. A pair is rated with the mouse, another with the keyboard shortcuts alone."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from infra.serving import served
from operators.annotate.annotators import add_annotator, annotators_file
from operators.annotate.app import shown_first
from operators.annotate.deployment import AnnotateConfig, annotation_application
from tests.annotate.conftest import write_candidates

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                "chromium-driver; .ci/run installs them)")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for a driver online
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_pair_rated_with_the_mouse_and_one_with_the_keyboard_are_saved(ray_local, browser, tmp_path):
    from selenium.webdriver.common.by import By

    ratings = tmp_path / "ratings_v2.jsonl"
    token = add_annotator(annotators_file(ratings), "ana")
    config = AnnotateConfig(round=2, candidates_dir=write_candidates(tmp_path / "candidates_v2"), ratings=ratings,
                            annotators=annotators_file(ratings), double_share=0.0,
                            node_ip=ray_local.util.get_node_ip_address())
    with served(annotation_application(config), "llama2-annotate-test", "127.0.0.1", _free_port()) as url:
        browser.get(f"{url}/login?token={token}")
        first_id = browser.find_element(By.NAME, "candidate_id").get_attribute("value")
        browser.find_element(By.ID, "answer-2").click()
        browser.find_element(By.CSS_SELECTOR, "input[name=rating][value=slightly_better]").click()
        browser.find_element(By.ID, "save").click()
        assert browser.find_element(By.ID, "notice").text == "Saved."

        second_id = browser.find_element(By.NAME, "candidate_id").get_attribute("value")
        body = browser.find_element(By.TAG_NAME, "body")
        for key in ("1", "a", "j", "x"):  # answer 1, significantly better, safety task, both safe
            body.send_keys(key)
        assert "picked" in browser.find_element(By.ID, "answer-1").get_attribute("class")
        body.send_keys("\n")
        assert browser.find_element(By.ID, "notice").text == "Saved."
        assert "2 of 12 candidates rated" in browser.find_element(By.ID, "progress").text
        assert browser.save_screenshot(str(tmp_path / "annotate.png"))

    first, second = [json.loads(line) for line in ratings.read_text().splitlines()]
    other = {"a": "b", "b": "a"}
    assert (first["candidate_id"], first["preferred_answer"], first["rating"], first["kind"]) == (
        first_id, other[shown_first("ana", first_id)], "slightly_better", "helpfulness")
    assert (second["candidate_id"], second["preferred_answer"], second["rating"], second["kind"],
            second["safety_label"]) == (second_id, shown_first("ana", second_id), "significantly_better", "safety",
                                        "both_safe")
    assert Path(tmp_path / "annotate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
