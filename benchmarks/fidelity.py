"""Fidelity of the embedded model: does it draw the colour, shape and background it is asked for?

    python benchmarks/fidelity.py [--per-scene 4] [--seed 0]

Every colour x shape x background scene is prompted `--per-scene` times through
different templates and synonyms (fixed seeds); the concept detector reads each
sample. Prints one table per grouping and writes benchmarks/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from trust.generation import generate
from trust.models import load_model
from trust.shapes.world import BACKGROUNDS, COLORS, SHAPES, TEMPLATES, fill, parse_prompt, words_for


def fidelity_prompts(per_scene: int) -> list[tuple[str, str]]:
    """(prompt, template) pairs: `per_scene` for each scene, walking templates and synonyms."""
    pairs, k = [], 0
    for background in BACKGROUNDS:
        for color in COLORS:
            for shape in SHAPES:
                options = [(fill(t, c, s, background), t) for t in TEMPLATES
                           if "{background}" in t or background == "plain"
                           for c in words_for(color) for s in words_for(shape)]
                for _ in range(per_scene):
                    pairs.append(options[(k * 7) % len(options)])
                    k += 1
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scene", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    args = parser.parse_args()

    model = load_model(args.model)
    pairs = fidelity_prompts(args.per_scene)
    prompts = [p for p, _ in pairs]
    start = time.perf_counter()
    seeds = [args.seed + i for i in range(len(prompts))]  # sample i has seed + i: fixed, and different per sample
    images = generate(model, prompts, seeds=seeds, batch_size=32, guidance_scale=args.guidance).images
    verdicts = model.detector.detect(images)
    seconds = time.perf_counter() - start

    groups: dict[str, dict[str, list[tuple[bool, bool, bool]]]] = defaultdict(lambda: defaultdict(list))
    for (prompt, template), v in zip(pairs, verdicts):
        spec = parse_prompt(prompt)
        hit = (v.color == spec.color, v.shape == spec.shape, v.background == spec.background)
        words = set(prompt.replace(",", "").split())
        groups["all"]["all samples"].append(hit)
        groups["colour"][spec.color].append(hit)
        groups["shape"][spec.shape].append(hit)
        groups["background"][spec.background].append(hit)
        groups["template"][template].append(hit)
        canonical = {spec.color, spec.shape} <= words
        groups["wording"]["canonical words" if canonical else "synonym(s)"].append(hit)

    print(f"{len(prompts)} samples, {seconds:.0f} s\n")
    print("| group | value | n | colour | shape | background | all three |\n|---|---|---|---|---|---|---|")
    table = {}
    for group, by_value in groups.items():
        for value, hits in by_value.items():
            n = len(hits)
            rates = [sum(h[j] for h in hits) / n for j in range(3)] + [sum(all(h) for h in hits) / n]
            table[f"{group}:{value}"] = {"n": n, "color": rates[0], "shape": rates[1], "background": rates[2],
                                         "all": rates[3]}
            print(f"| {group} | {value} | {n} | " + " | ".join(f"{r:.1%}" for r in rates) + " |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(table, indent=2) + "\n")
    contact_sheet(images, prompts, verdicts, out / "fidelity_samples.png")


def contact_sheet(images, prompts: list[str], verdicts: list, path: Path, num: int = 48) -> None:
    """Samples with their prompt and the detector's verdict, to check the detector by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, len(prompts) // num)
    picks = list(range(0, len(prompts), step))[:num]
    fig, axes = plt.subplots(len(picks) // 8, 8, figsize=(16, 2.4 * (len(picks) // 8)))
    for ax, i in zip(axes.flat, picks):
        v = verdicts[i]
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{prompts[i]}\n→ {v.color} {v.shape}, {v.background} ({v.confidence:.2f})", fontsize=6.5)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"\ncontact sheet: {path}")


if __name__ == "__main__":
    main()
