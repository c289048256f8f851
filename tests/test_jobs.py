import json
import time
import zipfile

import pytest

import trust.jobs
from trust.concepts import PRESETS, scenario_from_prompts
from trust.errors import TrustError
from trust.jobs import JobBusyError, JobOptions, JobRunner, NotYoursError
from trust.models import load_model
from trust.unlearn import UnlearnConfig

FAST = {"num_train_images": 2, "retain_prompts": 2,
        "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1,
        "data_steps": 5}
QUICK = JobOptions.quick()


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_one_job_at_a_time_snapshots_previews_and_stop(shapes_model, tmp_path, monkeypatch):
    jobs = JobRunner(tmp_path)
    assert jobs.snapshot().state == "idle"
    jobs.start(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=500, probe_every=0, **FAST), QUICK,
               owner="a" * 16)
    with pytest.raises(JobBusyError, match="the job erasing “a red circle” with trust is at step"):
        jobs.start(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=5, **FAST), QUICK)
    wait_for(lambda: jobs.snapshot().preview is not None)
    assert jobs.snapshot().preview.step == 0  # the original model, before the first step
    wait_for(lambda: jobs.snapshot().step >= 2 and jobs.snapshot().preview.step >= 1)
    seen = jobs.snapshot()
    assert seen.running and seen.eta_seconds > 0
    assert seen.preview.tokens == ("<|startoftext|>", "a", "red", "circle", "<|endoftext|>")
    assert seen.preview.heat_maps.timesteps and len(seen.preview.heat_maps.timesteps) == QUICK.preview_steps
    assert [s for s, _ in seen.masks] == [r.step for r in seen.reports if r.refreshed]
    assert seen.mask.per_layer() == seen.reports[-1].mask_sizes  # the live mask is the loop's mask
    # another visitor cannot stop it while its owner's page is there; once the owner is away, anyone can
    with pytest.raises(NotYoursError, match="Run 1 was started by another visitor, whose page is open: only they"):
        jobs.stop(by="b" * 16)
    monkeypatch.setattr(trust.jobs, "OWNER_AWAY_SECONDS", 0.5)
    jobs.seen("a" * 16)  # the owner's page asks for the job: they are there
    with pytest.raises(NotYoursError):
        jobs.stop(by="b" * 16)
    time.sleep(0.3)
    jobs.seen("b" * 16)  # (another visitor's page asking for the job says nothing of its owner)
    time.sleep(0.3)
    stopped_at = jobs.snapshot()
    assert stopped_at.state == "running"
    assert jobs.stop(by="b" * 16)
    jobs.join(120)
    final = jobs.snapshot()
    assert final.state == "done" and final.result.stop_reason == "stopped"
    assert final.step <= stopped_at.step + 2  # stop takes effect within a step
    assert seen.reports == final.reports[: len(seen.reports)]  # snapshots only grow
    assert final.version > seen.version
    # the result is its owner's too: another visitor's Reset waits until they are away, the owner's does not
    jobs.seen("a" * 16)
    with pytest.raises(NotYoursError, match="whose page is open: only they can reset it"):
        jobs.reset(by="b" * 16)
    assert jobs.snapshot().state == "done"
    jobs.reset(by="a" * 16)
    assert jobs.snapshot().state == "idle"
    # the server takes the next job; the history keeps both
    jobs.start(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=1, probe_every=0, **FAST), QUICK)
    jobs.join(120)
    assert [r.run_idx for r in jobs.snapshot().history] == [1, 2]


def test_a_finished_job_has_panels_metrics_and_an_export(shapes_model, tmp_path, monkeypatch):
    import trust.jobs

    erased, while_attacking = [], []
    jobs = JobRunner(tmp_path, on_result=erased.append)
    real_attacks = trust.jobs.attack_summary

    def attack_summary(*args, **kwargs):  # what the page has while the attacks, the slowest part, run
        while_attacking.append(jobs.snapshot())
        with pytest.raises(JobBusyError, match="the run is being measured; reset when it has ended"):
            jobs.reset()  # (Stop has nothing to stop then, so the message does not ask for it)
        return real_attacks(*args, **kwargs)

    monkeypatch.setattr(trust.jobs, "attack_summary", attack_summary)
    real_unlearn = trust.jobs.unlearn

    def unlearn(*args, callback, **kwargs):  # Stop pressed while the last step runs: too late, and said so
        return real_unlearn(*args, callback=lambda report: (callback(report), report.step == 2 and jobs.stop()),
                            **kwargs)

    monkeypatch.setattr(trust.jobs, "unlearn", unlearn)
    jobs.start(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=2, probe_every=0, **FAST), QUICK)
    jobs.join(180)
    s = jobs.snapshot()
    assert s.state == "done", s.message
    assert s.message == "ran all 2 steps (Stop came as its last step ran)" and s.result.stop_reason == "max_steps"
    assert erased == [s.result]
    # the before/after panels and UA/IRA/CRA were there before the attacks began; nothing else of the end was
    [early] = while_attacking
    assert early.state == "finishing" and "attacking the erased model" in early.message
    assert early.panels == s.panels and {"UA", "IRA", "CRA"} <= set(early.metrics)
    assert "ASR_paraphrase" not in early.metrics and early.export_path is None and early.history == ()
    assert {k: s.metrics[k] for k in ("UA", "IRA", "CRA")} == {k: early.metrics[k] for k in ("UA", "IRA", "CRA")}
    assert [p.prompt for p in s.panels] == ["a red circle", "a red square", "a blue circle"]
    assert all(len(p.before) == len(p.after) == len(p.after_verdicts) == QUICK.panel_images for p in s.panels)
    assert s.panels[0].before[0].shape == (128, 128, 3) and "circle" in s.panels[0].before_verdicts[0]
    assert set(s.metrics) >= {"UA", "IRA", "CRA"} and 0 <= s.metrics["UA"] <= 1
    # both attacks ran on the erased model: every paraphrase sampled, the embedding attack optimised
    assert 0 <= s.metrics["ASR_paraphrase"] <= 1 and 0 <= s.metrics["ASR_embedding"] <= 1
    attacks = s.metrics["attacks"]
    assert attacks["paraphrase"]["num_samples"] == len(PRESETS["combination"].ua_prompts) * QUICK.attack_samples
    report = json.loads(zipfile.ZipFile(s.export_path).read("report.json"))
    assert report["metrics"]["ASR_paraphrase"] == s.metrics["ASR_paraphrase"]
    names = zipfile.ZipFile(s.export_path).namelist()
    assert {"delta.safetensors", "masks.json", "config.json", "report.json"} <= set(names)
    scenario = json.loads(zipfile.ZipFile(s.export_path).read("config.json"))["scenario"]
    assert scenario["anchors"] == report["anchors"] and "anchor" not in scenario  # as `trust erase` writes it
    assert len([n for n in names if n.startswith("images/")]) == 6
    assert s.history[-1].metrics == s.metrics and s.history[-1].steps == 2
    jobs.reset()
    after = jobs.snapshot()
    assert after.state == "idle" and after.result is None and after.history == s.history


