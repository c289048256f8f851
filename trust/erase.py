"""`trust erase`: run an unlearning job, measure it, and write its artifacts to a folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .artifacts import DELTA_FILE, save_delta, write_json
from .attacks import attack_summary
from .concepts import Scenario
from .generation import generate, prompt_slug
from .metrics import METRIC_SEED, measure
from .models import DiffusionModel
from .unlearn import StepReport, UnlearnConfig, UnlearnResult, check_erasable, unlearn
from .visualize import to_uint8


def save_panels(folder: Path, model: DiffusionModel, result: UnlearnResult, num_images: int = 4) -> list[str]:
    """Before/after images of the target and each neighbour, same seeds, one PNG row per prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    erased = result.erased_model(model)
    prompts = list(result.scenario.targets) + list(result.scenario.neighbours)
    seed = result.config.seed
    written = []
    for tag, m in (("before", model), ("after", erased)):
        out = generate(m, prompts, num_images_per_prompt=num_images, seed=seed)
        for p_idx, prompt in enumerate(prompts):
            row = [to_uint8(img, 128) for img in out.images[p_idx * num_images : (p_idx + 1) * num_images]]
            name = f"{tag}_{p_idx:02d}_{prompt_slug(prompt)}.png"
            Image.fromarray(np.concatenate(row, axis=1)).save(folder / name)
            written.append(name)
    return written


def report_dict(result: UnlearnResult, metrics: dict | None) -> dict:
    scenario = result.scenario
    return {
        "method": result.config.method, "target": scenario.targets[0], "targets": list(scenario.targets),
        "anchor": scenario.target_anchors[0], "anchors": list(scenario.target_anchors),
        "neighbours": list(scenario.neighbours), "unrelated": list(scenario.unrelated),
        "retain": list(result.retain),
        "concept": scenario.concept.describe(), "kind": scenario.concept.kind,
        "steps": result.steps, "wall_seconds": round(result.wall_seconds, 2),
        "seconds_per_step": round(result.train_seconds / result.steps, 4) if result.steps else None,  # (pruning)
        "train_seconds": round(result.train_seconds, 2),
        "stop_reason": result.stop_reason, "message": result.message,
        "changed_fraction": result.changed_fraction, "changed_weights": result.changed_weights,
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "metrics": dict(metrics) if metrics else None,
        "probes": [{"step": r.step, "UA": r.probe.ua, "IRA": r.probe.ira, "elapsed": round(r.elapsed, 2)}
                   for r in result.reports if r.probe],
        "losses": [{"step": r.step, **r.losses} for r in result.reports],
    }


ERASE_FILES = (DELTA_FILE, "masks.json", "config.json", "report.json", "images")  # what run_erase writes


def scenario_dict(scenario: Scenario) -> dict:
    """The scenario as config.json holds it: every target's own anchor under "anchors" (as report.json has them),
    in place of the dataclass's pair of a single `anchor` and per-target `anchors`, one of which is unused."""
    fields = dataclasses.asdict(scenario)
    del fields["anchor"]
    fields["anchors"] = list(scenario.target_anchors)
    return fields


def write_weights_and_settings(out: Path, model: DiffusionModel, result: UnlearnResult) -> None:
    """The delta, the mask history and config.json of an erase folder (`trust erase` and the app's download)."""
    save_delta(out / DELTA_FILE, model, result.unet, extra={"method": result.config.method})
    write_json(out / "masks.json", {str(k): v for k, v in result.mask_history.items()})
    write_json(out / "config.json", {"config": dataclasses.asdict(result.config),
                                     "scenario": scenario_dict(result.scenario), "model": model.name})


def run_erase(model: DiffusionModel, scenario: Scenario, config: UnlearnConfig, out: Path,
              metric_samples: int = 8, progress: bool = True, attacks: bool = True) -> dict:
    """Erase, measure (UA/IRA/CRA and, with `attacks`, both attack success rates) and write the folder."""
    check_erasable(model, scenario)  # before the progress bar and the folder
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=config.max_steps, desc=f"erase ({config.method})", disable=not progress)

    def on_step(report: StepReport) -> None:
        bar.update(1)
        postfix = {"L_u": f"{report.losses['unlearn']:.4f}", "neurons": report.num_selected}
        if report.probe is not None:
            postfix["UA"] = f"{report.probe.ua:.2f}"
        bar.set_postfix(postfix)

    try:
        result = unlearn(model, scenario, config, callback=on_step)
    finally:  # (a Ctrl-C closes the bar before the command says "interrupted", not after)
        bar.close()
    erased = result.erased_model(model)
    metrics = measure(erased, scenario, num_samples=metric_samples) if model.detector else None
    attack = attack_summary(model, erased, scenario, result.before) if attacks and model.detector else None
    write_weights_and_settings(out, model, result)
    report = report_dict(result, metrics)
    if metrics:  # how to measure them again: `trust eval --erased OUT --seed METRIC_SEED --samples N`
        report["metric_seed"] = METRIC_SEED
    report.update(attack or {"ASR_paraphrase": None, "ASR_embedding": None})
    report["images"] = save_panels(out / "images", model, result)
    write_json(out / "report.json", report)
    return report
