"""`trust bench`: every method on every scenario and seed, in one harness; bench.json and a Markdown table.

    runs = run_bench(model, methods, scenarios, seeds, out)   # writes out/bench.json after every run
    out/bench.md                                              # medians (min–max) over seeds, so far
    run_bench(..., resume=True)                               # carry on from an interrupted out/bench.json

Runs are interleaved seed-major (for seed, for scenario, for method), so that drift of a
shared machine hits every method alike. Besides UA/IRA/CRA, both attack success rates and
the cost, each run gets its "time to a good erasure": the job's wall time (data generation
and masks included) until a probe shows UA ≥ 0.95 while IRA ≥ 0.80, or "never" with the
best probe it reached. A training-free method (ConceptPrune) has one probe, of its result.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .artifacts import write_text_atomic
from .attacks import attack_summary
from .concepts import PRESETS, Scenario, with_anchors
from .harness import probe
from .methods import GOOD_IRA, GOOD_UA
from .metrics import measure
from .models import DiffusionModel
from .unlearn import METHODS, UnlearnConfig, UnlearnResult, unlearn

BENCH_SCENARIOS = ("red", "triangle", "combination", "conditional")
QUICK = {  # a CI smoke: few steps, tiny probes and data
    "config": {"max_steps": 4, "probe_every": 2, "num_train_images": 2, "batch_size": 2, "probe_samples": 2,
               "probe_steps": 5, "hessian_samples": 1, "data_steps": 10, "retain_prompts": 2},
    "metric_samples": 2, "attack": {"samples_per_prompt": 1, "embedding_steps": 5, "embedding_samples": 2},
    "methods": ("trust", "esd-x"), "scenarios": ("combination",), "seeds": 1,
}
FULL = {"config": {}, "metric_samples": 8, "attack": {}, "methods": METHODS, "scenarios": BENCH_SCENARIOS, "seeds": 3}


def time_to_good(model: DiffusionModel, result: UnlearnResult) -> dict:
    """{"seconds": time of the first good probe or None, "UA", "IRA": that probe's, or the best one's}."""
    points = [(r.elapsed, r.probe) for r in result.reports if r.probe is not None]
    if not points and result.steps == 0:  # training-free: one probe of the result, its time included
        tick = time.perf_counter()
        found = probe(model, result.unet, result.scenario, result.config)
        if found is not None:
            points = [(result.wall_seconds + time.perf_counter() - tick, found)]
    if not points:
        return {"seconds": None, "UA": None, "IRA": None}

    def good(p) -> bool:
        return p.ua >= GOOD_UA and (p.ira is None or p.ira >= GOOD_IRA)

    for elapsed, p in points:
        if good(p):
            return {"seconds": round(elapsed, 2), "UA": p.ua, "IRA": p.ira}
    _, best = max(points, key=lambda item: min(item[1].ua / GOOD_UA, (item[1].ira if item[1].ira is not None
                                                                       else 1.0) / GOOD_IRA))
    return {"seconds": None, "UA": best.ua, "IRA": best.ira}


def bench_scenario(name: str, anchor: str | None = None) -> Scenario:
    """A preset, with its own anchors (`anchor` None) or with `anchor` for every target ("": the empty prompt)."""
    return PRESETS[name] if anchor is None else with_anchors(PRESETS[name], (anchor,))


def run_one(model: DiffusionModel, method: str, scenario_name: str, seed: int, config_overrides: dict,
            metric_samples: int, attack: dict | None, anchor: str | None = None) -> dict:
    scenario = bench_scenario(scenario_name, anchor)
    config = UnlearnConfig.for_method(method, seed=seed, **config_overrides)
    result = unlearn(model, scenario, config)
    good = time_to_good(model, result)
    erased = result.erased_model(model)
    metrics = measure(erased, scenario, num_samples=metric_samples)
    run = {"method": method, "scenario": scenario_name, "seed": seed, "UA": metrics["UA"], "IRA": metrics["IRA"],
           "CRA": metrics["CRA"], "ASR_paraphrase": None, "ASR_embedding": None, "steps": result.steps,
           "stop_reason": result.stop_reason, "wall_seconds": result.wall_seconds,
           "seconds_per_step": result.train_seconds / result.steps if result.steps else None,
           "train_seconds": result.train_seconds, "changed_pct": 100 * result.changed_fraction,
           "peak_memory_mb": result.peak_memory_mb, "time_to_good": good, "lr": config.lr,
           "probes": [{"step": r.step, "UA": r.probe.ua, "IRA": r.probe.ira, "elapsed": r.elapsed}
                      for r in result.reports if r.probe is not None]}
    if attack is not None:
        summary = attack_summary(model, erased, scenario, result.before, **attack)
        run.update({k: summary[k] for k in ("ASR_paraphrase", "ASR_embedding", "ASR_embedding_projected")})
    return run


RUN_KEYS = frozenset({"method", "scenario", "seed", "UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding", "steps",
                      "stop_reason", "wall_seconds", "seconds_per_step", "train_seconds", "changed_pct",
                      "peak_memory_mb", "time_to_good", "lr", "probes"})  # what every run in bench.json holds


def _resumed_runs(path: Path, header: dict) -> list[dict]:
    """The runs of an earlier bench.json at `path` with the same settings (model, methods, attacks, ...)."""
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text())
        runs = saved["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot resume from {path}: it is not a bench.json ({err})") from None
    header = json.loads(json.dumps(header))  # as it was saved: tuples become lists
    differs = [k for k in header if k not in ("seeds", "configs") and saved.get(k) != header[k]]
    defaults = json.loads(json.dumps(dataclasses.asdict(UnlearnConfig())))
    for method, config in header["configs"].items():  # a field added since is the same if it has its default
        if method not in saved.get("configs", {}):  # a method the file never ran: "methods" says it already
            continue
        before = saved["configs"][method]
        if any(before.get(k, defaults[k]) != v for k, v in config.items()):
            differs.append(f"{method}'s config")
    if differs:
        raise ValueError(f"cannot resume from {path}: it was run with other settings ({', '.join(differs)}); "
                         f"choose another --out")
    if not isinstance(runs, list):
        raise ValueError(f"cannot resume from {path}: its runs are not a list (was the file edited?); choose "
                         "another --out")
    seen = set()
    for idx, run in enumerate(runs):  # each as `run_one` wrote it, once
        lacking = RUN_KEYS - set(run) if isinstance(run, dict) else RUN_KEYS
        if lacking:
            raise ValueError(f"cannot resume from {path}: run {idx} lacks {', '.join(sorted(lacking))} (was the "
                             "file edited?); choose another --out")
        key = (run["seed"], run["scenario"], run["method"])
        wrong = ("its method" if run["method"] not in header["methods"] else
                 "its scenario" if run["scenario"] not in header["scenarios"] else
                 "its seed" if isinstance(run["seed"], bool) or not isinstance(run["seed"], int) or run["seed"] < 0
                 else "a second copy of an earlier run" if key in seen else None)
        if wrong:
            raise ValueError(f"cannot resume from {path}: run {idx} ({run['method']!r}, {run['scenario']!r}, seed "
                             f"{run['seed']!r}) has {wrong} (was the file edited?); choose another --out")
        seen.add(key)
    return runs


def run_bench(model: DiffusionModel, methods: tuple[str, ...], scenarios: tuple[str, ...], seeds: int, out: Path,
              quick: bool = False, attacks: bool = True, resume: bool = False,
              on_run: Callable[[dict], None] | None = None, shard: tuple[int, int] = (0, 1),
              anchor: str | None = None) -> list[dict]:
    """Every method × scenario × seed (seed-major); writes bench.json and bench.md after each run.

    With `resume`, the runs already in out/bench.json (same settings) are kept and not run again, so that a
    bench of several hours can be run in pieces. `shard` (k, n) runs only every n-th of the runs still to do,
    from the k-th: n processes (one core each, each with its own `out`) split one bench, and
    benchmarks/merge_bench.py joins their folders. `anchor` replaces every preset's anchors (see `bench_scenario`)."""
    bad = [m for m in methods if m not in METHODS] + [s for s in scenarios if s not in PRESETS]
    if bad:
        raise ValueError(f"unknown method or scenario {bad[0]!r}; methods: {METHODS}, scenarios: {sorted(PRESETS)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be K/N with 0 <= K < N, got {index}/{count}")
    settings = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    header = {"model": model.name, "quick": quick, "methods": list(methods), "scenarios": list(scenarios),
              "seeds": list(range(seeds)), "config_overrides": settings["config"],
              "metric_samples": settings["metric_samples"], "good": {"UA": GOOD_UA, "IRA": GOOD_IRA},
              "attacks": attacks,
              "anchors": {s: list(bench_scenario(s, anchor).target_anchors) for s in scenarios},  # c_a of each target
              "configs": {m: {k: v for k, v in dataclasses.asdict(UnlearnConfig.for_method(m, **settings["config"]))
                              .items() if k != "seed"} for m in methods}}  # so that a resume runs the same
    runs: list[dict] = _resumed_runs(out / "bench.json", header) if resume else []
    done = {(r["seed"], r["scenario"], r["method"]) for r in runs}
    todo = [(seed, scenario_name, method) for seed in range(seeds) for scenario_name in scenarios
            for method in methods if (seed, scenario_name, method) not in done]

    def save() -> None:  # after every run (so far, if stopped) and at the end (a shard with none left too);
        # whole or not at all, so that a Ctrl-C while it writes keeps the runs saved before
        write_text_atomic(out / "bench.json", json.dumps({**header, "runs": runs}, indent=2) + "\n")
        write_text_atomic(out / "bench.md", markdown_table(runs, methods, scenarios))

    for seed, scenario_name, method in todo[index::count]:
        run = run_one(model, method, scenario_name, seed, settings["config"], settings["metric_samples"],
                      settings["attack"] if attacks else None, anchor)
        runs.append(run)
        save()
        if on_run is not None:
            on_run(run)
    save()
    return runs


