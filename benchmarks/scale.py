"""Cost at Stable Diffusion scale: seconds per step and peak memory of TRuST, ESD-x and SalUn++.

    python benchmarks/scale.py                                   # SD-1.5 UNet, 256 px (32×32 latents), CPU
    python benchmarks/scale.py --device cuda --resolution 512    # on a GPU
    python benchmarks/scale.py --small --steps 1 --rounds 1      # a smoke run of the script itself

The UNet has SD-1.5's architecture (its config, built here) with random weights: cost does not
depend on the weights, and nothing is downloaded. Text states are random (B, 77, 768) tensors,
so no text encoder is needed. Each method runs its real training step (`trust.unlearn.make_update`)
on the same random data through the same harness; methods are interleaved round by round so
that machine drift hits all alike, and each run's peak memory is measured with `PeakMemory`
(above what was in use when it began). The first step (TRuST: with its Hutchinson curvature
estimate) is reported apart from the median of the later ones.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from trust.harness import Harness
from trust.memory import PeakMemory
from trust.unlearn import UnlearnConfig, make_update

SD15_UNET = {  # runwayml/stable-diffusion-v1-5, unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
}
SMALL_UNET = {**SD15_UNET, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1}  # smoke runs only
METHODS = ("trust", "esd-x", "salun++")


def random_harness(frozen: UNet2DConditionModel, config: UnlearnConfig, latent_size: int, num_images: int,
                   device: torch.device) -> Harness:
    """The harness of `unlearn`, on random latents and random (N, 77, 768) text states."""
    g = torch.Generator().manual_seed(config.seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    latents = (num_images, 4, latent_size, latent_size)
    return Harness(
        config=config, frozen=frozen, edited=copy.deepcopy(frozen).requires_grad_(False),
        alphas_cumprod=scheduler.alphas_cumprod.to(device), scheduler=scheduler, generator=g,
        target_x0=randn(*latents), target_c=randn(num_images, 77, 768), anchor_c=randn(num_images, 77, 768),
        preserve_x0=randn(*latents), preserve_c=randn(num_images, 77, 768), retain_x0=randn(*latents),
        retain_c=randn(num_images, 77, 768), cip_embeddings=randn(6, 768), keep_states=None)


def run(frozen: UNet2DConditionModel, method: str, steps: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    config = UnlearnConfig.for_method(method, batch_size=args.batch_size, max_steps=steps)
    with PeakMemory(device) as memory:
        harness = random_harness(frozen, config, args.resolution // 8, num_images=4, device=device)
        update = make_update(harness)
        seconds = []
        for step in range(steps):
            tick = time.perf_counter()
            update.step(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - tick)
        del update, harness
    return {"first": seconds[0], "later": statistics.median(seconds[1:]) if steps > 1 else None,
            "peak_mb": memory.peak_mb}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=256, help="image pixels per side (latents: / 8)")
    parser.add_argument("--steps", type=int, default=3, help="steps per method and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--small", action="store_true", help="a much smaller UNet, to smoke-test the script")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    frozen = UNet2DConditionModel(**(SMALL_UNET if args.small else SD15_UNET)).to(args.device)
    frozen.requires_grad_(False).eval()
    num_weights = sum(p.numel() for p in frozen.parameters())
    print(f"UNet: {num_weights / 1e6:.0f}M weights, {args.resolution} px ({args.resolution // 8}² latents), "
          f"batch {args.batch_size}, {args.device}", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for k in range(args.rounds):
        for method in args.methods:
            r = run(frozen, method, args.steps, args)
            results[method].append(r)
            later = "—" if r["later"] is None else f"{r['later']:.2f} s"
            print(f"round {k}: {method:<8} first step {r['first']:.2f} s, later {later}, "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)

    def per_step(method: str) -> float:
        rs = results[method]
        return statistics.median([r["later"] if r["later"] is not None else r["first"] for r in rs])

    base = args.methods[0]
    print(f"\n| method | s/step | × {base} | first step s | peak MB | × {base} |\n|---|---|---|---|---|---|")
    for method in args.methods:
        peak = max(r["peak_mb"] for r in results[method])
        base_peak = max(r["peak_mb"] for r in results[base])
        first = statistics.median(r["first"] for r in results[method])
        print(f"| {method} | {per_step(method):.2f} | {per_step(method) / per_step(base):.2f} | {first:.2f} | "
              f"{peak:.0f} | {peak / max(base_peak, 1e-9):.2f} |")


if __name__ == "__main__":
    main()
