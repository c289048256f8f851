"""Background unlearning jobs: one at a time per server, observed through immutable snapshots.

    jobs = JobRunner()
    jobs.start(model, scenario, config)   # raises JobBusyError while another job runs
    jobs.snapshot()                       # what the UI draws: state, reports, result
    jobs.stop()                           # takes effect within one step
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .concepts import Scenario
from .errors import TrustError
from .models import DiffusionModel
from .unlearn import StepReport, UnlearnConfig, UnlearnResult, unlearn


class JobBusyError(TrustError):
    """A job is already running on this server."""


@dataclass(frozen=True)
class JobSnapshot:
    state: str  # "idle", "preparing", "running", "stopping", "done", "failed"
    message: str
    target: str
    method: str
    max_steps: int
    reports: tuple[StepReport, ...]  # every step so far, in order
    result: UnlearnResult | None  # set once the job has ended well
    started_at: float  # time.time() at start

    @property
    def running(self) -> bool:
        return self.state in ("preparing", "running", "stopping")

    @property
    def step(self) -> int:
        return self.reports[-1].step if self.reports else 0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current pace, if the job runs to max_steps."""
        if not self.reports:
            return None
        last = self.reports[-1]
        per_step = last.elapsed / last.step
        return per_step * (self.max_steps - last.step)


IDLE = JobSnapshot("idle", "no job has run yet", "", "", 0, (), None, 0.0)


class JobRunner:
    """Owns the job thread, its stop event and a lock-guarded status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot = IDLE

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    def _update(self, **changes) -> None:
        with self._lock:
            self._snapshot = JobSnapshot(**{**self._snapshot.__dict__, **changes})

    def start(self, model: DiffusionModel, scenario: Scenario, config: UnlearnConfig) -> None:
        with self._lock:
            if self._snapshot.running:
                s = self._snapshot
                raise JobBusyError(f"busy: erasing {s.target!r} with {s.method} (step {s.step} of {s.max_steps}); "
                                   "watch it or wait until it ends")
            self._stop.clear()
            self._snapshot = JobSnapshot("preparing", "making the frozen model's images", scenario.targets[0],
                                         config.method, config.max_steps, (), None, time.time())
            self._thread = threading.Thread(target=self._run, args=(model, scenario, config), daemon=True,
                                            name="trust-erase")
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if not self._snapshot.running:
                return
            self._stop.set()
        self._update(state="stopping", message="stopping after this step")

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_step(self, report: StepReport) -> None:
        with self._lock:
            s = self._snapshot
            state = "stopping" if s.state == "stopping" else "running"
            self._snapshot = JobSnapshot(**{**s.__dict__, "state": state, "reports": s.reports + (report,),
                                            "message": f"step {report.step} of {s.max_steps}"})

    def _run(self, model: DiffusionModel, scenario: Scenario, config: UnlearnConfig) -> None:
        try:
            result = unlearn(model, scenario, config, callback=self._on_step, stop_event=self._stop)
        except Exception as err:  # the job dies, the server does not: show the reason
            self._update(state="failed", message=f"the job failed: {err}")
            return
        self._update(state="done", message=result.message, result=result)
