"""How much room ShapesWorld's text space leaves a K/V edit: the target's words against those it must keep.

    python benchmarks/text_span.py [--model shapes]

A masked K/V row edit changes the keys and values of every token by ΔW·e. It can move the target's
words without moving the kept ones only through the part of each target word's state e that lies
outside the span of the kept words' states. For each preset this prints: how many word states
trust+p keeps (neighbours, the 12 retain scenes, the anchors; the words after "a", no start, end or
padding), how many dimensions of the text encoder's width (64) hold 99% of their energy, and for each target word the
share of its norm outside that span. Then the cosines between the colour words' states.
"""

from __future__ import annotations

import argparse

import torch

from trust.concepts import PRESETS, retain_prompts
from trust.models import load_model
from trust.shapes.world import COLORS

SCENARIOS = ("red", "triangle", "combination", "conditional")


def word_states(model, prompts: tuple[str, ...]) -> tuple[torch.Tensor, list[str]]:
    """The text encoder's states (N, D) of the prompts' words after the leading "a", and those words."""
    states = model.encode_prompts(list(prompts))
    rows, words = [], []
    for i, prompt in enumerate(prompts):
        tokens = model.tokens(prompt)  # start, "a", the words, end
        rows.append(states[i, 2:len(tokens) - 1])
        words += tokens[2:-1]
    return torch.cat(rows), words


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="'shapes' or a ShapesWorld model folder (another width)")
    model = load_model(parser.parse_args().model)
    print("| scenario | kept word states | dims with 99% of their energy | target words: share of the norm outside |")
    print("|---|---|---|---|")
    for name in SCENARIOS:
        scenario = PRESETS[name]
        kept = tuple(dict.fromkeys(scenario.neighbours + retain_prompts(scenario, 12) + scenario.target_anchors))
        kept_states, _ = word_states(model, kept)
        target_states, words = word_states(model, tuple(dict.fromkeys(scenario.targets)))
        basis, energy, _ = torch.linalg.svd(kept_states.T, full_matrices=False)
        share = energy.pow(2).cumsum(0) / energy.pow(2).sum()
        rank = int((share < 0.99).sum()) + 1
        span = basis[:, :rank]
        outside = (target_states - target_states @ span @ span.T).norm(dim=1) / target_states.norm(dim=1)
        per_word = {}
        for word, value in zip(words, outside.tolist()):
            per_word.setdefault(word, []).append(value)
        cells = ", ".join(f"{w} {sum(v) / len(v):.2f}" for w, v in per_word.items())
        print(f"| {name} | {kept_states.shape[0]} | {rank} of {kept_states.shape[1]} | {cells} |")

    colours, _ = word_states(model, tuple(f"a {c} square" for c in COLORS))
    colours = colours.view(len(COLORS), 2, -1)[:, 0]  # each prompt's colour word
    cosines = torch.nn.functional.cosine_similarity(colours[:, None], colours[None], dim=-1)
    print("\ncosine of the colour words' states (in 'a … square')\n")
    print("| | " + " | ".join(COLORS) + " |\n" + "|---" * (len(COLORS) + 1) + "|")
    for colour, row in zip(COLORS, cosines.tolist()):
        print(f"| {colour} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
