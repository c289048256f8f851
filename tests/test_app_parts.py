"""The web app's pieces that need no browser: tables as Markdown, Try a prompt's kept original panels."""

from __future__ import annotations

import dataclasses
import time
import types
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

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


def test_a_baseline_says_why_it_has_no_neuron_saliency_or_mask(monkeypatch):
    import app
    from trust.jobs import JobSnapshot
    from trust.unlearn import UnlearnConfig

    for method, says in (("esd-x", "ESD-x fine-tunes every cross-attention weight"), ("trust", None)):
        running = JobSnapshot(state="running", message="", target="a red circle", method=method, max_steps=9,
                              reports=(), result=None, started_at=time.time(), version=2,
                              config=UnlearnConfig.for_method(method))
        monkeypatch.setattr(app.jobs, "snapshot", lambda s=running: s)
        out = app.on_tick("all", -1, -1, 1, 0, "")
        if says is None:  # TRuST's figures come with its first step
            assert out[app.saliency] is None and out[app.mask] is None
        else:
            assert out[app.saliency] == out[app.mask]
            assert out[app.saliency]["value"] == app.as_files(app.panels.no_neurons_image(method))
            assert np.array_equal(np.asarray(Image.open(out[app.saliency]["value"])),
                                  app.panels.no_neurons_image(method))
            assert says in app.panels.NO_NEURONS[method]
            assert out[app.saliency]["alt_text"] == app.panels.NO_NEURONS[method]  # a screen reader reads it too
    from trust.methods import BASELINES

    assert set(app.panels.NO_NEURONS) == set(BASELINES)  # every baseline says it


def test_a_preparing_jobs_clock_moves_between_snapshots(monkeypatch):
    import app
    from trust.jobs import JobSnapshot

    started = time.time() - 12  # a job that began preparing 12 s ago
    preparing = JobSnapshot(state="preparing", message="making the original model's images", target="a red circle",
                            method="trust", max_steps=300, reports=(), result=None, started_at=started, version=3)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: preparing)
    out = app.on_tick("all", -1, -1, 3, 0, "")  # the page has seen version 3 already
    assert list(out) == [app.progress] and "12 s elapsed" in out[app.progress]  # only the clock is redrawn
    idle = dataclasses.replace(preparing, state="done")
    monkeypatch.setattr(app.jobs, "snapshot", lambda: idle)
    assert app.on_tick("all", -1, -1, 3, 0, "") == {app.progress: app.gr.skip()}  # an ended job sends nothing


