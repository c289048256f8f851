"""Web app latency in a real browser: page load, first live update after Erase, Try a prompt while a job runs.

    python benchmarks/app_latency.py [--repeats 3] [--quick]

Starts `python app.py` on a free port, drives Debian's Chromium with Playwright, and
prints the median and worst of each over `--repeats` tries. Budgets: page load ≤ 2 s,
first live update ≤ 2 s after Erase (ShapesWorld), Try a prompt answers while a job runs.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def start_app(quick: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "TRUST_APP_QUICK": "1" if quick else "0"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("app.py did not start within 2 minutes")


def wait_for_new_picture(page, selector: str, old: str | None, timeout_ms: int) -> None:
    """Wait until the first picture of a component exists and differs from `old` (its previous src)."""
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel + ' img');"
                           " return i !== null && i.getAttribute('src') !== old; }", arg=[selector, old],
                           timeout=timeout_ms)


def first_src(page, selector: str) -> str | None:
    images = page.locator(f"{selector} img")
    return images.first.get_attribute("src") if images.count() else None


def time_try(page, prompt, text: str, timeout_ms: int) -> float:
    """Seconds from a click on Try until the original model's new picture shows."""
    old = first_src(page, "#try-original")
    prompt.fill(text)
    start = time.perf_counter()
    page.click("#try")
    wait_for_new_picture(page, "#try-original", old, timeout_ms)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="tries of each measurement")
    parser.add_argument("--quick", action="store_true", help="small jobs (TRUST_APP_QUICK=1), as the tests use")
    args = parser.parse_args()

    server, url = start_app(args.quick)
    times: dict[str, list[float]] = {"page load": [], "first live update after Erase": [],
                                     "Try a prompt, idle": [], "Try a prompt, while a job runs": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_text("Model shapes").wait_for(timeout=120_000)  # the model is loaded: warm
            prompt = page.locator("#try-prompt textarea, #try-prompt input").first
            for k in range(args.repeats):
                # 1. Page load: a fresh page until the model line and the presets are there
                fresh = browser.new_page(viewport={"width": 1400, "height": 1000})
                start = time.perf_counter()
                fresh.goto(url)
                fresh.get_by_text("Model shapes").wait_for(timeout=60_000)
                times["page load"].append(time.perf_counter() - start)
                fresh.close()
                # 2. Try a prompt with no job running
                times["Try a prompt, idle"].append(time_try(page, prompt, f"a blue star {k}", 60_000))
                # 3. Erase until the first live picture
                old = first_src(page, "#heat")
                start = time.perf_counter()
                page.click("#erase")
                wait_for_new_picture(page, "#heat", old, 60_000)
                times["first live update after Erase"].append(time.perf_counter() - start)
                # 4. Try a prompt while the job runs
                # (the page polls twice a second, so it may show step 1 and then step 7: any step past 1)
                page.locator("#progress").filter(has_text=re.compile(r"step ([2-9]|\d\d+) of")).wait_for(
                    timeout=120_000)
                times["Try a prompt, while a job runs"].append(time_try(page, prompt, f"a red square {k}", 120_000))
                page.click("#stop")
                # The job measures, attacks and draws after "stopped by the user"; until it is done, the next
                # Erase would only be told the server is busy (and wait for a picture that never comes).
                page.locator("#progress").filter(has_text=re.compile(r"\bdone · step")).wait_for(timeout=600_000)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)

    print(f"web app latency, {args.repeats} tries each ({'quick' if args.quick else 'default'} jobs)")
    print("| measurement | median s | worst s | budget |")
    print("|---|---|---|---|")
    budgets = {"page load": "≤ 2 s", "first live update after Erase": "≤ 2 s"}
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} | {budgets.get(name, 'answers')} |")


if __name__ == "__main__":
    main()
