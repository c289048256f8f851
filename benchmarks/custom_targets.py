"""trust+p on targets that are no preset, as a user types them: the neighbours `trust erase` derives for them.

    python benchmarks/custom_targets.py [--seeds 0] [--samples 8] [--targets "green" "a yellow star" ...]

Each target gets what `trust erase --target T` gives it: its concept anchor, its derived neighbours
(`concept_neighbours`: its scene with each attribute of the concept changed) and the default unrelated
prompts. Prints a Markdown table (UA, IRA, CRA, steps, seconds, changed %) and one JSON line per run.
The targets were fixed before any run, and none is a preset's target.
"""

from __future__ import annotations

import argparse
import json
import time

from trust.concepts import common_concept, concept_neighbours, scenario_from_prompts
from trust.metrics import measure
from trust.models import load_model
from trust.unlearn import UnlearnConfig, unlearn

TARGETS = ("green", "a yellow star", "a square on a dotted background", "a blue triangle", "star",
           "a purple circle on a striped background", "orange", "a green square")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--samples", type=int, default=8, help="metric samples per prompt")
    parser.add_argument("--method", default="trust+p")
    args = parser.parse_args()

    model = load_model("shapes")
    rows = []
    for seed in args.seeds:
        for target in args.targets:
            neighbours = concept_neighbours((target,), common_concept((target,)))
            scenario = scenario_from_prompts(target, list(neighbours))
            start = time.perf_counter()
            result = unlearn(model, scenario, UnlearnConfig.for_method(args.method, seed=seed))
            metrics = measure(result.erased_model(model), result.scenario, num_samples=args.samples)
            row = {"target": target, "seed": seed, "anchor": result.scenario.target_anchors[0],
                   "neighbours": list(neighbours), "UA": metrics["UA"], "IRA": metrics["IRA"], "CRA": metrics["CRA"],
                   "steps": result.steps, "stop_reason": result.stop_reason,
                   "seconds": round(time.perf_counter() - start, 1),
                   "changed_pct": round(100 * result.changed_fraction, 2), "per_prompt": metrics["per_prompt"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    def cell(value) -> str:
        return "—" if value is None else f"{value:.2f}"

    print(f"\n{args.method}, {args.samples} samples a prompt\n")
    print("| target | seed | anchor | neighbours | UA | IRA | CRA | steps | s | changed % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        neighbours = "; ".join(r["neighbours"]) or "—"
        print(f"| {r['target']} | {r['seed']} | {r['anchor']} | {neighbours} | {cell(r['UA'])} | {cell(r['IRA'])} | "
              f"{cell(r['CRA'])} | {r['steps']} | {r['seconds']:.0f} | {r['changed_pct']:.2f} |")


if __name__ == "__main__":
    main()