def test_a_new_job_clears_what_the_last_one_left(monkeypatch):
    import app
    from trust.jobs import JobSnapshot

    done = JobSnapshot(state="done", message="erased: the detector no longer finds the target after 20 steps",
                       target="a red circle", method="trust", max_steps=300, reports=(), result=None,
                       started_at=time.time() - 30, run_idx=1, version=9, metrics={"UA": 1.0, "IRA": 0.88, "CRA": 1.0},
                       export_path=Path("/tmp/trust-run-1-trust.zip"))
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    out = app.on_tick("all", -1, -1, 8, 0, "")  # a page that has not shown run 1's end yet
    assert out[app.seen_done] == "1:done"
    assert out[app.message].startswith("✅ Run 1 (“a red circle”, trust) ended: erased")  # which run, of what
    assert "1.00" in out[app.metrics] and out[app.download]["visible"] is True
    assert out[app.try_note].startswith("Run 1's erased model is ready")  # not "No erased model yet" any more
    assert out[app.erased_images] == app.no_erased() and out[app.erased_heat] is None  # not an earlier run's pictures
    again = app.on_tick("all", -1, -1, 8, 0, "1:done")  # shown already: the message box is left alone
    assert app.message not in again and app.before_after not in again
    # run 2 starts: run 1's pictures, metrics, export, curves and mask leave the page at once
    preparing = dataclasses.replace(done, state="preparing", message="drawing", run_idx=2, version=10, metrics=None,
                                    export_path=None)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: preparing)
    out = app.on_tick("all", -1, -1, 9, 20, "1:done", 2)  # this page started run 2
    assert out[app.seen_done] == "" and "<img" not in out[app.before_after] and out[app.download]["visible"] is False
    assert out[app.saliency] is None and out[app.curves] is None and out[app.mask] is None
    assert "—" in out[app.metrics] and app.message not in out  # the Erase button's message stays
    failed = dataclasses.replace(preparing, state="failed", message="the job failed: out of memory", version=11,
                                 ended_at=preparing.started_at + 42)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: failed)
    out = app.on_tick("all", -1, -1, 10, 0, "")
    assert out[app.message] == "❌ Run 2 (“a red circle”, trust) failed: out of memory"
    assert "42 s elapsed" in out[app.progress]  # until it ended, measuring included
    assert out[app.probe] == "No probe ran in this job."
    # a NaN stop keeps the last good weights: said as a warning, not as an erasure
    nan = dataclasses.replace(done, run_idx=3, version=12, message="the loss became NaN or infinite at step 2",
                              result=types.SimpleNamespace(stop_reason="nan"))
    monkeypatch.setattr(app.jobs, "snapshot", lambda: nan)
    assert app.on_tick("all", -1, -1, 11, 0, "")[app.message] == (
        "⚠️ Run 3 (“a red circle”, trust) stopped: the loss became NaN or infinite at step 2.")
    # a stop while preparing leaves no run: the message says the job stopped (it once stayed "Stopping…")
    idle = JobSnapshot(state="idle", message="stopped before the first step: nothing was erased", target="",
                       method="", max_steps=0, reports=(), result=None, started_at=0.0, run_idx=3, version=13)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: idle)
    out = app.on_tick("all", -1, -1, 12, 0, "3:done")
    assert out[app.message] == "⏹ The job stopped before the first step: nothing was erased."
    assert app.message not in app.on_tick("all", -1, -1, 12, 0, out[app.seen_done])  # said once
    # a Reset pressed on another page (or in another tab): this page's message and Try a prompt's erased side go too
    reset = dataclasses.replace(idle, message=app.RESET, version=14)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: reset)
    out = app.on_tick("all", -1, -1, 13, 0, "3:done")
    assert out[app.message] == app.RESET_MESSAGE and out[app.try_note] == app.RESET_TRY_NOTE
    assert out[app.erased_images] == app.no_erased() and out[app.erased_heat] is None and out[app.before_after]
    assert app.message not in app.on_tick("all", -1, -1, 13, 0, out[app.seen_done])
    # another model loaded on another page: its line, its layers, and Try a prompt's pictures of the last model go
    loaded = dataclasses.replace(idle, message=app.LOADED + "Loaded sd15. Run 3's erased model is put away.",
                                 version=15)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: loaded)
    out = app.on_tick("all", -1, -1, 14, 0, out[app.seen_done])
    assert out[app.message] == "Loaded sd15. Run 3's erased model is put away."
    assert out[app.original_images] is None and out[app.erased_images] == app.no_erased()
    assert out[app.model_name] == app.service.name and out[app.info] == app.model_info()
    assert out[app.try_note].startswith(f"{app.service.name} is loaded")
    assert out[app.layer]["value"] == "all" and all(isinstance(key, app.gr.components.Component) for key in out)


