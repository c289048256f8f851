"""Background unlearning jobs: one at a time per server, observed through immutable snapshots.

    jobs = JobRunner(workdir)
    jobs.start(model, scenario, config)   # raises JobBusyError while another job runs
    jobs.snapshot()                       # what the UI draws: state, reports, live preview, outcome, past runs
    jobs.stop()                           # takes effect within one step

A job runs in its own thread: a preview of the frozen model first (so a viewer sees
something at once), then `unlearn`, whose `inspect` hook draws a small preview of the
UNet being edited at most every `preview_every` seconds; at the end it measures the
erased model, draws before/after panels and packs the export. The model's own UNet
belongs to the job while it runs: the app shows copies (trust/service.py).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from .artifacts import write_json
from .attacks import attack_summary
from .attention import CrossAttentionRecorder, HeatMaps
from .concepts import Scenario
from .erase import report_dict, save_panels, write_weights_and_settings
from .errors import TrustError, shorten
from .generation import generate
from .metrics import measure
from .models import DiffusionModel
from .neurons import NeuronMask
from .service import describe_verdicts
from .unlearn import StepReport, UnlearnConfig, UnlearnResult, check_erasable, unlearn

log = logging.getLogger(__name__)
PREVIEW_SEED = 30_000  # the live preview's seed, apart from training, probe and metric seeds
KEEP_RUNS = 5  # the erase folders and zips of this many latest runs stay in the workdir
RUNNING = ("preparing", "running", "stopping", "finishing")
OWNER_AWAY_SECONDS = 90  # a job whose starter's pages have not asked for it this long may be stopped by anyone
#                          (a hidden browser tab polls about once a minute)


class NotYoursError(TrustError):
    """Stop was pressed on a job another visitor started, whose page is still open."""


class JobBusyError(TrustError):
    """A job is already running on this server."""


@dataclass(frozen=True)
class JobOptions:
    """What a job does besides unlearning: previews, measurements, panels."""

    preview_every: float = 1.0  # seconds between live previews of the UNet being edited (at most one per step)
    preview_steps: int = 10  # DDIM steps of a live preview
    metric_samples: int = 4  # samples per prompt for UA/IRA/CRA at the end (0: no metrics)
    max_paraphrases: int = 12  # paraphrases of the target counted in UA
    panel_images: int = 4  # before/after images per prompt (same seeds)
    sample_steps: int | None = None  # DDIM steps of metric and panel samples (None: the model's default)
    attack_samples: int = 2  # samples per paraphrase for ASR_paraphrase (0: no attacks)
    attack_steps: int = 40  # optimisation steps of the embedding attack (ASR_embedding)

    @classmethod
    def quick(cls) -> JobOptions:
        """Small measurements, for tests and demos on a busy CPU."""
        return cls(preview_steps=6, metric_samples=1, max_paraphrases=2, panel_images=2, sample_steps=10,
                   attack_samples=1, attack_steps=5)


@dataclass(frozen=True)
class LivePreview:
    """One sample of the target prompt, with its per-token cross-attention maps."""

    step: int  # fine-tuning steps done when it was drawn (0: the original model)
    prompt: str
    tokens: tuple[str, ...]  # the prompt's tokens, start and end tokens included
    image: torch.Tensor  # (3, H, W) in [0, 1]
    heat_maps: HeatMaps  # one image, preview_steps recorded steps
    verdict: str | None  # the detector's reading of the sample


@dataclass(frozen=True)
class Panel:
    """Before/after images of one prompt, same seeds, with the detector's verdict on each."""

    prompt: str
    role: str  # "target" or "neighbour"
    before: tuple[np.ndarray, ...]  # (S, S, 3) uint8 each
    after: tuple[np.ndarray, ...]
    before_verdicts: tuple[str, ...]  # empty without a detector
    after_verdicts: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """A finished run, as the runs table lists it."""

    run_idx: int
    method: str
    target: str
    steps: int
    seconds: float
    stop_reason: str
    changed_fraction: float
    metrics: dict | None  # UA, IRA, CRA (and ASRs where measured)
    model: str = ""  # the model it erased from (the page may load another between runs)