def test_a_job_the_model_cannot_do_never_starts(shapes_model):
    jobs = JobRunner()
    config = UnlearnConfig(max_steps=1, **FAST)
    for scenario, reason in (
            (scenario_from_prompts("a dog", []), "it names no colour"),
            (scenario_from_prompts("a red circle", [], more_targets=("a blue star",)),
             "share no colour, shape or background \\(erase them one at a time"),
            (scenario_from_prompts("a red circle", ["a crimson disc"]), "'a crimson disc' shows the concept"),
            (scenario_from_prompts("a red circle", ["qwerty"]), "'qwerty' is not one scene of this world"),
            # the words that name the concept come after the 24 tokens the model reads
            (scenario_from_prompts(" ".join(["very"] * 22) + " a red circle", []),
             "has 27 tokens and 'shapes' reads the first 24: those name no concept, not color=red \\+ shape=circle"),
            (scenario_from_prompts("a red circle", ["a blue " + "very " * 22 + "circle"]),
             "the neighbour 'a blue very .* those name color=blue, not color=blue \\+ shape=circle"),
            # (a bare plain background's anchor, the empty prompt, draws one itself: UA 0.00 after 200 steps)
            (scenario_from_prompts("a plain background", []), "names a plain background alone")):
        with pytest.raises(TrustError, match=reason):
            jobs.start(shapes_model, scenario, config, QUICK)
    s = jobs.snapshot()
    assert s.state == "idle" and s.run_idx == 0  # refused before it began: no run number spent
    assert not jobs.stop()  # nothing to stop


def test_a_failing_job_reports_its_reason(shapes_model, monkeypatch, caplog):
    import trust.jobs

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory on the second step")

    monkeypatch.setattr(trust.jobs, "unlearn", broken)
    jobs = JobRunner()
    jobs.start(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=1, **FAST), QUICK)
    jobs.join(60)
    s = jobs.snapshot()
    assert s.state == "failed" and s.message == "the job failed: out of memory on the second step"
    assert s.run_idx == 1 and [(r.run_idx, r.stop_reason, r.metrics) for r in s.history] == [(1, "failed", None)]
    assert "run 1 failed" in caplog.text and "Traceback" in caplog.text  # the server's log has the trace
    jobs.reset()  # the server goes on
    assert jobs.snapshot().state == "idle"


def test_a_job_stopped_before_its_first_step_keeps_nothing(shapes_model, tmp_path):
    kept = []
    jobs = JobRunner(tmp_path, on_result=kept.append)
    jobs.start(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=5, **FAST), QUICK)
    assert jobs.snapshot().state == "preparing" and jobs.snapshot().target == "a red circle (+3 more)"
    assert jobs.stop()
    jobs.join(120)
    s = jobs.snapshot()
    assert s.state == "idle" and s.message == "stopped before the first step: nothing was erased"
    assert s.history == () and s.result is None and kept == []  # no 0-step run offered as "erased"
    assert s.run_idx == 0  # and its number goes to the next job
    assert not any(tmp_path.iterdir())


def test_a_job_on_stable_diffusion(tiny_sd_dir, tmp_path):
    """The same job on an SD 1.x pipeline (tiny, random): no detector, so no verdicts and no metrics."""
    model = load_model(tiny_sd_dir)
    jobs = JobRunner(tmp_path)
    jobs.start(model, scenario_from_prompts("a cat on a table", ["a cat"]),
               UnlearnConfig(max_steps=2, probe_every=0, **FAST), QUICK)
    jobs.join(180)
    s = jobs.snapshot()
    assert s.state == "done", s.message
    assert s.preview.verdict is None and s.preview.step == 2 and "cat" in s.preview.tokens
    assert s.metrics is None and s.panels[0].before_verdicts == ()
    assert "delta.safetensors" in zipfile.ZipFile(s.export_path).namelist()


def test_only_the_latest_runs_keep_their_folders(tmp_path):
    for idx in (1, 2, 3, 12):
        (tmp_path / f"run-{idx}" / "images").mkdir(parents=True)
        (tmp_path / f"trust-run-{idx}-trust.zip").write_bytes(b"zip")
    (tmp_path / "notes").mkdir()  # not the runner's: left alone
    JobRunner(tmp_path)._forget_old_runs(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "run-12", "run-3", "trust-run-12-trust.zip",
                                                          "trust-run-3-trust.zip"]
