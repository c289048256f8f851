"""TRuST on the ShapesWorld scenarios: UA, IRA, CRA and cost, medians over seeds.

    python benchmarks/unlearning.py [--scenarios red triangle combination conditional]
        [--variants trust trust+p trust-static] [--seeds 0 1 2] [--samples 8] [--set lr=0.02 ...]

Variants run interleaved (seed-major), so machine drift hits all alike.
`trust-static` is TRuST with the mask of step 0 kept (mask_every = 0): the
dynamic-versus-static comparison. Prints a Markdown table and writes
benchmarks/results/unlearning.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from trust.bench import bench_scenario
from trust.concepts import PRESETS
from trust.metrics import measure
from trust.models import load_model
from trust.unlearn import UnlearnConfig, unlearn

VARIANTS = ("trust", "trust+p", "trust-static")  # methods; trust-static keeps the mask of step 0


def parse_override(text: str) -> tuple[str | None, str, object]:
    """`[variant:]name=value` for an UnlearnConfig field (of one variant, or of all), the value read as
    Python (a number, None, ...)."""
    import ast

    name, _, value = text.partition("=")
    variant, _, name = name.strip().rpartition(":")
    try:
        return variant or None, name, ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return variant or None, name, value.strip()


def fmt(values: list[float], pattern: str = "{:.2f}") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return pattern.format(med)
    return f"{pattern.format(med)} ({pattern.format(min(values))}–{pattern.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["red", "triangle", "combination", "conditional"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=8, help="metric samples per prompt")
    parser.add_argument("--neighbour-wordings", type=int, default=3,
                        help="other wordings of each neighbour, measured as IRA* (no method trains on them)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="[VARIANT:]NAME=VALUE",
                        help="override a config field for every variant (or one: trust+p:lr=0.1)")
    parser.add_argument("--anchor", default=None,
                        help="one anchor for every target (\"\": the empty prompt); default: the presets' own")
    parser.add_argument("--skip-original", action="store_true", help="do not measure the original model first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unlearning.json")
    args = parser.parse_args()
    if args.neighbour_wordings < 1:
        parser.error("--neighbour-wordings must be >= 1")

    model = load_model("shapes")
    # the original model on the same prompts and seeds: UA, IRA and CRA before any erasure
    base = {name: measure(model, PRESETS[name], num_samples=args.samples, neighbour_wordings=args.neighbour_wordings)
            for name in ([] if args.skip_original else args.scenarios)}
    for name, metrics in base.items():
        print(json.dumps({"scenario": name, "variant": "original model",
                          **{k: round(metrics[k], 3) for k in ("UA", "IRA", "IRA_wordings", "CRA")}}), flush=True)
    runs = []
    for seed in args.seeds:
        for scenario_name in args.scenarios:
            for variant in args.variants:
                overrides = {name: value for only, name, value in args.overrides if only in (None, variant)}
                config = UnlearnConfig.for_method(variant, **{**overrides, "seed": seed})
                result = unlearn(model, bench_scenario(scenario_name, args.anchor), config)
                metrics = measure(result.erased_model(model), PRESETS[scenario_name], num_samples=args.samples,
                                  neighbour_wordings=args.neighbour_wordings)
                run = {"scenario": scenario_name, "variant": variant, "seed": seed, "UA": metrics["UA"],
                       "IRA": metrics["IRA"], "IRA_wordings": metrics["IRA_wordings"], "CRA": metrics["CRA"],
                       "steps": result.steps,
                       "stop": result.stop_reason, "seconds": result.wall_seconds,
                       "changed_pct": 100 * result.changed_fraction, "peak_mb": result.peak_memory_mb,
                       "per_prompt": metrics["per_prompt"]}
                runs.append(run)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()
                                  if k != "per_prompt"}), flush=True)

    print(f"\n{len(args.seeds)} seeds; medians (min–max)\n")
    print("IRA*: IRA on other wordings of the neighbours (templates, synonyms), which no method trains on\n")
    print("| scenario | variant | UA | IRA | IRA* | CRA | steps | seconds | changed % | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scenario_name in args.scenarios:
        if scenario_name in base:
            b = base[scenario_name]
            print(f"| {scenario_name} | original model | {b['UA']:.2f} | {b['IRA']:.2f} | {b['IRA_wordings']:.2f} | "
                  f"{b['CRA']:.2f} | 0 | — | 0 | — |")
        for variant in args.variants:
            rs = [r for r in runs if r["scenario"] == scenario_name and r["variant"] == variant]
            print(f"| {scenario_name} | {variant} | {fmt([r['UA'] for r in rs])} | {fmt([r['IRA'] for r in rs])} | "
                  f"{fmt([r['IRA_wordings'] for r in rs])} | {fmt([r['CRA'] for r in rs])} | "
                  f"{fmt([r['steps'] for r in rs], '{:.0f}')} | "
                  f"{fmt([r['seconds'] for r in rs], '{:.0f}')} | {fmt([r['changed_pct'] for r in rs])} | "
                  f"{max(r['peak_mb'] for r in rs):.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"original": base, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