@dataclass(frozen=True)
class JobSnapshot:
    state: str  # "idle", "preparing", "running", "stopping", "finishing", "done", "failed"
    message: str
    target: str
    method: str
    max_steps: int
    reports: tuple[StepReport, ...]  # every step so far, in order
    result: UnlearnResult | None  # set once the job has ended well
    started_at: float  # time.time() at start
    run_idx: int = 0  # 1, 2, ... per job started on this runner (0: none yet)
    version: int = 0  # grows with every change: a viewer redraws only when it moved
    config: UnlearnConfig | None = None
    scenario: Scenario | None = None  # what the job erases, as asked (a reloaded page fills its form from it)
    preview: LivePreview | None = None
    masks: tuple[tuple[int, NeuronMask], ...] = ()  # (step, mask) at every mask refresh
    panels: tuple[Panel, ...] = ()  # before/after, once the job is measured (shown while its attacks run)
    metrics: dict | None = None  # of the erased model, once the job has ended
    export_path: Path | None = None  # a zip of the erase folder, once the job has ended
    history: tuple[RunSummary, ...] = ()  # every run that ended (well, or failed) on this runner, oldest first
    ended_at: float = 0.0  # time.time() when the job ended (done or failed; 0: not yet)
    owner: str = ""  # who started the job (an opaque id of the visitor's browser; "": anyone may stop it)

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def step(self) -> int:
        return self.reports[-1].step if self.reports else 0

    @property
    def elapsed(self) -> float:
        return self.reports[-1].elapsed if self.reports else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace of the steps so far (preparation not counted), if the job runs to max_steps."""
        if len(self.reports) < 2:
            return None
        first, last = self.reports[0], self.reports[-1]
        per_step = (last.elapsed - first.elapsed) / (last.step - first.step)
        return per_step * (self.max_steps - last.step)

    @property
    def mask(self) -> NeuronMask | None:
        return self.masks[-1][1] if self.masks else None


IDLE = JobSnapshot("idle", "no job has run yet", "", "", 0, (), None, 0.0)
STOPPED_EARLY = "stopped before the first step: nothing was erased"  # an idle snapshot's message after such a stop
RESET = "back to the original model"  # an idle snapshot's message after Reset (or, after this prefix, a model load:
LOADED = "another model: "  #            `reset(message=LOADED + what the page that loaded it said)`)


def target_label(scenario: Scenario) -> str:
    """The targets in a few words: the first prompt (shortened), and how many more."""
    more = len(scenario.targets) - 1
    return shorten(scenario.targets[0]) + (f" (+{more} more)" if more else "")


def live_preview(model: DiffusionModel, unet: UNet2DConditionModel, prompt: str, step: int,
                 num_inference_steps: int) -> LivePreview:
    """Draw one sample of `prompt` with `unet` in place of the model's own, recording cross-attention.

    The recorder hooks `unet`: the caller must own it (the job thread does).
    """
    shown = dataclasses.replace(model, unet=unet)
    with CrossAttentionRecorder(unet) as recorder:
        out = generate(shown, prompt, seed=PREVIEW_SEED, num_inference_steps=num_inference_steps, recorder=recorder)
    verdict = None
    if model.detector is not None:
        verdict = describe_verdicts(model, out.images)[0]
    return LivePreview(step=step, prompt=prompt, tokens=tuple(model.tokens(prompt)), image=out.images[0],
                       heat_maps=recorder.heat_maps(), verdict=verdict)


def _read_panels(folder: Path, model: DiffusionModel, scenario: Scenario, names: list[str],
                 num_images: int) -> tuple[Panel, ...]:
    """The rows `save_panels` wrote, cut into images, with the detector's verdict on what is shown."""
    def tiles(name: str) -> list[np.ndarray]:
        row = np.asarray(Image.open(folder / name).convert("RGB"))
        return list(np.split(row, num_images, axis=1))

    def verdicts(images: list[np.ndarray]) -> tuple[str, ...]:
        if model.detector is None:
            return ()
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        return tuple(describe_verdicts(model, batch))

    prompts = list(scenario.targets) + list(scenario.neighbours)
    half = len(names) // 2  # save_panels writes every "before" row, then every "after" row
    panels = []
    for p_idx, prompt in enumerate(prompts):
        before, after = tiles(names[p_idx]), tiles(names[half + p_idx])
        panels.append(Panel(prompt=prompt, role="target" if p_idx < len(scenario.targets) else "neighbour",
                            before=tuple(before), after=tuple(after), before_verdicts=verdicts(before),
                            after_verdicts=verdicts(after)))
    return tuple(panels)


