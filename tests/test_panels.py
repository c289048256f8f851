"""What the web app draws and reads: panels from a real job's snapshot, the form, the model service."""

import dataclasses
import html
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trust import panels
from trust.concepts import PRESETS
from trust.errors import ModelLoadError
from trust.forms import (
    ADVANCED_FIELDS,
    config_from_form,
    derived_anchor_text,
    method_defaults,
    preset_fields,
    preset_of,
    scenario_from_form,
    used_fields,
)
from trust.jobs import JobOptions, JobRunner
from trust.service import ModelService
from trust.unlearn import METHODS, TRUST_METHODS, UnlearnConfig

FAST = {"num_train_images": 2, "retain_prompts": 2,
        "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1,
        "data_steps": 5}


@pytest.fixture(scope="module")
def snapshot(shapes_model, tmp_path_factory):
    jobs = JobRunner(tmp_path_factory.mktemp("jobs"))
    jobs.start(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=3, probe_every=2, **FAST),
               JobOptions.quick())
    jobs.join(180)
    return jobs.snapshot()


def test_heat_maps_per_word_layer_and_step(snapshot):
    gallery = panels.heat_gallery(snapshot)
    assert [caption for _, caption in gallery][1:] == ["a", "red", "circle"]
    assert gallery[0][1].startswith("training step 3: ") and gallery[0][0].shape == (160, 160, 3)
    layer = snapshot.preview.heat_maps.layers[0]
    one = panels.heat_gallery(snapshot, layer, 0)
    assert not np.array_equal(one[2][0], gallery[2][0])  # one layer at one step is another picture
    zoom, word = panels.token_zoom(snapshot, -1)
    assert word == "circle" and zoom.shape == (320, 320, 3)
    assert [k for _, k in panels.timestep_choices(snapshot.preview)] == list(range(JobOptions.quick().preview_steps))


def test_saliency_and_mask_pictures(snapshot):
    saliency = panels.saliency_image(snapshot)
    rows = len(snapshot.reports[-1].saliency_z)
    assert saliency.ndim == 3 and saliency.shape[0] > rows * 14
    mask = panels.mask_image(snapshot)
    since_first = panels.mask_image(snapshot, since_step=1)
    assert mask.shape == since_first.shape
    green = (np.abs(mask.astype(int) - panels.MASK_COLORS[3]).sum(-1) == 0).sum()
    added, _ = snapshot.mask.churn(snapshot.masks[-2][1])
    assert (green > 0) == (added > 0)  # added neurons are drawn green
    assert panels.curves_image(snapshot).shape[2] == 3
    # what a screen reader gets in place of the pictures: the numbers they show
    last = snapshot.reports[-1]
    assert panels.saliency_title(snapshot) == (f"step {last.step}: saliency z-score of every neuron; "
                                               f"{snapshot.mask.num_selected} selected (dots): z > τ = 2")
    before_step = snapshot.masks[-2][0]
    assert panels.mask_title(snapshot).endswith(f"since step {before_step}: +{added} (green), "
                                                f"−{snapshot.mask.churn(snapshot.masks[-2][1])[1]} (red)")
    text = panels.curves_text(snapshot)
    assert text.startswith(f"Losses over {len(snapshot.reports)} steps") and f"L_u {last.losses['unlearn']:.3g}" in text
    assert f"{sum(last.mask_sizes.values())} neurons selected at step {last.step}" in text
    assert panels.short_layer("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight") == "down1.0 K"
    assert panels.short_layer("mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight") == "mid.0 V"


def test_loss_curves_move_every_few_steps_while_a_job_steps(snapshot):
    reports = tuple(dataclasses.replace(snapshot.reports[k % 3], step=k + 1) for k in range(7))
    running = dataclasses.replace(snapshot, state="running", reports=reports, run_idx=901)
    five_done = dataclasses.replace(snapshot, state="done", reports=reports[:5], run_idx=902)  # drawn apart
    seven_done = dataclasses.replace(snapshot, state="done", reports=reports, run_idx=903)
    assert panels.CURVES_EVERY == 5
    assert np.array_equal(panels.curves_image(running), panels.curves_image(five_done))  # steps 6, 7 wait
    assert not np.array_equal(panels.curves_image(seven_done), panels.curves_image(five_done))  # the end: all


