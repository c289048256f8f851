"""Fair play: each method's best learning rate, from a small sweep on one scenario.

    python benchmarks/lr_sweep.py [--scenario combination] [--methods ...] [--seed 0] [--samples 8]
        [--out benchmarks/results/lr_sweep.json]

Every method runs at each rate of its grid (masked methods get larger rates than dense ones;
ConceptPrune, which has no rate, sweeps its pruned fraction `rho`) in the same harness as
`trust bench`, interleaved rate-major so that machine drift hits all alike. Each run keeps its
probe points (UA, IRA at every `probe_every` steps, so one run is also a sweep over steps) and
its final UA/IRA/CRA. The best rate is the one with the highest min(UA, IRA) at the end (ties:
fewer steps); put it into `METHOD_DEFAULTS` in trust/unlearn.py. `benchmarks/pareto.py` plots
the points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trust.concepts import PRESETS
from trust.metrics import measure
from trust.models import load_model
from trust.unlearn import METHODS, UnlearnConfig, unlearn

GRIDS = {  # learning rates (ConceptPrune: pruned fraction rho) per method
    **{m: (1e-2, 3e-2, 1e-1) for m in ("trust", "trust+p", "trust-static", "trust-no-cip", "trust-no-csr")},
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
    parser.add_argument("--samples", type=int, default=8, help="metric samples per prompt")
    parser.add_argument("--max-steps", type=int, default=None, help="override max_steps (smoke runs)")
    parser.add_argument("--grid-size", type=int, default=None, help="only the first N values of each grid (smoke)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lr_sweep.json")
    args = parser.parse_args(argv)

    model = load_model("shapes")
    scenario = PRESETS[args.scenario]
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
            args.out.write_text(json.dumps({"scenario": args.scenario, "seed": args.seed, "runs": runs}, indent=2)
                                + "\n")

    print("\n| method | best | UA | IRA | CRA | steps |\n|---|---|---|---|---|---|")
    for method in args.methods:
        rs = [r for r in runs if r["method"] == method]
        best = max(rs, key=lambda r: (min(r["UA"], r["IRA"] if r["IRA"] is not None else 1.0), -r["steps"]))
        print(f"| {method} | {best['knob']} = {best['value']:g} | {best['UA']:.2f} | {best['IRA']:.2f} | "
              f"{best['CRA']:.2f} | {best['steps']} |")


if __name__ == "__main__":
    main()
