"""Take ``docs/figures/tensorboard_explain.png``: a real TensorBoard server, on a real run with
the gradient audit on, in a headless browser. Not run in CI.

    python experiments/screenshot_tensorboard.py --python /work/venvs/new/bin/python

Run it with a Python that has ``playwright`` (``pip install playwright pillow``), and point
``--python`` at one that has manualgrad and TensorBoard (they need not be the same). The
browser is the system's Chromium (Debian: ``apt-get install chromium``), passed to playwright
as ``--chromium``: playwright's own browser download is not needed.

It trains ``experiments/mlp_sine.yaml`` for a few epochs with the audit every 10 steps into a
temporary folder, serves it with TensorBoard on 127.0.0.1, and stacks two views into one
image: the Time Series dashboard filtered to ``audit/`` (the per-op local differences
``audit/op_max_abs_diff/<Function>`` and the histograms ``audit/grad/<parameter>``), and the
Text dashboard (``audit/explain``: the explanation of the first audited step).
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(python: str, workdir: Path) -> Path:
    (workdir / "experiments").symlink_to(ROOT / "experiments")
    args = [
        "--config=experiments/mlp_sine.yaml",
        "--trainer.max_epochs=4",
        "--gradient_audit.every_n_steps=10",
        "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu",
    ]
    subprocess.run([python, "-m", "manualgrad", "fit", *args], cwd=workdir, check=True)
    return workdir / "lightning_logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(python: str, logdir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            python,
            "-m",
            "tensorboard.main",
            f"--logdir={logdir}",
            f"--port={port}",
            "--host=127.0.0.1",
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("TensorBoard did not start")


def shoot(port: int, chromium: str, out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.goto(base + "#timeseries")
        page.wait_for_selector("input[placeholder^='Filter tags']", timeout=60_000)
        page.get_by_role("button", name="Settings").click()  # close the settings pane
        page.locator("input[placeholder^='Filter tags']").fill("audit/(op_|grad/net.0)")
        page.keyboard.press("Escape")  # close the tag suggestions
        page.mouse.click(5, 990)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(8000)  # the cards load their data
        series = page.screenshot()
        page.goto(base + "#text")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(4000)
        text = page.screenshot(clip={"x": 0, "y": 0, "width": 1800, "height": 800})
        browser.close()
    images = [Image.open(io.BytesIO(b)) for b in (series, text)]
    canvas = Image.new("RGB", (images[0].width, sum(i.height for i in images)), "white")
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (0, images[0].height))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="python", help="has manualgrad and TensorBoard")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/figures/tensorboard_explain.png")
    parser.add_argument("--logdir", type=Path, help="serve these logs instead of training")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logdir = options.logdir or train(options.python, Path(tmp))
        port = free_port()
        server = serve(options.python, logdir, port)
        try:
            shoot(port, options.chromium, options.out)
        finally:
            server.kill()
    print(f"Wrote {options.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
