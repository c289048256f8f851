import time

import pytest

from trust.concepts import PRESETS
from trust.jobs import JobBusyError, JobRunner
from trust.unlearn import UnlearnConfig

FAST = {"num_train_images": 2, "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1}


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_one_job_at_a_time_snapshots_and_stop(shapes_model):
    jobs = JobRunner()
    assert jobs.snapshot().state == "idle"
    jobs.start(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=500, probe_every=0, **FAST))
    with pytest.raises(JobBusyError, match="busy: erasing 'a red circle' with trust"):
        jobs.start(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=5, **FAST))
    wait_for(lambda: jobs.snapshot().step >= 2)
    seen = jobs.snapshot()
    assert seen.running and seen.eta_seconds > 0
    jobs.stop()
    jobs.join(60)
    final = jobs.snapshot()
    assert final.state == "done" and final.result.stop_reason == "stopped"
    assert final.step <= seen.step + 2  # stop takes effect within a step
    assert seen.reports == final.reports[: len(seen.reports)]  # snapshots only grow
    # the server takes the next job
    jobs.start(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=1, probe_every=0, **FAST))
    jobs.join(60)
    assert jobs.snapshot().state == "done"


def test_a_failing_job_reports_its_reason(shapes_model):
    from trust.concepts import scenario_from_prompts

    jobs = JobRunner()
    jobs.start(shapes_model, scenario_from_prompts("a dog", []), UnlearnConfig(max_steps=1, **FAST))
    jobs.join(60)
    snapshot = jobs.snapshot()
    assert snapshot.state == "failed" and "can only erase colours, shapes and backgrounds" in snapshot.message
