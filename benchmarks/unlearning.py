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

from trust.concepts import PRESETS
from trust.metrics import measure
from trust.models import load_model
from trust.unlearn import UnlearnConfig, unlearn

VARIANTS = ("trust", "trust+p", "trust-static")  # methods; trust-static keeps the mask of step 0


def parse_override(text: str) -> tuple[str, object]:
    """`name=value` for an UnlearnConfig field, the value read as Python (a number, None, ...)."""
    import ast

    name, _, value = text.partition("=")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


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
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="NAME=VALUE", help="override a config field for every variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unlearning.json")
    args = parser.parse_args()

    model = load_model("shapes")
    # the original model on the same prompts and seeds: UA, IRA and CRA before any erasure
    base = {name: measure(model, PRESETS[name], num_samples=args.samples) for name in args.scenarios}
    for name, metrics in base.items():
        print(json.dumps({"scenario": name, "variant": "original model",
                          **{k: round(metrics[k], 3) for k in ("UA", "IRA", "CRA")}}), flush=True)
    runs = []
    for seed in args.seeds:
        for scenario_name in args.scenarios:
            for variant in args.variants:
                config = UnlearnConfig.for_method(variant, **{**dict(args.overrides), "seed": seed})
                result = unlearn(model, PRESETS[scenario_name], config)
                metrics = measure(result.erased_model(model), PRESETS[scenario_name], num_samples=args.samples)
                run = {"scenario": scenario_name, "variant": variant, "seed": seed, "UA": metrics["UA"],
                       "IRA": metrics["IRA"], "CRA": metrics["CRA"], "steps": result.steps,
                       "stop": result.stop_reason, "seconds": result.wall_seconds,
                       "changed_pct": 100 * result.changed_fraction, "peak_mb": result.peak_memory_mb,
                       "per_prompt": metrics["per_prompt"]}
                runs.append(run)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()
                                  if k != "per_prompt"}), flush=True)

    print(f"\n{len(args.seeds)} seeds; medians (min–max)\n")
    print("| scenario | variant | UA | IRA | CRA | steps | seconds | changed % | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scenario_name in args.scenarios:
        b = base[scenario_name]
        print(f"| {scenario_name} | original model | {b['UA']:.2f} | {b['IRA']:.2f} | {b['CRA']:.2f} | 0 | — | 0 | — |")
        for variant in args.variants:
            rs = [r for r in runs if r["scenario"] == scenario_name and r["variant"] == variant]
            print(f"| {scenario_name} | {variant} | {fmt([r['UA'] for r in rs])} | {fmt([r['IRA'] for r in rs])} | "
                  f"{fmt([r['CRA'] for r in rs])} | {fmt([r['steps'] for r in rs], '{:.0f}')} | "
                  f"{fmt([r['seconds'] for r in rs], '{:.0f}')} | {fmt([r['changed_pct'] for r in rs])} | "
                  f"{max(r['peak_mb'] for r in rs):.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"original": base, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