def test_tables_progress_and_probe(snapshot):
    assert panels.metrics_rows(None) == [["—"] * 5]
    row = panels.metrics_rows(snapshot.metrics)[0]  # the job measured both attacks
    assert row[0] == f"{snapshot.metrics['UA']:.2f}" and row[4] == f"{snapshot.metrics['ASR_embedding']:.2f}"
    unattacked = {k: snapshot.metrics[k] for k in ("UA", "IRA", "CRA")}
    row = panels.metrics_rows({**unattacked, "ASR_paraphrase": 0.25})[0]
    assert row[3] == "0.25" and row[4] == "—"  # what was not measured reads "—"
    history = panels.history_rows(snapshot.history)
    assert history[0][:4] == [1, "trust", "a red circle", 3] and len(history[0]) == len(panels.HISTORY_COLUMNS)
    # once a run of another model joins them (the page loaded one), each row names its model
    other = dataclasses.replace(snapshot.history[0], run_idx=2, model="/models/tiny-sd")
    table = panels.history_markdown((*snapshot.history, other)).splitlines()
    assert table[0].startswith("| run | model | method |") and table[2].startswith("| 2 | /models/tiny-sd | trust |")
    assert table[3].startswith("| 1 | shapes | trust |")  # the job ran on the embedded model
    assert "model" not in panels.history_markdown(snapshot.history).splitlines()[0]
    assert "step 3 of 3" in panels.progress_html(snapshot, time.time())
    running = dataclasses.replace(snapshot, state="running")
    assert "left at most" in panels.progress_html(running, time.time())
    pruned = panels.progress_html(dataclasses.replace(snapshot, method="conceptprune", reports=(), max_steps=300),
                                  time.time())  # no steps to count: not "step 0 of 300" and an empty bar
    assert "one pruning pass" in pruned and "step 0" not in pruned and "value='1' max='1'" in pruned
    assert panels.probe_text(snapshot).startswith("Probe at step 3: the target is gone from")  # probes at 2 and the end
    pairs = panels.panel_gallery(snapshot.panels)
    assert len(pairs) == 6 and pairs[0][0].shape == (128, 262, 3)
    before, after = snapshot.panels[0].before_verdicts[0], snapshot.panels[0].after_verdicts[0]
    caption = f"target “a red circle” #0: {before.split(' (')[0]} → {after.split(' (')[0]}".replace(", plain", "")
    assert pairs[0][1] == caption and "%" not in caption  # short: one line under the pair
    grid = panels.panel_html(snapshot.panels)
    assert grid.count("<img") == 6 and grid.count("<figcaption") == 6 and html.escape(caption) in grid
    assert "<img" not in panels.panel_html(())
    assert history[0][5] == {"erased": "probe: target gone", "max_steps": "ran all steps"}[snapshot.result.stop_reason]