def test_a_measured_run_shows_its_panels_while_the_attacks_run(monkeypatch):
    import numpy as np

    import app
    from trust.jobs import JobSnapshot, Panel

    tile = np.zeros((8, 8, 3), np.uint8)
    panel = Panel("a red circle", "target", (tile,), (tile,), ("red circle plain",), ("green circle plain",))
    measured = JobSnapshot(state="finishing", message="erased: …; attacking the erased model", target="a red circle",
                           method="trust+p", max_steps=100, reports=(), result=None, started_at=time.time() - 60,
                           run_idx=4, version=20, panels=(panel,), metrics={"UA": 1.0, "IRA": 0.62, "CRA": 0.75})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: measured)
    out = app.on_tick("all", -1, -1, 19, 0, "")
    assert out[app.seen_done] == "4:measured"
    assert out[app.message].startswith("⏳ Run 4 (“a red circle”, trust+p) is measured")
    assert "<img" in out[app.before_after] and "#0: red circle plain → green circle plain" in out[app.before_after]
    assert "| 1.00 | 0.62 | 0.75 | measuring… | measuring… |" in out[app.metrics]
    assert out[app.download]["visible"] is False  # the export comes with the attacks' figures
    done = dataclasses.replace(measured, state="done", message="erased", version=21, export_path=Path("/tmp/x.zip"),
                               metrics={**measured.metrics, "ASR_paraphrase": 0.0, "ASR_embedding": 0.25})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    out = app.on_tick("all", -1, -1, 20, 0, "4:measured")
    assert out[app.seen_done] == "4:done" and out[app.message] == (
        "⚠️ Run 4 (“a red circle”, trust+p) ended: erased, but it harmed what it should keep (IRA 0.62, CRA 0.75: "
        "fewer than 80% of those samples drawn right).")  # erased, not harmless: the bench's good erasure wants 0.80
    assert "| 1.00 | 0.62 | 0.75 | 0.00 | 0.25 |" in out[app.metrics] and out[app.download]["visible"] is True
    # the probe that stopped it said "gone", the final measurement disagrees: the message says so, not ✅
    missed = dataclasses.replace(done, version=22, run_idx=5, message="erased: the detector no longer finds the "
                                 "target after 20 steps", metrics={**done.metrics, "UA": 0.25})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: missed)
    out = app.on_tick("all", -1, -1, 21, 0, "4:done")
    assert out[app.message] == ("⚠️ Run 5 (“a red circle”, trust+p) ended: erased: the detector no longer finds the "
                                "target after 20 steps, but the final measurement still finds the target in 75% of "
                                "its samples (UA 0.25): not erased.")
    # erased, but the neighbours and the unrelated prompts went with it: not ✅ either
    broken = dataclasses.replace(done, version=23, run_idx=6, message="ran all 30 steps",
                                 metrics={**done.metrics, "IRA": 0.0, "CRA": 0.125})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: broken)
    out = app.on_tick("all", -1, -1, 22, 0, "5:done")
    assert out[app.message] == ("⚠️ Run 6 (“a red circle”, trust+p) ended: ran all 30 steps, but it broke what it "
                                "should keep (IRA 0.00, CRA 0.12: half or fewer of those samples drawn right).")
    # stopped by the user: what its steps so far did is said too (half the neighbours' samples lost is broken)
    stopped = dataclasses.replace(broken, version=25, run_idx=8, message="stopped after 3 steps",
                                  result=types.SimpleNamespace(stop_reason="stopped"),
                                  metrics={**done.metrics, "UA": 0.5, "IRA": 0.5, "CRA": 0.75})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: stopped)
    out = app.on_tick("all", -1, -1, 24, 0, "7:done")
    assert out[app.message] == ("⏹ Run 8 (“a red circle”, trust+p) ended: stopped after 3 steps. The target is still "
                                "in 50% of its samples (UA 0.50). It broke what it should keep (IRA 0.50: half or "
                                "fewer of those samples drawn right; CRA 0.75: fewer than 80%).")
    # erased and nothing broken, but the optimised embedding brings it back: ✅ with the caveat beside it
    attacked = dataclasses.replace(done, version=24, run_idx=7, metrics={**done.metrics, "IRA": 1.0, "CRA": 0.81,
                                                                         "ASR_embedding": 1.0})
    monkeypatch.setattr(app.jobs, "snapshot", lambda: attacked)
    out = app.on_tick("all", -1, -1, 23, 0, "6:done")
    assert out[app.message] == ("✅ Run 7 (“a red circle”, trust+p) ended: erased. The target is gone from its "
                                "prompts, but an attack brings it back in half its samples or more (ASR: optimised "
                                "embedding 1.00; see Metrics).")


