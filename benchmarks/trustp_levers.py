"""One trust+p erase with config overrides, measured, with its probe trajectory: for trying levers one at a time.

    python benchmarks/trustp_levers.py SCENARIO SEED [--wordings K] [--anchor A] [name=value ...]
    e.g. python benchmarks/trustp_levers.py combination 0 whiten=0.1 lambda_kv=10

Prints one JSON line: the overrides; UA, IRA, CRA at 4 samples a prompt; UA on the target
prompts alone and on the other wordings the metric counts; the share kept of each neighbour and
unrelated prompt, and what the detector sees in 4 more samples of each ("seen": colour shape
background → count); steps, seconds, changed %; and at each probe (step, UA, IRA, L_u,
preservation, K/V-kept loss, selected neurons).
`--wordings K` also trains on K other wordings of the target, taken from those the metric
does not count (so UA on the counted wordings stays unseen). `--anchor A` sets one anchor for
every target (`--anchor ""`: the empty prompt, as every run before concept anchors), `A1|A2|...`
one per target; by default each target has the preset's. benchmarks/records/
trustp_levers_seed0.jsonl (empty anchor) and trustp_anchors.jsonl hold the runs the README quotes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time

from unlearning import parse_override  # benchmarks/unlearning.py, beside this script

from trust.concepts import PRESETS, concept_anchor, with_anchors
from trust.generation import generate
from trust.metrics import measure, spread
from trust.models import load_model
from trust.unlearn import UnlearnConfig, unlearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(PRESETS))
    parser.add_argument("seed", type=int)
    parser.add_argument("overrides", nargs="*", type=parse_override, metavar="NAME=VALUE")
    parser.add_argument("--wordings", type=int, default=0, help="also train on this many other wordings")
    parser.add_argument("--anchor", default=None,
                        help="the anchor of every target, or one per target joined by '|' (default: the preset's)")
    args = parser.parse_intermixed_args()  # NAME=VALUE may come before or after the options
    overrides = {name: value for _, name, value in args.overrides}

    model = load_model("shapes")
    preset = PRESETS[args.scenario]
    counted = set(spread(preset.paraphrases, 12))  # the wordings `measure` counts in UA
    unseen = [p for p in preset.paraphrases if p not in counted and p not in preset.targets]
    extra = spread(tuple(unseen), args.wordings) if args.wordings else []
    anchors = preset.target_anchors + tuple(concept_anchor(p, preset.concept) for p in extra)
    trained = dataclasses.replace(preset, targets=preset.targets + tuple(extra), anchors=anchors)
    if args.anchor is not None:  # one anchor for every target, or one each
        trained = with_anchors(trained, tuple(args.anchor.split("|")))
    config = UnlearnConfig.for_method("trust+p", seed=args.seed, **overrides)
    tick = time.time()
    result = unlearn(model, trained, config)
    erased = result.erased_model(model)
    m = measure(erased, preset, num_samples=4)
    kept = list(preset.neighbours + preset.unrelated)  # what the detector sees for each (4 samples, seed 100)
    verdicts = model.detector.detect(generate(erased, kept, num_images_per_prompt=4, seed=100).images)
    seen = {p: collections.Counter(f"{v.color} {v.shape} {v.background}" for v in verdicts[4 * i: 4 * i + 4])
            for i, p in enumerate(kept)}
    others = [p for p in m["per_prompt"] if p in counted and p not in preset.targets]
    print(json.dumps({
        "scen": args.scenario, "seed": args.seed, "k": args.wordings,
        "anchors": list(dict.fromkeys(trained.target_anchors)), **overrides,
        "UA": round(m["UA"], 3), "IRA": round(m["IRA"], 3), "CRA": round(m["CRA"], 3),
        "UA_target": round(sum(m["per_prompt"][p] for p in preset.targets) / len(preset.targets), 3),
        "UA_unseen": round(sum(m["per_prompt"][p] for p in others) / max(1, len(others)), 3),
        "kept": {p: round(m["per_prompt"][p], 2) for p in kept},
        "seen": {p: dict(c.most_common()) for p, c in seen.items()},
        "probes": [(r.step, r.probe.ua, r.probe.ira, round(r.losses["unlearn"], 4), round(r.losses["pres"], 4),
                    round(r.losses.get("kv", 0), 4), r.num_selected) for r in result.reports if r.probe is not None],
        "steps": result.steps, "s": round(time.time() - tick), "changed": round(100 * result.changed_fraction, 2)}),
        flush=True)


if __name__ == "__main__":
    main()