def spread_cell(values: list[float | None], pattern: str = "{:.2f}") -> str:
    """Median (min–max) over seeds; "—" where a value is missing."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    med = pattern.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({pattern.format(min(values))}–{pattern.format(max(values))})"


def _good_cell(runs: list[dict]) -> str:
    reached = [r["time_to_good"]["seconds"] for r in runs if r["time_to_good"]["seconds"] is not None]
    if reached:
        return f"{spread_cell(reached, '{:.0f}')} s ({len(reached)}/{len(runs)})"
    best = max(runs, key=lambda r: (r["time_to_good"]["UA"] or 0, r["time_to_good"]["IRA"] or 0))["time_to_good"]
    if best["UA"] is None:
        return "never"
    ira = "—" if best["IRA"] is None else f"{best['IRA']:.2f}"
    return f"never (best UA {best['UA']:.2f}, IRA {ira})"


def markdown_table(runs: list[dict], methods: tuple[str, ...], scenarios: tuple[str, ...]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"{len(seeds)} seed(s); medians (min–max) over seeds. Time to good: wall seconds until a probe shows "
             f"UA ≥ {GOOD_UA} and IRA ≥ {GOOD_IRA} (runs that got there / all).", "",
             "| scenario | method | UA | IRA | CRA | ASR para | ASR emb | steps | wall s | s/step | changed % | "
             "peak MB | time to good |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in scenarios:
        for method in methods:
            rs = [r for r in runs if r["scenario"] == scenario and r["method"] == method]
            if not rs:
                continue
            cells = [spread_cell([r[k] for r in rs]) for k in ("UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding")]
            cells += [spread_cell([r["steps"] for r in rs], "{:.0f}"),
                      spread_cell([r["wall_seconds"] for r in rs], "{:.0f}"),
                      spread_cell([r["seconds_per_step"] for r in rs], "{:.3f}"),
                      spread_cell([r["changed_pct"] for r in rs], "{:.2f}"),
                      spread_cell([r["peak_memory_mb"] for r in rs], "{:.0f}"), _good_cell(rs)]
            lines.append(f"| {scenario} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