def test_the_form():
    targets, anchor, neighbours = preset_fields("individual")
    assert targets.splitlines() == list(PRESETS["red"].targets)
    assert scenario_from_form("individual", targets, anchor, neighbours).concept == PRESETS["red"].concept
    assert anchor.splitlines() == list(PRESETS["red"].target_anchors)  # one per target
    assert preset_fields("combination")[1] == "a green circle"
    custom = scenario_from_form("individual", "a blue star", "", "a blue circle")
    assert custom.targets == ("a blue star",) and custom.neighbours == ("a blue circle",)
    assert custom.target_anchors == ("a yellow star",)  # left empty: blue (the concept: blue star) changes
    assert scenario_from_form("individual", "a blue star", '""', "").target_anchors == ("",)
    two = scenario_from_form(None, "a red circle\na red star", "a circle\na star", "")
    assert two.targets == ("a red circle", "a red star") and two.target_anchors == ("a circle", "a star")
    assert scenario_from_form(None, "a red circle\na red star", "a blue shape", "").target_anchors == (
        "a blue shape", "a blue shape")
    with pytest.raises(ValueError, match="one anchor for each of the 2 targets"):
        scenario_from_form(None, "a red circle\na red star", "a\nb\nc", "")
    with pytest.raises(ValueError, match="type the prompt to erase"):
        scenario_from_form("combination", "  ", "", "")
    # the Anchor box follows typed targets whatever the neighbour box holds
    assert derived_anchor_text("a red circle\na red star") == "a green circle\na green star"
    assert derived_anchor_text("a circle on a striped background") == "a circle"
    # targets that name no concept of the world get none (Erase says why), but the empty prompt on another model
    for targets in ("a photo of a cat", "a red circle\na blue square", "a rouge cercle"):
        with pytest.raises(ValueError, match="the targets name no concept of the world"):
            derived_anchor_text(targets)
        assert derived_anchor_text(targets, grammar=False) == '""'
    assert derived_anchor_text("a dotted background") == '""'  # the world's concept, whose anchor is the empty prompt
    # editing the red preset's targets keeps red: the concept is what the remaining lines share
    assert scenario_from_form("individual", "a red circle\na red star", "", "").concept == PRESETS["red"].concept
    # an emptied neighbour box means no neighbours, never the preset's (which may even hold the typed target)
    assert scenario_from_form("combination", "a red square", "", "").neighbours == ()
    assert scenario_from_form("combination", "a red circle", "", " \n").neighbours == ()
    assert scenario_from_form("combination", "a red circle", "", "a red square").neighbours == ("a red square",)
    # the Scenario radio names the preset the Target box holds, and none for a typed target
    red_targets = preset_fields("individual")[0]
    assert preset_of(red_targets) == "individual" and preset_of(red_targets, "red") == "red"
    assert preset_of(" a red circle \n") == "combination" and preset_of("a red circle\na red star") is None
    assert preset_of("") is None and preset_of("a circle on a striped background", "nonsense") == "conditional"
    for method in METHODS:
        config = config_from_form(method, *method_defaults(method))
        assert config == UnlearnConfig.for_method(method)
        fixed = set(ADVANCED_FIELDS) - used_fields(method)
        assert "seed" in used_fields(method) and (not fixed) == (method == "trust+p")  # only TRuST+P reads all
        if method in TRUST_METHODS:  # an ablation's (and plain TRuST's) fixed term cannot be set otherwise
            for name in fixed:
                values = dict(zip(ADVANCED_FIELDS, method_defaults(method)), **{name: 1.0})
                with pytest.raises(ValueError):
                    config_from_form(method, *values.values())
    assert config_from_form("trust", 10, 0.01, 2.0, 0.05, 0.1, 1.0, 0.0, 1.0, 0).rho == 0.05
    with pytest.raises(ValueError, match="Steps is empty or not a number: type a number \\(trust's default is 300\\)"):
        config_from_form("trust", None, 0.01, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="Learning rate is empty"):  # an emptied field is never a silent default
        config_from_form("trust", 10, None, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)
    assert config_from_form("salun", *method_defaults("salun")[:2], None, *method_defaults("salun")[3:]).rho == 0.5
    for method in ("salun", "salun++", "conceptprune"):  # ρ alone selects, and their τ field is greyed out
        values = dict(zip(ADVANCED_FIELDS, method_defaults(method)), rho=0)
        with pytest.raises(ValueError, match=f"^ρ must be within \\(0, 1\\] for {re.escape(method)}: it selects by ρ "
                                             "alone, with no τ to fall back on"):
            config_from_form(method, *values.values())
    with pytest.raises(ValueError, match="ρ must be 0 \\(use τ\\) or within"):
        config_from_form("trust", 10, 0.01, 2.0, -1, 0.1, 1.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="ρ must be 0 \\(use τ\\) or within"):  # not "τ is empty"
        config_from_form("trust", 10, 0.01, None, -0.5, 0.1, 1.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="Seed must be a whole number"):
        config_from_form("trust", 10, 0.01, 2.0, 0, 0.1, 1.0, 0.0, 1.0, float("inf"))
    with pytest.raises(ValueError, match="Steps must be a whole number within 1..10000"):
        config_from_form("trust", 1e9, 0.01, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)
    for seed in (1e30, 10**30):  # as Try a prompt quotes it (1e+30), not as the int's 31 digits
        with pytest.raises(ValueError, match=re.escape("Seed must be a whole number within 0..4294967295, got 1e+30")):
            config_from_form("trust", 10, 0.01, 2.0, 0, 0.1, 1.0, 0.0, 1.0, seed)
    from trust.forms import image_seed

    assert image_seed(7.0) == 7
    for value, shown in ((None, "got nothing (the field is empty, or what it holds is not a number)"),
                         (2.0**32, "got 4294967296"), (1.5, "got 1.5"), (-1.0, "got -1")):
        with pytest.raises(ValueError, match=re.escape(shown)):
            image_seed(value)
    with pytest.raises(ValueError, match="Steps must be a whole number, got 2.5"):  # refused, never rounded
        config_from_form("trust", 2.5, 0.01, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="Learning rate must be a positive number"):
        config_from_form("trust", 10, -1, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="^Learning rate must be a positive number, at most 1 .*got 1e\\+30"):
        config_from_form("trust", 10, 1e30, 2.0, 0, 0.1, 1.0, 0.0, 1.0, 0)  # it once left a broken model


