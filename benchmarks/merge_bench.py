"""Merge bench.json files of one bench split by method or by `--shard` (run side by side, one core each).

    python benchmarks/merge_bench.py OUT IN1 IN2 ...

Each input is a `trust bench --out DIR` of some methods, with the same model, scenarios and
settings. The merged OUT/bench.json lists the methods in the order of `trust bench` and is
what `trust bench --resume --out OUT` accepts (it then runs only what is missing and
rewrites OUT/bench.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trust.artifacts import write_text_atomic
from trust.bench import markdown_table
from trust.unlearn import METHODS

SHARED = ("model", "quick", "scenarios", "config_overrides", "metric_samples", "good", "attacks", "anchors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    args = parser.parse_args()
    benches = []
    for folder in args.inputs:
        try:
            benches.append(json.loads((folder / "bench.json").read_text()))
        except (OSError, ValueError) as err:
            raise SystemExit(f"{folder} holds no readable bench.json (the --out folder of a `trust bench`): "
                             f"{err}") from None
    first = benches[0]
    configs, ran_by = {}, {}  # (the first input that holds a method's config)
    for folder, bench in zip(args.inputs, benches):
        differs = [k for k in SHARED if bench.get(k) != first.get(k)]
        if differs:
            raise SystemExit(f"{folder} was run with other settings than {args.inputs[0]}: {', '.join(differs)}")
        for method, config in bench["configs"].items():  # one config a method, in every input that ran it (shards
            if configs.setdefault(method, config) != config:  # of other code, other defaults)
                raise SystemExit(f"{folder} has another config of {method} than {ran_by[method]}")
            ran_by.setdefault(method, folder)
    methods = [m for m in METHODS if any(m in b["methods"] for b in benches)]
    seen: dict[tuple, dict] = {}
    runs = []
    for bench in benches:
        for run in bench["runs"]:
            key = (run["seed"], run["scenario"], run["method"])
            if key in seen:
                if run != seen[key]:  # shards resumed from one file share its runs; anything else is a clash
                    raise SystemExit(f"run {key} differs between inputs")
                continue
            seen[key] = run
            runs.append(run)
    order = {m: i for i, m in enumerate(methods)}
    runs.sort(key=lambda r: (r["seed"], first["scenarios"].index(r["scenario"]), order[r["method"]]))
    merged = {**{k: first[k] for k in SHARED}, "methods": methods,
              "seeds": sorted({s for b in benches for s in b["seeds"]}), "configs": configs, "runs": runs}
    merged = {k: merged[k] for k in first if k in merged}  # the key order of a bench.json
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "bench.json", json.dumps(merged, indent=2) + "\n")  # (--out may be an input)
    write_text_atomic(args.out / "bench.md", markdown_table(runs, tuple(methods), tuple(first["scenarios"])))
    print(f"merged {len(runs)} runs of {len(methods)} methods into {args.out / 'bench.json'}")
    missing = [(seed, scenario, method) for seed in merged["seeds"] for scenario in first["scenarios"]
               for method in methods if (seed, scenario, method) not in seen]
    if missing:  # (shards of other counts, or one left out): the table's medians are over fewer seeds there
        shown = ", ".join(f"{m} on {sc} seed {seed}" for seed, sc, m in missing[:4])
        print(f"warning: {len(missing)} of this bench's runs {'are' if len(missing) > 1 else 'is'} in no input ({shown}"
              f"{', …' if len(missing) > 4 else ''}); `trust bench --resume --out {args.out}` with the same "
              "settings runs them")


if __name__ == "__main__":
    main()
