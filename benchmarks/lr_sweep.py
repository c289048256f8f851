"""Fair play: each method's best learning rate, from a small sweep on one scenario.

    python benchmarks/lr_sweep.py [--scenario combination] [--methods ...] [--seed 0] [--samples 8]
        [--out benchmarks/results/lr_sweep.json]

Every method runs at each rate of its grid (masked methods get larger rates than dense ones;
ConceptPrune, which has no rate, sweeps its pruned fraction `rho`) in the same harness as
`trust bench`, interleaved rate-major so that machine drift hits all alike. Each run keeps its
probe points (UA, IRA at every `probe_every` steps, so one run is also a sweep over steps) and
its final UA/IRA/CRA. The best rate is the one with the highest min(UA, IRA, CRA) at the end
(ties: fewer steps), since a rate that erases everything with the target is not a good rate;
put it into `METHOD_DEFAULTS` in trust/unlearn.py. `benchmarks/pareto.py` plots the points.
`--summary A.json B.json` prints the table of sweeps that ran in parallel processes:
every run, its seconds per training step (and as a multiple of ESD-x's) and its time to a good
erasure (UA >= 0.95 with IRA >= 0.80 at a probe, as `trust bench` counts it).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from trust.artifacts import write_text_atomic
from trust.bench import bench_scenario
from trust.concepts import PRESETS
from trust.metrics import measure
from trust.models import load_model
from trust.unlearn import METHODS, UnlearnConfig, unlearn

GRIDS = {  # learning rates (ConceptPrune: pruned fraction rho) per method
    **{m: (1e-2, 3e-2, 1e-1) for m in ("trust", "trust-static", "trust-no-cip", "trust-no-csr")},
    "trust+p": (1e-2, 3e-2, 5e-2, 1e-1),  # 0.05: its default since it moved to tau 1
    "esd-x": (1e-4, 3e-4, 1e-3, 3e-3),
    "esd-u": (1e-5, 3e-5, 1e-4, 3e-4),
    "salun": (3e-5, 1e-4, 3e-4, 1e-3),
    "salun++": (3e-5, 1e-4, 3e-4, 1e-3),
    "conceptprune": (0.02, 0.05, 0.1, 0.2),
}


def sweep_value(method: str, value: float) -> dict:
    return {"rho": value} if method == "conceptprune" else {"lr": value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="combination", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anchor", default=None,
                        help="one anchor for every target (\"\": the empty prompt); default: the preset's own")
    parser.add_argument("--samples", type=int, default=8, help="metric samples per prompt")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps (smoke runs)")
    parser.add_argument("--grid-size", type=int, default=None, help="only the first N values of each grid (smoke)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lr_sweep.json")
    parser.add_argument("--summary", type=Path, nargs="+", metavar="SWEEP_JSON",
                        help="run nothing: print the table of these sweep files (e.g. from parallel processes)")
    args = parser.parse_args(argv)
    if args.summary:
        summarize([r for path in args.summary for r in json.loads(path.read_text())["runs"]])
        return

    model = load_model("shapes")
    scenario = bench_scenario(args.scenario, args.anchor)
    grids = {m: GRIDS[m][: args.grid_size] for m in args.methods}
    runs = []
    for k in range(max(len(g) for g in grids.values())):
        for method in args.methods:
            if k >= len(grids[method]):
                continue
            value = grids[method][k]
            config = UnlearnConfig.for_method(method, seed=args.seed, max_steps=args.max_steps,
                                              **sweep_value(method, value))
            result = unlearn(model, scenario, config)
            metrics = measure(result.erased_model(model), scenario, num_samples=args.samples)
            run = {"method": method, "value": value, "knob": "rho" if method == "conceptprune" else "lr",
                   "UA": metrics["UA"], "IRA": metrics["IRA"], "CRA": metrics["CRA"], "steps": result.steps,
                   "wall_seconds": result.wall_seconds,
                   "seconds_per_step": result.train_seconds / max(1, result.steps),
                   "probes": [{"step": r.step, "UA": r.probe.ua, "IRA": r.probe.ira, "elapsed": r.elapsed}
                              for r in result.reports if r.probe is not None]}
            runs.append(run)
            print(json.dumps({k2: run[k2] for k2 in ("method", "value", "UA", "IRA", "CRA", "steps")}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(args.out, json.dumps({"scenario": args.scenario, "anchors": list(scenario.target_anchors),
                                                    "seed": args.seed, "runs": runs}, indent=2) + "\n")

    summarize(runs)


def time_to_good(run: dict) -> str:
    """Seconds until the first probe with UA >= 0.95 and IRA >= 0.80 (data and masks included), or
    "never" with the best probe (trust.bench's "time to a good erasure", from the sweep's probes)."""
    from trust.methods import GOOD_IRA, GOOD_UA

    probes = run["probes"] or [{"UA": run["UA"], "IRA": run["IRA"], "elapsed": run["wall_seconds"]}]
    for p in probes:
        if p["UA"] >= GOOD_UA and (p["IRA"] is None or p["IRA"] >= GOOD_IRA):
            return f"{p['elapsed']:.0f} s"
    best = max(probes, key=lambda p: min(p["UA"] / GOOD_UA, (p["IRA"] if p["IRA"] is not None else 1) / GOOD_IRA))
    return f"never (best UA {best['UA']:.2f}, IRA {best['IRA']:.2f})"


def summarize(runs: list[dict]) -> None:
    """Every run of the sweep (★: each method's best, the highest min(UA, IRA, CRA), ties: fewer steps) and the
    cost of a training step against ESD-x's."""
    print("\n| method | rate | UA | IRA | CRA | steps | s / step | time to a good erasure |")
    print("|---|---|---|---|---|---|---|---|")
    per_step = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        best = max(rs, key=lambda r: (min(r["UA"], r["CRA"], r["IRA"] if r["IRA"] is not None else 1.0), -r["steps"]))
        costs = [r["seconds_per_step"] for r in rs if r.get("steps") and "seconds_per_step" in r]
        if costs:
            per_step[method] = statistics.median(costs)
        for r in rs:
            cost = f"{r['seconds_per_step']:.2f}" if r.get("steps") and "seconds_per_step" in r else "—"
            print(f"| {method}{' ★' if r is best else ''} | {r['knob']} = {r['value']:g} | {r['UA']:.2f} | "
                  f"{r['IRA']:.2f} | {r['CRA']:.2f} | {r['steps']} | {cost} | {time_to_good(r)} |")
    if "esd-x" in per_step:
        print("\nseconds per training step (median over the sweep), as a multiple of ESD-x's:")
        for method, cost in per_step.items():
            print(f"  {method:13s} {cost:.3f} s  {cost / per_step['esd-x']:.2f}x")


if __name__ == "__main__":
    main()