class JobRunner:
    """Owns the job thread, its stop event and a lock-guarded status.

    `workdir` receives each run's erase folder and zip; `on_result` is called (in the job
    thread) with each result that ended well, e.g. to offer the erased model for prompts.
    """

    def __init__(self, workdir: Path | None = None, on_result=None) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.on_result = on_result
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot = IDLE
        self._last_preview = 0.0
        self._owner_seen = 0.0  # time.time() when the job's owner last asked for it (`seen`)

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    def _update(self, **changes) -> None:
        with self._lock:
            s = self._snapshot
            self._snapshot = dataclasses.replace(s, version=s.version + 1, **changes)

    def start(self, model: DiffusionModel, scenario: Scenario, config: UnlearnConfig,
              options: JobOptions | None = None, owner: str = "") -> None:
        """Start a job in its own thread; `owner` (who starts it) alone may stop it while their page is open."""
        options = options or JobOptions()
        with self._lock:
            s = self._snapshot
            if s.running:
                doing = "stopping" if s.state == "stopping" else f"at step {s.step} of {s.max_steps}"
                raise JobBusyError(f"the job erasing “{s.target}” with {s.method} is {doing}; it is shown live "
                                   "here, and Erase works again once it has ended")
        check_erasable(model, scenario)  # a concept the model cannot erase never starts (nor takes a run number)
        with self._lock:
            s = self._snapshot
            if s.running:  # another start won the race while this one was checking
                raise JobBusyError(f"the job erasing “{s.target}” with {s.method} has just started")
            self._stop.clear()
            self._snapshot = JobSnapshot(
                "preparing", "drawing the original model's attention", target_label(scenario), config.method,
                config.max_steps, (), None, time.time(), run_idx=s.run_idx + 1, version=s.version + 1,
                config=config, scenario=scenario, history=s.history, owner=owner)
            self._owner_seen = time.time()
            self._thread = threading.Thread(target=self._run, args=(model, scenario, config, options), daemon=True,
                                            name="trust-erase")
            self._thread.start()

    def seen(self, visitor: str) -> None:
        """A page of `visitor` asked for the job: if they own it, they are still there."""
        with self._lock:
            if visitor and visitor == self._snapshot.owner:
                self._owner_seen = time.time()

    def stop(self, by: str | None = None) -> bool:
        """Ask the job to stop after its current step; False when there is no step to stop (no job, or one
        already stopping or measuring). `by` (a visitor) other than the job's owner may stop it only once the
        owner has been away OWNER_AWAY_SECONDS (NotYoursError before); None: the server's own call, always."""
        with self._lock:
            s = self._snapshot
            if s.state not in ("preparing", "running"):
                return False
            self._refuse_unless_theirs(s, by, "stop", f"It ends by itself after at most {s.max_steps} steps")
            self._stop.set()
        self._update(state="stopping", message="stopping after this step")
        return True

    def _refuse_unless_theirs(self, s: JobSnapshot, by: str | None, action: str, meanwhile: str) -> None:
        """NotYoursError when visitor `by` must leave run `s` to its owner, whose page asked for it lately (call
        holding the lock). None: the server's own call, never refused."""
        if by is not None and s.owner and by != s.owner and time.time() - self._owner_seen < OWNER_AWAY_SECONDS:
            raise NotYoursError(
                f"Run {s.run_idx} was started by another visitor, whose page is open: only they can {action} it. "
                f"{meanwhile}; if they leave, {action.capitalize()} works here {OWNER_AWAY_SECONDS} s later")

    def reset(self, by: str | None = None, message: str = RESET) -> None:
        """Forget the last run's result and panels (its row in the history stays); refused while running. As with
        `stop`, a visitor `by` other than the run's owner may reset only once the owner has been away
        OWNER_AWAY_SECONDS: the result shown is theirs (NotYoursError before). `message` tells every page why."""
        with self._lock:
            s = self._snapshot
            if s.state == "finishing":  # (Stop has nothing left to stop then)
                raise JobBusyError("the run is being measured; reset when it has ended (a minute or two)")
            if s.running:
                raise JobBusyError("a job is running; stop it before resetting")
            if s.state != "idle":
                self._refuse_unless_theirs(s, by, "reset", "Erase replaces it with a run of your own")
            self._snapshot = dataclasses.replace(IDLE, message=message, run_idx=s.run_idx,
                                                 version=s.version + 1, history=s.history)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the job thread ---

    def _on_step(self, report: StepReport) -> None:
        with self._lock:
            s = self._snapshot
            masks = s.masks
            if report.refreshed and report.saliency_z:  # the loop's mask, from these z-scores (TRUST_METHOD.md §3)
                z = {n: torch.from_numpy(v.astype(np.float32)) for n, v in report.saliency_z.items()}
                masks = masks + ((report.step, NeuronMask.from_z(z, tau=s.config.tau, rho=s.config.rho)),)
            state = "stopping" if s.state == "stopping" else "running"
            message = s.message  # "stopping after this step" stays while stopping
            if state == "running" and report.probe is not None:
                message = f"probe at step {report.step}: the target is gone from {report.probe.ua:.0%} of its samples"
            elif state == "running" and not s.reports:
                message = "fine-tuning"
            self._snapshot = dataclasses.replace(s, state=state, reports=s.reports + (report,), masks=masks,
                                                 message=message, version=s.version + 1)

    def _preview(self, model: DiffusionModel, unet: UNet2DConditionModel, scenario: Scenario, step: int,
                 options: JobOptions) -> None:
        self._last_preview = time.perf_counter()
        self._update(preview=live_preview(model, unet, scenario.targets[0], step, options.preview_steps))

    def _run(self, model: DiffusionModel, scenario: Scenario, config: UnlearnConfig, options: JobOptions) -> None:
        def inspect(edited: UNet2DConditionModel, report: StepReport) -> None:
            if report.step == 1 or time.perf_counter() - self._last_preview >= options.preview_every:
                self._preview(model, edited, scenario, report.step, options)

        try:
            # 1. What the original model does with the target, at once
            self._preview(model, model.unet, scenario, 0, options)
            self._update(message=f"making the original model's images of the target, anchor and neighbours "
                                 f"({config.num_train_images} each, {config.data_steps} DDIM steps)")
            # 2. Unlearn, previewing the edited UNet along the way
            result = unlearn(model, scenario, config, callback=self._on_step, stop_event=self._stop,
                             inspect=inspect)
            if result.stop_reason == "stopped" and result.steps == 0:  # nothing erased: nothing to measure or keep
                with self._lock:
                    s = self._snapshot
                    self._snapshot = dataclasses.replace(  # and its run number goes to the next job
                        IDLE, message=STOPPED_EARLY, run_idx=s.run_idx - 1,
                        version=s.version + 1, history=s.history)
                return
            if self._stop.is_set() and result.stop_reason != "stopped":  # pressed while the last step ran: too late
                result = dataclasses.replace(result, message=f"{result.message} (Stop came as its last step ran)")
            # 3. Measure, draw and pack
            self._update(state="finishing", message=f"{result.message}; measuring the erased model")
            self._preview(model, result.unet, scenario, result.steps, options)
            self._finish(model, result, options)
        except Exception as err:  # the job dies, the server does not: show the reason, and log the trace
            if not isinstance(err, (TrustError, ValueError)):  # (those are the user's input, said in full)
                log.exception("run %d failed", self._snapshot.run_idx)
            s = self.snapshot()  # the runs table lists it too, so that no run number goes missing there
            failed = RunSummary(run_idx=s.run_idx, method=s.method, target=s.target, steps=s.step,
                                seconds=time.time() - s.started_at, stop_reason="failed", changed_fraction=0.0,
                                metrics=None, model=model.name)
            self._update(state="failed", message=f"the job failed: {err}", ended_at=time.time(),
                         history=s.history + (failed,))

    def _finish(self, model: DiffusionModel, result: UnlearnResult, options: JobOptions) -> None:
        """Metrics, then the before/after panels (on the page while the attacks run), then the attacks and export."""
        if options.sample_steps is not None:
            model = dataclasses.replace(model, num_inference_steps=options.sample_steps)
        erased = result.erased_model(model)
        metrics = None
        if model.detector is not None and options.metric_samples > 0:
            metrics = measure(erased, result.scenario, num_samples=options.metric_samples,
                              max_paraphrases=options.max_paraphrases)
        self._update(message=f"{result.message}; drawing before/after panels", metrics=metrics)
        panels, folder, names = (), None, []
        if self.workdir is not None:
            self._forget_old_runs(self._snapshot.run_idx - KEEP_RUNS)
            folder = self.workdir / f"run-{self._snapshot.run_idx}"
            shutil.rmtree(folder, ignore_errors=True)
            names = save_panels(folder / "images", model, result, num_images=options.panel_images)
            panels = _read_panels(folder / "images", model, result.scenario, names, options.panel_images)
        if metrics is not None and options.attack_samples > 0:  # the slowest part: the page shows the rest meanwhile
            self._update(message=f"{result.message}; attacking the erased model (paraphrases, embeddings)",
                         panels=panels)
            metrics = {**metrics, **attack_summary(model, erased, result.scenario, result.before,
                                                   samples_per_prompt=options.attack_samples,
                                                   embedding_steps=options.attack_steps,
                                                   embedding_samples=2 * options.attack_samples)}
        export_path = self._export(folder, model, result, metrics, names) if folder is not None else None
        s = self.snapshot()
        summary = RunSummary(run_idx=s.run_idx, method=result.config.method, target=s.target, steps=result.steps,
                             seconds=result.wall_seconds, stop_reason=result.stop_reason,
                             changed_fraction=result.changed_fraction, metrics=metrics, model=model.name)
        if self.on_result is not None:
            self.on_result(result)
        self._update(state="done", message=result.message, result=result, panels=panels, metrics=metrics,
                     export_path=export_path, history=s.history + (summary,), ended_at=time.time())

    def _forget_old_runs(self, last: int) -> None:
        """Delete the erase folders and zips of runs up to `last` (the page offers only the latest run's)."""
        for path in self.workdir.glob("run-*"):
            if path.name.removeprefix("run-").isdigit() and int(path.name.removeprefix("run-")) <= last:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.workdir.glob("trust-run-*.zip"):
            idx = path.name.split("-")[2]
            if idx.isdigit() and int(idx) <= last:
                path.unlink(missing_ok=True)

    def _export(self, folder: Path, model: DiffusionModel, result: UnlearnResult, metrics: dict | None,
                images: list[str]) -> Path:
        """The erase folder (as `trust erase` writes it), zipped into one download."""
        write_weights_and_settings(folder, model, result)
        report = report_dict(result, metrics)
        report["images"] = images
        write_json(folder / "report.json", report)
        path = self.workdir / f"trust-run-{self._snapshot.run_idx}-{result.config.method}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(folder))
        return path
