"""Train the ShapesWorld concept detector on freshly rendered, augmented images.

    python -m trust.shapes.train_detector --out assets/shapes/detector

Diffusion samples are not clean renders: backgrounds come out tinted, colours
darker, with residual noise and blur. The augmentations below imitate that, so
that the detector reads samples as well as renders.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .detector import BACKGROUND_CLASSES, COLOR_CLASSES, SHAPE_CLASSES, ConceptDetector
from .render import render
from .world import BACKGROUNDS, COLORS, NONE, SHAPES, Scene


def random_scenes(rng: random.Random, n: int, none_p: float = 0.08) -> list[Scene]:
    scenes = []
    for _ in range(n):
        if rng.random() < none_p:
            scenes.append(Scene(NONE, NONE, rng.choice(BACKGROUNDS)))
        else:
            scenes.append(Scene(rng.choice(COLORS), rng.choice(SHAPES), rng.choice(BACKGROUNDS)))
    return scenes


def labels(scenes: list[Scene]) -> torch.Tensor:
    return torch.tensor([(COLOR_CLASSES.index(s.color), SHAPE_CLASSES.index(s.shape),
                          BACKGROUND_CLASSES.index(s.background)) for s in scenes])  # (N, 3)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Tint, brightness, contrast, blur and noise, each drawn per image."""
    n = images.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * uniform(0.6, 1.3, 1, 1, 1) + mean  # contrast
    images = images * uniform(0.65, 1.15, 1, 1, 1) + uniform(-0.12, 0.12, 3, 1, 1)  # brightness, tint
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"),
                                         blur.expand(3, 1, 3, 3), groups=3)
    images = torch.where(uniform(0, 1, 1, 1, 1) < 0.4, blurred, images)
    images = images + torch.randn(images.shape, generator=generator) * uniform(0.0, 0.12, 1, 1, 1)
    return images.clamp(0, 1)


def train_detector(out: Path, seed: int = 0, steps: int = 1500, batch_size: int = 96, pool_size: int = 12000,
                   lr: float = 2e-3, progress: bool = True) -> ConceptDetector:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    # 1. A pool of jittered clean renders; augmentation makes each draw new.
    scenes = random_scenes(rng, pool_size)
    pool = torch.cat([render(scenes[i : i + 500], generator=generator) for i in range(0, pool_size, 500)])
    pool_labels = labels(scenes)

    # 2. Train
    detector = ConceptDetector()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    for _ in (bar := tqdm(range(steps), desc="train detector", disable=not progress)):
        idx = torch.randint(0, pool_size, (batch_size,), generator=generator)
        images = augment(pool[idx], generator)
        if torch.rand((), generator=generator) < 0.5:
            images = images.flip(-1)  # every shape is mirror-symmetric
        target = pool_labels[idx]
        logits = detector(images)
        loss = sum(torch.nn.functional.cross_entropy(lg, target[:, k]) for k, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")

    # 3. Save
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, out / "model.safetensors")
    config = {"width": detector.width, "seed": seed, "steps": steps, "batch_size": batch_size,
              "train_seconds": round(time.perf_counter() - start, 1)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return detector.eval()


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from ..cli import whole_number  # (the CLI's own check: "must be 1 or more")

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[2] / "assets" / "shapes" / "detector"
    parser.add_argument("--out", type=Path, default=default_out,
                        help="folder to write the detector to (default: the shipped assets/shapes/detector, replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the scenes and weights (default: %(default)s)")
    parser.add_argument("--steps", type=whole_number(1), default=1500, help="training steps (default: %(default)s)")
    args = parser.parse_args(argv)
    train_detector(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":  # as `trust train-detector`: a bad flag is one line, not a traceback
    from trust.cli import main as trust_main

    sys.exit(trust_main(["train-detector", *sys.argv[1:]]))
