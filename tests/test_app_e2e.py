"""The web app in a real browser: Debian's Chromium, driven by Playwright, against `python app.py`.

One erase job goes through the page as a user would drive it: preset, Erase, live
heat maps and mask, a second user who is told the server is busy, Stop, before/after
panels and metrics, Try a prompt, Export, Reset, and a reload that keeps the typed form.
Screenshots of each stage land in test-artifacts/app/. The app runs with TRUST_APP_QUICK=1: the real loop, small data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "app"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = free_port()
    env = {**os.environ, "TRUST_APP_QUICK": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TRUST_DEVICE": "cpu"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300  # about 20 s on an idle machine; a busy shared CPU can take minutes
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"app.py exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("app.py did not serve within 300 s")
    yield url
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield chromium
        chromium.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sources(page, selector: str) -> str:
    """The src of the first picture in a component (a new file whenever the picture changes)."""
    images = page.locator(f"{selector} img")
    return images.first.get_attribute("src") if images.count() else ""


def test_erase_live_busy_stop_try_and_export(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)

    # 1. Open the page: the model is loaded, presets fill the prompts
    start = time.perf_counter()
    page.goto(app_url)
    page.get_by_text("Model shapes").wait_for(timeout=60_000)
    load_seconds = time.perf_counter() - start
    page.get_by_label("conditional").check()
    targets = page.get_by_label("Target (erase this; one prompt per line)")
    playwright.expect(targets).to_have_value("a circle on a striped background", timeout=30_000)
    page.get_by_label("combination").check()
    playwright.expect(targets).to_have_value("a red circle", timeout=30_000)
    neighbours = page.get_by_label("Neighbours (keep these; one per line")
    playwright.expect(neighbours).to_have_value("a red square\na blue circle")
    # the anchor and neighbours follow a typed target while they hold what was filled in; typed ones stay
    anchor = page.get_by_label("Anchor (what each target becomes")
    playwright.expect(anchor).to_have_value("a green circle")
    targets.fill("a blue star")
    playwright.expect(anchor).to_have_value("a yellow star", timeout=30_000)
    playwright.expect(neighbours).to_have_value("a blue circle\na purple star", timeout=30_000)
    playwright.expect(page.get_by_label("combination")).not_to_be_checked()  # a typed target is no preset
    anchor.fill("a purple star")
    targets.fill("a blue star on a dotted background")
    page.wait_for_timeout(1000)
    playwright.expect(anchor).to_have_value("a purple star")
    targets.fill("a red circle")
    playwright.expect(page.get_by_label("combination")).to_be_checked(timeout=30_000)  # the preset's target again
    playwright.expect(neighbours).to_have_value("a red square\na blue circle", timeout=30_000)
    anchor.fill("a green circle")
    shot(page, "1-page")
    # A rate too low to erase within the test, so that the job still runs when Stop is pressed (at the
    # default rate a fast machine erased the target and ended the job by itself in 12 s)
    page.get_by_text("Advanced").click()
    # the accordion's fields first show their defaults; typing before they settle was lost twice in full
    # test runs (cold server, the first test), never at human speed
    playwright.expect(page.get_by_label("Method")).to_have_value("trust+p")  # the page's default: it keeps neighbours
    playwright.expect(page.get_by_label("Learning rate")).to_have_value("0.05", timeout=30_000)
    page.wait_for_timeout(1000)
    for label, value in (("Learning rate", "0.0001"), ("Steps (at most)", "5000")):  # nor run out of steps
        field = page.get_by_label(label)
        playwright.expect(field).to_be_editable(timeout=30_000)
        field.fill(value)
        field.press("Tab")
        playwright.expect(field).to_have_value(value)
    page.wait_for_timeout(500)  # let the page settle on a busy machine before Erase reads the form

    # 2. Erase: a live preview within seconds, then heat maps and mask moving while the job runs
    start = time.perf_counter()
    page.click("#erase")
    page.locator("#heat img").first.wait_for(timeout=30_000)
    first_update = time.perf_counter() - start
    heat_seen, mask_seen = {sources(page, "#heat")}, set()
    deadline = time.time() + 120
    while (len(heat_seen) < 3 or len(mask_seen) < 3) and time.time() < deadline:
        heat_seen.add(sources(page, "#heat"))
        if page.locator("#mask img").count():
            mask_seen.add(sources(page, "#mask"))
        time.sleep(0.25)
    assert len(heat_seen) >= 3 and len(mask_seen) >= 3, (heat_seen, mask_seen)
    playwright.expect(page.locator("#progress")).to_contain_text("running", timeout=30_000)
    playwright.expect(page.locator("#saliency img")).to_be_visible()
    shot(page, "2-live")

    # 3. A second user: sees the job, and a clear busy message on Erase
    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    other.goto(app_url)
    playwright.expect(other.locator("#progress")).to_contain_text("step", timeout=30_000)
    other.get_by_text("Advanced").click()  # the form shows what the running job was asked, not the defaults
    playwright.expect(other.get_by_label("Steps (at most)")).to_have_value("5000", timeout=30_000)
    playwright.expect(other.get_by_label("Learning rate")).to_have_value("0.0001")
    playwright.expect(other.get_by_label("Anchor (what each target becomes")).to_have_value("a green circle")
    other.click("#erase")
    playwright.expect(other.locator("#message")).to_contain_text("Busy", timeout=30_000)
    playwright.expect(other.locator("#message")).to_contain_text("erasing “a red circle” with trust+p is at step")
    other.click("#stop")  # not theirs to stop while its starter's page is open
    playwright.expect(other.locator("#message")).to_contain_text("Run 1 was started by another visitor, whose page "
                                                                 "is open: only they can stop it", timeout=30_000)
    playwright.expect(page.locator("#progress")).to_contain_text("running")
    shot(other, "3-busy-second-user")
    other.close()

    # 4. Stop: before/after panels with the detector's verdicts, and the metrics
    page.click("#stop")
    playwright.expect(page.locator("#progress")).to_contain_text("stopped by the user", timeout=180_000)
    page.locator("#before-after img").first.wait_for(timeout=120_000)  # metrics, attacks, panels
    assert page.locator("#before-after img").count() >= 2 * 3  # two seeds × target and two neighbours
    playwright.expect(page.locator("#before-after")).to_contain_text("target “a red circle” #0: ")
    playwright.expect(page.locator("#before-after")).to_contain_text(" → ")  # before → after verdicts
    # the attacks come after the panels: the run has ended once the message says so
    playwright.expect(page.locator("#message")).to_contain_text("Run 1 (“a red circle”, trust+p) ended",
                                                                timeout=180_000)
    ua = page.locator("#metrics td").first.text_content().strip()
    assert ua != "—" and 0 <= float(ua) <= 1
    asr = [cell.strip() for cell in page.locator("#metrics td").all_text_contents()[3:5]]
    assert len(asr) == 2 and all(0 <= float(v) <= 1 for v in asr), asr  # measured, no longer "measuring…"
    playwright.expect(page.locator("#runs")).to_contain_text("stopped")
    playwright.expect(page.locator("#message")).to_contain_text("ended: stopped by the user")
    shot(page, "4-done")
    # on a phone the figures keep a readable width and scroll sideways, from their left edge to their right
    page.set_viewport_size({"width": 390, "height": 844})
    for figure in ("#saliency", "#mask", "#curves"):
        page.locator(figure).scroll_into_view_if_needed()
        width, left, frame_left, scroll, client = page.eval_on_selector(figure, """e => {
            const img = e.querySelector('img'), box = e.querySelector('.image-container');
            return [img.getBoundingClientRect().width, img.getBoundingClientRect().left,
                    box.getBoundingClientRect().left, box.scrollWidth, box.clientWidth]; }""")
        assert width >= 640 and scroll >= width > client and abs(left - frame_left) < 2, (figure, width, left,
                                                                                          frame_left, scroll, client)
    playwright.expect(page.locator("#curves")).to_be_visible()
    page.set_viewport_size({"width": 1400, "height": 1000})

    # 5. Try a prompt: the original and the erased model side by side
    page.locator("#try-prompt textarea, #try-prompt input").first.fill("a red circle on a striped background")
    page.click("#try")
    page.locator("#try-erased img").first.wait_for(timeout=60_000)
    assert page.locator("#try-original img").count() == 4
    playwright.expect(page.locator("#try-note")).to_contain_text("Erased model: run 1")
    page.locator("#try-original").scroll_into_view_if_needed()
    shot(page, "5-try-a-prompt")

    # 6. Export: one zip with the delta, masks, config, report and images
    with page.expect_download(timeout=30_000) as download:
        page.click("#export")
    path = tmp_path / "export.zip"
    download.value.save_as(path)
    names = zipfile.ZipFile(path).namelist()
    assert {"delta.safetensors", "masks.json", "config.json", "report.json"} <= set(names)
    assert sum(n.startswith("images/") and n.endswith(".png") for n in names) == 6
    folder = tmp_path / "export"
    zipfile.ZipFile(path).extractall(folder)
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["lr"] == 0.0001 and config["max_steps"] == 5000 and config["method"] == "trust+p"  # as asked
    from trust.artifacts import load_erased
    from trust.models import load_model

    erased = load_erased(load_model("shapes"), folder)  # the delta belongs to the shipped model
    assert erased.unet is not None

    # 7. Reset: back to the original model
    page.click("#reset")
    playwright.expect(page.locator("#message")).to_contain_text("Back to the original model", timeout=30_000)
    # nothing of the run stays on the page as if it were current
    playwright.expect(page.locator("#before-after img")).to_have_count(0, timeout=30_000)
    playwright.expect(page.locator("#saliency img")).to_have_count(0)
    playwright.expect(page.locator("#heat img")).to_have_count(0)
    playwright.expect(page.locator("#export")).to_be_hidden()

    # 8. A reload keeps what was typed (this browser's form), not the defaults or the last run's form
    targets.fill("a yellow star")  # (the anchor typed in 1. stays)
    playwright.expect(neighbours).to_have_value("a yellow circle\nan orange star", timeout=30_000)
    page.wait_for_timeout(1000)  # (the form is stored as it changes)
    page.reload()
    page.get_by_text("Model shapes").wait_for(timeout=60_000)
    playwright.expect(targets).to_have_value("a yellow star", timeout=30_000)
    playwright.expect(neighbours).to_have_value("a yellow circle\nan orange star")
    playwright.expect(anchor).to_have_value("a green circle")
    playwright.expect(page.locator("#try-prompt textarea, #try-prompt input").first).to_have_value(
        "a red circle on a striped background")
    page.get_by_text("Advanced").click()
    playwright.expect(page.get_by_label("Learning rate")).to_have_value("0.0001", timeout=30_000)
    page.close()
    print(f"page load {load_seconds:.2f} s, first live update {first_update:.2f} s")
    assert load_seconds < 20 and first_update < 20  # the budgets (2 s) are measured by benchmarks/app_latency.py