def test_the_service_shows_copies_and_fails_cleanly(shapes_model, snapshot):
    service = ModelService("shapes", device="cpu")
    original, erased = service.try_prompt("a red circle", num_images=2, num_inference_steps=5)
    assert erased is None and len(original.images) == 2 and [t for _, t in original.heat_maps][-1] == "circle"
    assert service.model.unet.attn_processors == service.model.unet.attn_processors  # never hooked here
    service.set_erased(snapshot.result.unet, "run 1")
    original, erased = service.try_prompt("a red circle", num_images=2, num_inference_steps=5)
    assert erased is not None and service.erased_label == "run 1" and len(erased.verdicts) == 2
    from trust.service import describe_verdicts

    blank = torch.ones(1, 3, 32, 32)  # a white picture: nothing drawn on a plain background
    assert describe_verdicts(service.model, blank)[0].startswith("no shape, plain (")  # not "none none"
    from trust.generation import generate

    star = generate(service.model, "a blue star on a striped background", num_inference_steps=20).images
    assert describe_verdicts(service.model, star)[0].startswith("blue star, striped (")
    service.reset()
    assert service.try_prompt("a red circle", num_images=1, num_inference_steps=2)[1] is None
    with pytest.raises(ModelLoadError, match="could not fetch"):
        service.load("runwayml/stable-diffusion-v1-5")  # no hub here: a clean message
    assert service.model.name == "shapes"  # and the current model stays