def test_damage_names_what_fell_below_a_good_erasures_share():
    from trust.methods import damage

    assert damage({"UA": 1.0, "IRA": 0.51, "CRA": 0.5}) == ("broke what it should keep (CRA 0.50: half or fewer of "
                                                            "those samples drawn right; IRA 0.51: fewer than 80%)")
    assert damage({"UA": 1.0, "IRA": 0.69, "CRA": 0.8}) == ("harmed what it should keep (IRA 0.69: fewer than 80% of "
                                                            "those samples drawn right)")
    assert damage({"UA": 1.0, "IRA": None, "CRA": 0.97}) is None and damage(None) is None
    from trust.methods import attack_caveat

    assert attack_caveat({"ASR_paraphrase": 0.5, "ASR_embedding": 0.25}) == "paraphrases 0.50"
    assert attack_caveat({"ASR_paraphrase": None, "ASR_embedding": None}) is None and attack_caveat(None) is None


def test_typed_targets_move_the_anchor_neighbours_and_the_scenario_radio():
    import app

    preset_neighbours = "a red square\na blue circle"
    # the anchor and neighbours filled in for the preset follow the typed target, and the radio leaves the preset
    assert app.on_targets("a blue star", "a green circle", "a green circle", preset_neighbours, preset_neighbours,
                          "combination") == ("a yellow star", "a yellow star", "a blue circle\na purple star",
                                             "a blue circle\na purple star", None)
    # a reply for targets the boxes already follow writes nothing: Gradio re-sends this call while the user types
    # in the Neighbours or Anchor box, with the text it read before, and writing that back undid the typing
    assert app.on_targets("a blue star", "a yellow star", "a yellow star", "a blue circle\na purple star",
                          "a blue circle\na purple star", None) == (
        app.gr.update(), "a yellow star", app.gr.update(), "a blue circle\na purple star", app.gr.update())
    # (a space typed at the end of a box that follows is no change to write back either)
    assert app.on_targets("a blue star", "a yellow star ", "a yellow star", "", "", None)[0] == app.gr.update()
    # what the user typed stays; the radio still follows the targets
    assert app.on_targets("a red circle", "a purple circle", "a green circle", "a red star", "a blue circle",
                          None) == (app.gr.update(), "a green circle", app.gr.update(), "a blue circle", "combination")
    # a reply for targets the radio's preset filled in leaves the radio alone: it may come after the user picked
    # another preset, and would put the radio back
    assert app.on_targets("a circle on a striped background", "a circle on a plain background",
                          "a circle on a plain background", "", "", "conditional")[4] == app.gr.update()
    # back on a preset's targets, the neighbours filled in are the preset's (the derived ones were never edited)
    out = app.on_targets("a red circle", "a green circle", "a green circle", "a blue circle\na purple star",
                         "a blue circle\na purple star", None)
    assert out[2:] == (preset_neighbours, preset_neighbours, "combination")
    # targets that share no concept the world can name get no neighbours and no anchor (Erase says why)
    out = app.on_targets("a red circle\na blue square", "x", "x", preset_neighbours, preset_neighbours, "combination")
    assert out == ("", "", "", "", None)
    # an emptied box (no neighbours, on purpose) stays empty
    assert app.on_targets("a blue star", "a green circle", "a green circle", "", preset_neighbours, None)[2] == \
        app.gr.update()
    # an emptied Target box takes the anchor and neighbours filled in for it along; typed ones stay
    assert app.on_targets("  ", "a green circle", "a green circle", preset_neighbours, preset_neighbours,
                          "combination") == ("", "", "", "", None)
    assert app.on_targets("", "a purple star", "a green circle", "a red star", preset_neighbours, None) == (
        app.gr.update(), "a green circle", app.gr.update(), preset_neighbours, app.gr.update())
    # targets the form refuses (one given twice) leave no anchor of the last ones behind; Erase says what is wrong
    red = app.on_preset("red")[1]
    assert app.on_targets("a red circle\na red circle", red, red, "", "", "red")[:2] == ("", "")


