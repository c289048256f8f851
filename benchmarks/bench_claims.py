"""Each claim of the TRuST paper, as issue 4 states it, read from a `trust bench` bench.json.

    python benchmarks/bench_claims.py [benchmarks/full/bench.json]

Prints Markdown tables, over every scenario and seed of the bench:
1. time to a good erasure (UA ≥ 0.95 with IRA ≥ 0.80 at a probe, data and masks included) per method;
2. the cost of a TRuST step against an ESD-x step, paired by scenario and seed (target ≤ 1.3×);
3. attack success where the target is erased (final UA ≥ 0.9), so that methods are compared at
   about equal UA, and the paraphrase ASR per scenario of TRuST and TRuST+P (target ≤ 0.10);
4. what is kept where the target is erased (IRA and CRA at UA ≥ 0.9), and what each ablation does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trust.bench import spread_cell as med  # median (min–max), "—" where none

ERASED = 0.9  # "the target is erased" for comparing methods at about equal UA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, nargs="?", default=Path(__file__).parent / "full" / "bench.json")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())
    runs, methods = bench["runs"], bench["methods"]
    by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
    erased_runs = {m: [r for r in rs if r["UA"] >= ERASED] for m, rs in by_method.items()}
    seeds = sorted({r["seed"] for r in runs})
    print(f"{len(runs)} runs: {len(methods)} methods × {len(bench['scenarios'])} scenarios × seeds {seeds}\n")

    print("## 1. Time to a good erasure (UA ≥ 0.95 with IRA ≥ 0.80 at a probe)\n")
    print("| method | runs that got there | seconds (median, min–max) | best probe of the others (UA, IRA) |")
    print("|---|---|---|---|")
    for m, rs in by_method.items():
        reached = [r["time_to_good"]["seconds"] for r in rs if r["time_to_good"]["seconds"] is not None]
        others = [r["time_to_good"] for r in rs if r["time_to_good"]["seconds"] is None and r["time_to_good"]["UA"]
                  is not None]
        best = max(others, key=lambda g: (min(g["UA"] / 0.95, (g["IRA"] or 0) / 0.8), g["UA"]), default=None)
        best_cell = "—" if best is None else f"{best['UA']:.2f}, {best['IRA']:.2f}"
        print(f"| {m} | {len(reached)}/{len(rs)} | {med(reached, '{:.0f}')} | {best_cell} |")

    print("\n## 2. Seconds per step against ESD-x's, same scenario and seed\n")
    print("| method | × ESD-x (median, min–max) | pairs |")
    print("|---|---|---|")
    esd = {(r["scenario"], r["seed"]): r["seconds_per_step"] for r in by_method.get("esd-x", [])}
    for m, rs in by_method.items():
        ratios = [r["seconds_per_step"] / esd[(r["scenario"], r["seed"])] for r in rs
                  if r["seconds_per_step"] and esd.get((r["scenario"], r["seed"]))]
        if ratios and m != "esd-x":
            print(f"| {m} | {med(ratios)} | {len(ratios)} |")

    print(f"\n## 3. Attack success where the target is erased (final UA ≥ {ERASED})\n")
    print("| method | erased runs | UA | ASR paraphrase | ASR embedding | ASR embedding, projected |")
    print("|---|---|---|---|---|---|")
    for m, rs in by_method.items():
        erased = erased_runs[m]
        print(f"| {m} | {len(erased)}/{len(rs)} | {med([r['UA'] for r in erased])} | "
              f"{med([r['ASR_paraphrase'] for r in erased])} | {med([r['ASR_embedding'] for r in erased])} | "
              f"{med([r.get('ASR_embedding_projected') for r in erased])} |")
    print("\nParaphrase ASR per scenario (median, min–max over seeds):\n")
    print("| method | " + " | ".join(bench["scenarios"]) + " |")
    print("|---|" + "---|" * len(bench["scenarios"]))
    for m, rs in by_method.items():
        cells = [med([r["ASR_paraphrase"] for r in rs if r["scenario"] == s]) for s in bench["scenarios"]]
        print(f"| {m} | " + " | ".join(cells) + " |")

    print(f"\n## 4. What is kept where the target is erased (final UA ≥ {ERASED}), and over all runs\n")
    print("| method | erased runs | IRA there | CRA there | UA, all runs | IRA, all runs | CRA, all runs |")
    print("|---|---|---|---|---|---|---|")
    for m, rs in by_method.items():
        erased = erased_runs[m]
        print(f"| {m} | {len(erased)}/{len(rs)} | {med([r['IRA'] for r in erased])} | "
              f"{med([r['CRA'] for r in erased])} | {med([r['UA'] for r in rs])} | {med([r['IRA'] for r in rs])} | "
              f"{med([r['CRA'] for r in rs])} |")


if __name__ == "__main__":
    main()
