"""Generation speed on this machine: 8 images x 25 DDIM steps with guidance, with and without heat maps.

    python benchmarks/generation.py [--repeats 5] [--model shapes] [--device cpu]

Runs the two variants interleaved (so drift hits both alike) and prints medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trust.attention import CrossAttentionRecorder
from trust.generation import generate
from trust.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    kwargs = {"num_images_per_prompt": args.images, "num_inference_steps": args.steps, "seed": 0}

    def plain() -> None:
        generate(model, "a red circle on a striped background", **kwargs)

    def recorded() -> None:
        with CrossAttentionRecorder(model.unet) as recorder:
            generate(model, "a red circle on a striped background", recorder=recorder, **kwargs)
        recorder.heat_maps()

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "with heat maps": []}
    for _ in range(args.repeats):
        for name, run in (("plain", plain), ("with heat maps", recorded)):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["plain"])
    print(f"{args.images} images x {args.steps} steps, guidance on, {args.model} on {args.device}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats\n")
    print("| variant | median s | min s | images/s | overhead |\n|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {args.images / median:.1f} | "
              f"{(median / base - 1):+.1%} |")


if __name__ == "__main__":
    main()