def test_try_a_prompt_says_when_a_prompt_is_empty_cut_or_has_unknown_words():
    import app

    *_, note = app.on_try("", 0)
    assert "The prompt is empty: this is what each model draws unprompted." in note
    with pytest.warns(UserWarning, match="the end was cut"):  # the server's log says it too
        *_, note = app.on_try("a red circle" + " on a striped background" * 10, 0)
    assert "tokens and the model reads" in note and "the end was cut" in note
    *_, note = app.on_try("a red circle", 0)
    assert "empty" not in note and "cut" not in note and "never trained" not in note
    with pytest.warns(UserWarning, match="never trained on"):
        *_, note = app.on_try("two red circles", 0)
    assert "Words the model never trained on (what it draws for them is arbitrary): two, circles (circle?)." in note
    assert app.try_seed.preprocess(1.5) == 1.5  # the field passes what was typed (it rounded 1.5 to 2, unsaid)
    for seed, shown in ((None, "nothing (the field is empty, or what it holds is not a number)"), (-1, "-1"),
                        (2.5, "2.5"), (1e20, "1e+20"), (float("nan"), "nan")):
        *galleries, note = app.on_try("a red circle", seed)  # said in the note; the pictures stay as they were
        assert galleries == [app.gr.skip()] * 4
        assert note == (f"❌ Seed of the images must be a whole number within 0..4294967295 (0: the first images), "
                        f"got {shown}")


def test_try_a_prompt_names_the_erased_model_it_drew_with():
    import app

    app.service.set_erased(app.service.model.unet, "run 7")  # (as a run's end does)
    try:
        with pytest.warns(UserWarning, match="never trained on"):
            original, _, erased, erased_heat, note = app.on_try("a 🔴 circle", 0)
    finally:
        app.service.reset()
    assert erased["label"] == "Erased model (run 7)" and note.startswith("Erased model: run 7.")
    assert len(erased["value"]) == len(original) == 4
    assert [caption for _, caption in erased_heat] == ["a", "🔴", "circle"]  # a word's text, not its bytes