def test_the_page_loads_local_folders_only_from_its_model_folders(tiny_sd_dir, tmp_path, monkeypatch):
    service = ModelService("shapes", device="cpu")  # no TRUST_MODEL_DIRS: no local folder at all
    for name in ("/etc", str(tiny_sd_dir), "~", "../../anything", str(tmp_path / "missing")):
        with pytest.raises(ModelLoadError, match="loads local model folders only from its model folders"):
            service.load(name)  # refused before anything is read, whether it exists or not
    assert service.name == "shapes"
    with pytest.raises(ModelLoadError, match="unknown model 'sd15'") as unknown:  # not a path: the usual message
        service.load("sd15")
    assert "local folder" not in str(unknown.value)  # the page takes none here, so it offers none
    # a relative name is a hub id to the page, whether or not it exists under the server's working folder: the
    # answers are the same, so they tell nothing about the server's disk
    (tmp_path / "org" / "model").mkdir(parents=True)
    answers = []
    for name in ("org/model", "org/absent"):
        with pytest.raises(ModelLoadError, match="could not fetch") as err:
            with monkeypatch.context() as m:
                m.chdir(tmp_path)
                service.load(name)
        answers.append(str(err.value).replace("absent", "model"))
    assert answers[0] == answers[1] and "model folders (TRUST_MODEL_DIRS)" in answers[0]
    allowed = ModelService("shapes", device="cpu", model_dirs=(tiny_sd_dir.parent,))
    assert allowed.load(str(tiny_sd_dir)).detector is None and allowed.name == str(tiny_sd_dir)
    escape = tiny_sd_dir.parent / ".." / "elsewhere"  # resolved before it is compared: no way out by '..'
    with pytest.raises(ModelLoadError, match="only from its model folders") as refused:
        allowed.load(str(escape))
    assert f"(which hold: {tiny_sd_dir.name}" in str(refused.value)  # their names: where they are is not said
    assert str(tiny_sd_dir.parent) not in str(refused.value)
    # a model folder's models load by their names too, and a name the server cannot load lists them
    assert tiny_sd_dir.name in allowed.local_models()  # (pytest's "-current" link to it is there too)
    with pytest.raises(ModelLoadError, match=f"unknown model 'sd-x'.*model folders hold .*{tiny_sd_dir.name}"):
        allowed.load("sd-x")
    assert allowed.load("shapes").detector is not None and allowed.load(tiny_sd_dir.name).detector is None
    assert allowed.name == tiny_sd_dir.name and allowed.model.name == tiny_sd_dir.name
    with pytest.raises(ModelLoadError, match="unknown model"):  # a name never leads out of them: a hub id then
        allowed.load(f"{tiny_sd_dir.name}/../../etc")
    started = ModelService(str(tiny_sd_dir), device="cpu")  # the folder a server starts with may be loaded again
    assert started.load(str(tiny_sd_dir)).unet is not None


def test_a_picture_becomes_a_file_written_once(tmp_path):
    """Gradio rewrote its cached copy of a picture each time a page was sent it, truncating it under another page
    still downloading it; a figure file is written whole, once, and only read after that."""
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = panels.figure_file(picture, tmp_path / "figures")
    assert np.array_equal(np.asarray(Image.open(path)), picture)  # lossless
    inode, mtime = Path(path).stat().st_ino, Path(path).stat().st_mtime_ns
    assert panels.figure_file(picture.copy(), tmp_path / "figures") == path  # the same picture: the same file, as is
    assert (Path(path).stat().st_ino, Path(path).stat().st_mtime_ns) == (inode, mtime)
    other = panels.figure_file(picture[:, :29], tmp_path / "figures")
    assert other != path and [p.name for p in (tmp_path / "figures").iterdir() if p.name.startswith(".")] == []
    # figures older than FIGURES_KEPT_SECONDS go when a new one's name starts with 00 (1 in 256)
    for old in (path, other):
        os.utime(old, (time.time() - panels.FIGURES_KEPT_SECONDS - 60,) * 2)
    def tiny(k: int) -> np.ndarray:
        return np.array([[[k % 256, k // 256, 0]]], np.uint8)

    k = next(k for k in range(65536) if panels.figure_file(tiny(k), tmp_path / "x").split("/")[-1][:2] == "00")
    kept = panels.figure_file(tiny(k), tmp_path / "figures")
    assert [p.name for p in (tmp_path / "figures").iterdir()] == [Path(kept).name]


def test_a_small_models_grid_figure_keeps_its_whole_title():
    """The tiny SD model's mask figure read "mask at step 10: 17 neurons (dark); since st": cut to the grid's width."""
    title = "mask at step 10: 17 neurons (dark); since step 5: +3 (green), −1 (red)"
    picture = panels._draw_grid(np.full((2, 4, 3), 40, np.uint8), ["down1.0 K", "up1.0 V"], title)
    assert picture.shape[1] >= panels._font().getlength(title) + 4
    ink = np.where((picture[:20] < 128).all(axis=2).any(axis=0))[0]  # the title's dark pixels, in its first rows
    assert ink.max() < picture.shape[1] - 4  # all of it drawn inside the picture
