"""The web app's pieces that need no browser: tables as Markdown, Try a prompt's kept original panels."""

from __future__ import annotations

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