def test_erase_says_what_it_erases_and_a_reload_shows_the_run_shown(monkeypatch):
    import app
    from trust.concepts import PRESETS
    from trust.jobs import IDLE
    from trust.unlearn import UnlearnConfig

    started = []
    monkeypatch.setattr(app.jobs, "start", lambda model, scenario, config, options, owner: started.append(scenario))
    advanced = app.method_defaults("trust+p")
    message, mine = app.on_erase("", 0, None, "a purple unicorn", "", "", "trust+p", *advanced)
    # the words the world knows make the concept, and the message says which (unicorn is not one of them)
    assert started[0].targets == ("a purple unicorn",) and "checks the concept as color=purple" in message
    assert message.endswith("Words the model never trained on (what it draws for them is arbitrary): unicorn.")
    long = "a red circle " * 20
    message, _ = app.on_erase("", 0, None, long, "", "", "trust+p", *advanced)
    assert "a red circle a red circle" in message and "…" in message and len(message) < 400  # cut, not echoed
    assert "is longer than the 24 tokens the model reads: its end was cut" in message
    # Erase again while the job this page started runs: it says so, not "Busy" as for another user's job
    from trust.jobs import JobBusyError

    running = dataclasses.replace(IDLE, state="running", target="a red circle", method="trust+p", run_idx=4,
                                  owner="a" * 16)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: running)
    monkeypatch.setattr(app.jobs, "start",
                        lambda *a, **k: (_ for _ in ()).throw(JobBusyError("the job … is at step 3")))
    mine = ("⚠️ Run 4 (“a red circle”, trust+p), which you started, is still running; press Stop to end it before "
            "starting another.")
    assert app.on_erase("b" * 16, 4, None, "a red circle", "", "", "trust+p", *advanced) == (mine, 4)
    assert app.on_erase("a" * 16, 0, None, "a red circle", "", "", "trust+p", *advanced) == (mine, 0)  # reloaded
    assert app.on_erase("b" * 16, 3, None, "a red circle", "", "", "trust+p", *advanced) == (
        "⚠️ **Busy:** the job … is at step 3.", 3)  # another visitor's job
    # a double click on Erase: the second press, a moment after the first and with the same form, says nothing (the
    # first one's note, with the concept the detector checks, stays)
    just = dataclasses.replace(running, scenario=app.scenario_from_form(None, "a red circle", "", ""),
                               started_at=time.time())
    monkeypatch.setattr(app.jobs, "snapshot", lambda: just)
    assert app.on_erase("a" * 16, 4, None, "a red circle", "", "", "trust+p", *advanced) == (app.gr.skip(), 4)
    assert app.on_erase("a" * 16, 4, None, "a blue circle", "", "", "trust+p", *advanced) == (mine, 4)  # another form
    # Stop was pressed (or the steps are over): the job ends by itself, so pressing Stop is not the advice
    monkeypatch.setattr(app.jobs, "snapshot", lambda: dataclasses.replace(running, state="stopping"))
    assert app.on_erase("a" * 16, 4, None, "a red circle", "", "", "trust+p", *advanced)[0] == (
        "⚠️ Run 4 (“a red circle”, trust+p), which you started, is stopping after its current step; press Erase "
        "again once it has ended.")
    monkeypatch.setattr(app.jobs, "snapshot", lambda: running)
    # the message box of a page that did not start the new job stops showing the last run's outcome
    out = app.on_tick("all", -1, -1, -1, 0, "3:done", 3, "b" * 16)
    assert out[app.message] == "Run 4 (“a red circle”, trust+p) is running (another visitor started it); the live " \
        "panels follow it."
    assert app.message not in app.on_tick("all", -1, -1, -1, 0, "3:done", 4, "a" * 16)  # Erase's message stays
    # a reloaded page shows the form of the run whose results it shows, not the preset's
    scenario = PRESETS["combination"]
    config = UnlearnConfig.for_method("trust+p", lr=0.02)
    done = dataclasses.replace(IDLE, state="done", target="a red circle", method="trust+p", run_idx=1, version=5,
                               scenario=scenario, config=config)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    _, name, _, targets, anchor, neighbours, anchor_auto, neighbours_auto, method, *fields, note, visitor = \
        app.on_page_load()
    assert len(visitor) == 16 and app.on_page_load(None, visitor)[-1] == visitor  # this browser keeps its id
    assert app.on_page_load(None, "x'; alert(1)")[-1] != "x'; alert(1)"  # a stored value not ours: a new id
    assert name["value"] == app.service.name == "shapes"  # the Model box shows the model in use
    assert name["info"] is None  # (no TRUST_MODEL_DIRS: no model folder to list under it)
    assert note == app.gr.skip()  # an ended run's message comes with the next tick
    running = dataclasses.replace(done, state="running", run_idx=2)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: running)
    assert app.on_page_load()[-2] == "Run 2 (“a red circle”, trust+p) is running; the live panels follow it."
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    assert anchor_auto == "a green circle" and neighbours_auto == "a red square\na blue circle"  # both still follow
    assert (targets, anchor, neighbours, method) == ("a red circle", "a green circle", "a red square\na blue circle",
                                                     "trust+p")
    assert fields[app.ADVANCED_FIELDS.index("lr")]["value"] == 0.02
    monkeypatch.setattr(app.jobs, "snapshot", lambda: IDLE)  # nothing run or shown: the form is left as it is
    assert app.on_page_load()[3] == app.gr.skip()
    # what this browser's form held before a reload comes back, over the run shown (typed, not yet erased)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    esd = app.method_defaults("esd-x")
    esd[app.ADVANCED_FIELDS.index("max_steps")] = 7
    typed = ("a purple star", "an orange star", "a purple circle\nan orange star", "an orange star", None, "esd-x",
             *esd, "a blue star", 3)
    draft = app.on_draft(*typed)  # what the page stores in the browser as the fields change
    _, _, _, *form, try_prompt, try_seed, note, _ = app.on_page_load(draft)
    assert form[:6] == list(typed[:6]) and (try_prompt, try_seed) == ("a blue star", 3)
    assert [f["value"] for f in form[6:]] == esd
    esd_reads = {"max_steps", "lr", "eta", "seed"}
    assert [f["interactive"] for f in form[6:]] == [n in esd_reads for n in app.ADVANCED_FIELDS]
    assert note == app.gr.skip()
    # a whole number past 64 bits typed in a field (1e20: the browser sends its digits) is kept as a float, which
    # the reply can carry (Gradio's JSON encoder refused the int: every save of the form failed with a 500)
    big = app.on_draft(*typed[:-1], 10**20)
    assert big["try_seed"] == 1e20 and isinstance(big["try_seed"], float) and big["seed"] == typed[-3]
    assert orjson.loads(orjson.dumps(big)) == big
    assert app.on_page_load(big)[-3] == 1e20  # and comes back on reload (Generate then says what is wrong with it)
    reloaded = app.on_page_load({**big, "try_seed": 10**20})  # as the browser sends the stored float: its digits
    assert reloaded[-3] == 1e20 and isinstance(reloaded[-3], float)
    for broken in ({**draft, "method": "rm -rf"}, {**draft, "lr": "0.1"}, {**draft, "targets": None},
                   {k: v for k, v in draft.items() if k != "seed"}, {**draft, "seed": True}, ["a red circle"], "x"):
        assert app.on_page_load(broken)[3] == "a red circle", broken  # not this page's: the run's form
    # a model that fails to load leaves the box showing the model still in use
    out = app.on_load_model("org/no-such-model")
    assert out[0].startswith("❌ could not fetch 'org/no-such-model'") and out[0].endswith("Still using shapes.")
    assert out[3] == "shapes" and "Error" not in out[0]
    assert ". Still using shapes." in out[0]  # a sentence each
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    out = app.on_load_model(" shapes ")  # the model in use: nothing is dropped (the run shown stays)
    assert out[0] == "Already using shapes; nothing changed." and out[1:3] == (app.gr.skip(), app.gr.skip())
    out = app.on_load_model("   ")  # an emptied box
    assert out[0].startswith("❌ Type a model to load: shapes") and out[0].endswith("Still using shapes.")
    assert out[3] == "shapes"


