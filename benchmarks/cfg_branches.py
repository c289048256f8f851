"""Which branch of classifier-free guidance carries trust+p's collateral drift?

    python benchmarks/cfg_branches.py SCENARIO SEED [name=value ...]

Erases the preset with trust+p, then samples its unrelated prompts, neighbours and first two targets
(8 samples each, seed 100) with the unconditional and the text branch of guidance each taken from the
frozen or the erased UNet, and prints one JSON line: for each pairing, what the detector sees per prompt.
benchmarks/records/trustp_cfg_branches.jsonl holds the run the README quotes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
import types

import torch
from unlearning import parse_override  # benchmarks/unlearning.py, beside this script

from trust.concepts import PRESETS
from trust.generation import generate
from trust.models import load_model
from trust.unlearn import UnlearnConfig, unlearn


class TwoBranches(torch.nn.Module):
    """A UNet for `generate` whose unconditional half of the batch goes to one UNet, the text half to another."""

    def __init__(self, uncond: torch.nn.Module, text: torch.nn.Module):
        super().__init__()
        self.uncond, self.text = uncond, text

    def __getattr__(self, name: str):  # device, dtype, config: the text branch's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("text"), name)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> types.SimpleNamespace:
        n = x.shape[0] // 2  # generate lays out [unconditional; text] when it guides
        return types.SimpleNamespace(sample=torch.cat([self.uncond(x[:n], t, context[:n]).sample,
                                                       self.text(x[n:], t, context[n:]).sample]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(PRESETS))
    parser.add_argument("seed", type=int)
    parser.add_argument("overrides", nargs="*", type=parse_override, metavar="NAME=VALUE")
    args = parser.parse_args()
    overrides = {name: value for _, name, value in args.overrides}

    model = load_model("shapes")
    preset = PRESETS[args.scenario]
    tick = time.time()
    result = unlearn(model, preset, UnlearnConfig.for_method("trust+p", seed=args.seed, **overrides))
    seconds = round(time.time() - tick)
    frozen, erased = model.unet, result.unet
    prompts = list(preset.unrelated + preset.neighbours + preset.targets[:2])
    pairings = {"edit/edit": (erased, erased), "frozen_u/edit_c": (frozen, erased),
                "edit_u/frozen_c": (erased, frozen), "frozen": (frozen, frozen)}
    seen = {}
    for name, (uncond, text) in pairings.items():
        mixed = dataclasses.replace(model, unet=TwoBranches(uncond, text))
        verdicts = model.detector.detect(generate(mixed, prompts, num_images_per_prompt=8, seed=100).images)
        seen[name] = {p: dict(collections.Counter(f"{v.color} {v.shape} {v.background}"
                                                  for v in verdicts[8 * i: 8 * i + 8]).most_common(3))
                      for i, p in enumerate(prompts)}
    print(json.dumps({"scen": args.scenario, "seed": args.seed, **overrides, "steps": result.steps,
                      "s": seconds, "out": seen}), flush=True)


if __name__ == "__main__":
    main()
