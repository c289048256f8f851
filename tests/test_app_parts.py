"""The web app's pieces that need no browser: tables as Markdown, Try a prompt's kept original panels."""

from __future__ import annotations

import dataclasses
import time

from trust import panels
from trust.service import ModelService


def test_markdown_table_escapes_pipes():
    table = panels.markdown_table(["run", "target"], [[1, "a|b"]])
    assert table == "| run | target |\n|---|---|\n| 1 | a\\|b |"
    assert panels.metrics_markdown(None).endswith("| — | — | — | — | — |")
    assert panels.history_markdown(()) == "*No run has ended yet.*"


def test_try_prompt_keeps_the_original_models_panels():
    service = ModelService("shapes", device="cpu")
    first, _ = service.try_prompt("a red circle", num_images=1, num_inference_steps=2)
    again, _ = service.try_prompt("a red circle", num_images=1, num_inference_steps=2)
    other_seed, _ = service.try_prompt("a red circle", num_images=1, seed=1, num_inference_steps=2)
    assert again is first  # the original model never changes: generated once
    assert other_seed is not first and other_seed.images[0][1] == "seed 1: " + other_seed.verdicts[0]


def test_a_preparing_jobs_clock_moves_between_snapshots(monkeypatch):
    import app
    from trust.jobs import JobSnapshot

    started = time.time() - 12  # a job that began preparing 12 s ago
    preparing = JobSnapshot(state="preparing", message="making the original model's images", target="a red circle",
                            method="trust", max_steps=300, reports=(), result=None, started_at=started, version=3)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: preparing)
    out = app.on_tick("all", -1, -1, 3, 0)  # the page has seen version 3 already
    assert list(out) == [app.progress] and "12 s elapsed" in out[app.progress]  # only the clock is redrawn
    idle = dataclasses.replace(preparing, state="done")
    monkeypatch.setattr(app.jobs, "snapshot", lambda: idle)
    assert app.on_tick("all", -1, -1, 3, 0) == {app.progress: app.gr.skip()}  # an ended job sends nothing