def test_reset_clears_try_a_prompts_erased_side(monkeypatch):
    import app
    from trust.jobs import JobBusyError

    calls = []
    monkeypatch.setattr(app.jobs, "reset", lambda by: calls.append(("jobs", by)))
    monkeypatch.setattr(app.service, "reset", lambda: calls.append("service"))
    message, images, heat, note = app.on_reset("v" * 16)
    assert calls == [("jobs", "v" * 16), "service"] and message.startswith("Back to the original model")
    assert images == app.no_erased() and heat is None and note.startswith("No erased model")  # not the last run's
    images.pop("value")  # (what Gradio does with an update it sends: a shared one would clear the pictures once)
    assert app.on_reset("v" * 16)[1] == app.no_erased()

    def busy(by):
        raise JobBusyError("a job is being measured; wait for it to end")

    monkeypatch.setattr(app.jobs, "reset", busy)
    out = app.on_reset()
    assert out[0] == "⚠️ a job is being measured; wait for it to end." and all(o is not None for o in out[1:])
    assert calls == [("jobs", "v" * 16), "service"] * 2  # the model stays erased when the reset is refused



def test_clicking_the_sample_tile_zooms_no_word(monkeypatch):
    import types

    import app

    monkeypatch.setattr(app, "draw_heat", lambda s, layer, step, pos: ("gallery", f"zoom of word {pos}", "steps"))
    assert app.on_token_click("all", 0, types.SimpleNamespace(index=0)) == (app.gr.skip(), app.gr.skip())
    assert app.on_token_click("all", 0, types.SimpleNamespace(index=2)) == (1, "zoom of word 1")  # tile 2: word 1


