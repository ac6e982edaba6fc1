"""Take the MLflow screenshots of docs/ again: Debian's Chromium, headless, on the UI of a finished demo.

    apt-get install -y chromium          # the browser (Playwright's own download is not used)
    python3 -m venv /tmp/shots && /tmp/shots/bin/pip install playwright Pillow   # not project dependencies
    cd /tmp/demo && llama2 run pretrain && llama2 run pretrain --until dedup --set dedup.threshold=0.7
    /tmp/shots/bin/python docs/screenshots.py --store /tmp/demo --mlflow "$(which mlflow)" --out docs/

It serves the store's `mlflow.db` with `mlflow server` on a free loopback port, opens each page
in a fresh browser profile (as a first-time user), waits for it to render and saves it as a
palette PNG. The pages:

    mlflow-landing-default.png  the experiment opened without a workflow in the link: MLflow 3.17's
                                GenAI overview, whatever the experiment's kind tag says
    mlflow-runs.png             the link `llama2 run` logs: the runs table, the demo's run expanded
    mlflow-pretrain-charts.png  the pretrain stage's run, Model metrics searched for "/loss": train/loss
                                and val/loss by step
    mlflow-pretrain-run.png     the same run's overview: description, metrics in logged order, tags
    mlflow-dataset.png          a stage output's dataset drawer: digest, source, profile, schema
    mlflow-model-version.png    llama2-base version 1 in the model registry, linked to its run
    mlflow-compare-dedup.png    the two dedup runs (threshold 0.8 and 0.7) compared
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, sync_playwright

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 860}
TALL = {"width": 1440, "height": 1260}  # the charts: both sections in view
ML = "workflowType=machine_learning"


@contextmanager
def mlflow_ui(store: Path, mlflow: str) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    server = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=store, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def rest(uri: str, endpoint: str, body: dict | None = None) -> dict:
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(url)
    else:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stage_runs(uri: str, experiment: str, stage: str) -> list[dict]:
    """Runs that made `stage`'s output (not cache hits), oldest first."""
    found = rest(uri, "runs/search", {
        "experiment_ids": [experiment], "order_by": ["attributes.start_time ASC"],
        "filter": f"tags.`llama2.stage` = '{stage}' and tags.`llama2.cache_hit` = 'false'"})
    return found.get("runs", [])


def shoot(page: Page, url: str, out: Path, prepare=None, settle_ms: int = 8000) -> None:
    page.goto(url)
    page.wait_for_timeout(settle_ms)
    if prepare:
        prepare(page)
    page.screenshot(path=str(out))
    Image.open(out).convert("RGB").quantize(colors=128).save(out, optimize=True)
    print(f"{out}  {out.stat().st_size // 1024} KiB  ({page.url})")


def close_assistant(page: Page) -> None:
    """Close the MLflow Assistant panel, which takes a third of the width."""
    page.locator('button[aria-label="Close"]').first.click()
    page.wait_for_timeout(500)


def expand_first_parent(page: Page) -> None:
    close_assistant(page)
    page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').last.click()  # the oldest parent
    header = page.locator(".ag-header-cell", has_text="Run Name").last.bounding_box()
    if header:  # widen the Run Name column (drag its right edge) so a parent's name shows whole
        x, y = header["x"] + header["width"] - 2, header["y"] + header["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 90, y, steps=8)
        page.mouse.up()
        page.mouse.move(700, 760)  # away from the header's tooltip
    page.wait_for_timeout(2000)


def dedup_output_drawer(page: Page) -> None:
    """The drawer of a stage's output dataset: digest, source, profile and schema."""
    expand_first_parent(page)
    page.get_by_text("dedup (", exact=False).first.click()
    page.wait_for_timeout(2500)


def loss_curves(page: Page) -> None:
    """MLflow 3.17 orders chart sections alphabetically (counts, ..., train, val): search for the curves."""
    close_assistant(page)
    page.get_by_placeholder("Search metric charts").fill("/loss")
    page.wait_for_timeout(2500)


def params_and_metrics_side_by_side(page: Page) -> None:
    """Fold the plots away and keep only what differs, so the changed key and the counts are in view."""
    close_assistant(page)
    page.get_by_text("Visualizations", exact=True).click()
    page.get_by_text("Show diff only", exact=True).first.click()
    page.wait_for_timeout(1500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="folder holding the demo's mlflow.db and mlartifacts/")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--mlflow", default="mlflow", help="the mlflow command of the project's environment")
    args = parser.parse_args()
    store = args.store.resolve()
    with mlflow_ui(store, args.mlflow) as uri, sync_playwright() as playwright:
        query = urllib.parse.urlencode({"experiment_name": "llama2"})
        experiment = rest(uri, f"experiments/get-by-name?{query}")["experiment"]["experiment_id"]
        pretrain = stage_runs(uri, experiment, "pretrain")[0]["info"]["run_id"]
        dedups = [r["info"]["run_id"] for r in stage_runs(uri, experiment, "dedup")][:2]
        base = f"{uri}/#/experiments/{experiment}"
        pages = [
            ("mlflow-landing-default.png", base, None, VIEWPORT),
            ("mlflow-runs.png", f"{base}?{ML}", expand_first_parent, VIEWPORT),
            ("mlflow-pretrain-charts.png", f"{base}/runs/{pretrain}/model-metrics?{ML}", loss_curves, TALL),
            ("mlflow-pretrain-run.png", f"{base}/runs/{pretrain}?{ML}", close_assistant, VIEWPORT),
            ("mlflow-dataset.png", f"{base}?{ML}", dedup_output_drawer, VIEWPORT),
            ("mlflow-model-version.png", f"{uri}/#/models/llama2-base/versions/1?{ML}", close_assistant, VIEWPORT),
        ]
        if len(dedups) == 2:
            ids = ",".join(f'"{run_id}"' for run_id in dedups)
            pages.append(("mlflow-compare-dedup.png",
                          f"{uri}/#/compare-runs?runs=[{ids}]&experiments=[\"{experiment}\"]&{ML}", params_and_metrics_side_by_side, VIEWPORT))
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        for name, url, prepare, viewport in pages:
            context = browser.new_context(viewport=viewport)  # a fresh profile: no remembered workflow type
            shoot(context.new_page(), url, args.out / name, prepare)
            context.close()
        browser.close()


if __name__ == "__main__":
    main()