def test_a_model_without_shapesworlds_grammar_gets_the_empty_anchor_and_says_nothing_is_measured(monkeypatch):
    import app
    from trust.jobs import IDLE

    model = app.service.model
    monkeypatch.setattr(app.service, "_model", dataclasses.replace(model, detector=None))  # as Stable Diffusion
    monkeypatch.setattr(app.jobs, "snapshot", lambda: IDLE)
    # as `trust erase` on such a model: the empty prompt, not "a green circle" (no scene with one attribute changed)
    targets, anchor, neighbours, anchor_auto, _ = app.on_preset("combination")
    assert (targets, anchor, anchor_auto, neighbours) == ("a red circle", '""', '""', "a red square\na blue circle")
    assert app.on_targets("a photo of a cat", '""', '""', "", "", None)[:2] == (app.gr.update(), '""')
    assert app.on_targets("a photo of a cat", "a dog", "a dog", "", "", None)[:2] == ('""', '""')
    out = app.on_page_load()  # the page's first form too
    assert out[4] == out[6] == '""' and out[1]["value"] == app.service.name
    # an ended run with nothing measured is no ✅
    done = dataclasses.replace(IDLE, state="done", message="ran all 6 steps", target="a photo of a cat",
                               method="trust+p", run_idx=1, version=9, metrics=None)
    monkeypatch.setattr(app.jobs, "snapshot", lambda: done)
    message = app.on_tick("all", -1, -1, 3, 0, "")[app.message]
    assert message.startswith("ℹ️ Run 1 (“a photo of a cat”, trust+p) ended: ran all 6 steps. This model has no "
                              "concept detector, so whether the target is gone is not measured")


def test_loading_another_model_clears_try_a_prompt_and_names_the_model_folders(tiny_sd_dir, monkeypatch):
    import app
    from trust.jobs import IDLE

    monkeypatch.setattr(app.jobs, "snapshot", lambda: IDLE)
    monkeypatch.setattr(app.service, "model_dirs", (tiny_sd_dir.parent,))  # as TRUST_MODEL_DIRS would
    assert tiny_sd_dir.name in app.on_page_load()[1]["info"]  # the Model box says what the folders hold
    try:
        out = app.on_load_model(tiny_sd_dir.name)  # by its name in the model folders, not its path
        assert out[0] == f"Loaded {tiny_sd_dir.name}."
        # Try a prompt's pictures were the last model's: they go, and the note says what Generate draws now
        assert out[4:8] == (None, None, app.no_erased(), None)
        assert out[8].startswith(f"{tiny_sd_dir.name} is loaded: Generate draws with it")
        assert app.on_try("a photo of a cat", 0)[-1].startswith(f"No erased model of {tiny_sd_dir.name} yet")
        refused = app.on_load_model("sd-x")  # a name it cannot load: what it could, and nothing else changes
        assert "model folders hold" in refused[0] and tiny_sd_dir.name in refused[0]
        assert refused[1:3] == (app.gr.skip(),) * 2 and refused[4:] == (app.gr.skip(),) * 5
    finally:
        app.on_load_model("shapes")
    assert app.service.name == "shapes" and app.service.model.detector is not None
