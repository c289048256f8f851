"""Train the embedded ShapesWorld model (UNet + text encoder) from a seed.

    python -m trust.shapes.train --out assets/shapes            # the shipped recipe (four stages)
    python -m trust.shapes.train --single --steps 500 --out /tmp/m  # one run of your own

Renders fresh scenes every step (no data set), trains with the ε (or v) objective,
keeps an exponential moving average (EMA) of the weights and writes that, in
diffusers layout, every `save_every` steps, so an interrupted run still leaves a
usable model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models import prediction_target
from .architecture import IMAGE_SIZE, MAX_TOKENS, TEXT_DIM, build_scheduler, build_text_encoder, build_unet
from .render import render
from .tokenizer import build_clip_tokenizer
from .world import sample_prompt


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # seeds prompts, renders, noise and initial weights
    steps: int = 3600  # optimizer steps
    batch_size: int = 32  # images per step
    lr: float = 6e-4  # peak AdamW learning rate
    warmup_steps: int = 200  # linear warm-up, then cosine decay to 10%
    weight_decay: float = 0.01
    ema_decay: float = 0.998  # per step
    uncond_p: float = 0.1  # share of empty prompts (for classifier-free guidance)
    save_every: int = 250  # steps between writes of the EMA weights
    min_snr_gamma: float | None = None  # Min-SNR loss weighting (Hang et al. 2023): min(SNR, γ) / SNR per sample
    stop_after: int | None = None  # end the run after this many steps (the schedule still spans `steps`)
    low_snr_boost: float | None = None  # multiply the loss of samples with SNR < 1 by min(1/SNR, this)
    guidance_scale: float = 2.5  # the model's default classifier-free guidance, written to trust.json
    prediction_type: str = "epsilon"  # the UNet predicts the noise ε, or v = √ᾱ ε − √(1−ᾱ) x_0 ("v_prediction")
    text_width: int = TEXT_DIM  # width of the text encoder = the UNet's cross-attention dimension
    freeze_text_encoder: bool = False  # keep the text encoder as it starts (as SD's UNet is trained on a frozen CLIP)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ValueError(f"stop_after must be within 1..steps ({self.steps}), got {self.stop_after}")
        if not 0 <= self.uncond_p < 1:
            raise ValueError(f"uncond_p must be in [0, 1), got {self.uncond_p}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.text_width < 4 or self.text_width % 4:
            raise ValueError(f"text_width must be a positive multiple of 4 (4 attention heads), got {self.text_width}")


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(progress * math.pi)))


def save_model(out: Path, unet, text_encoder, tokenizer, scheduler, meta: dict) -> None:
    """Write a model folder in diffusers layout, weights as float16 safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    unet = copy.deepcopy(unet).half().to(memory_format=torch.contiguous_format)  # safetensors wants contiguous
    unet.save_pretrained(out / "unet", safe_serialization=True)
    copy.deepcopy(text_encoder).half().save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    (out / "trust.json").write_text(json.dumps(meta, indent=2) + "\n")


def train(config: TrainConfig, out: Path, progress: bool = True, resume: Path | None = None) -> dict:
    """Train from scratch, or go on from the weights of a model folder (`resume`)."""
    # 1. Seeds and parts
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    unet, text_encoder = build_unet(config.text_width), build_text_encoder(config.text_width)
    if resume is not None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        saved_text = CLIPTextModel.from_pretrained(resume, subfolder="text_encoder").float()
        width = saved_text.config.hidden_size
        if width != config.text_width:  # (before the UNet, whose cross-attention would fail with a size error)
            raise ValueError(f"{resume} has a text encoder of width {width}; pass text_width={width} to go on from it")
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(resume, subfolder="unet").float().state_dict())
        text_encoder.load_state_dict(saved_text.state_dict())
    tokenizer = build_clip_tokenizer(MAX_TOKENS)
    scheduler = build_scheduler(config.prediction_type)
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)]
    text_encoder.requires_grad_(not config.freeze_text_encoder)
    params = list(unet.parameters()) + ([] if config.freeze_text_encoder else list(text_encoder.parameters()))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    alphas_cumprod = scheduler.alphas_cumprod
    history = []  # earlier stages, when this run goes on from another
    if resume is not None and (resume / "trust.json").is_file():
        previous = json.loads((resume / "trust.json").read_text())
        history = previous.get("history", []) + [{k: previous[k] for k in ("trained_steps", "train_seconds",
                                                                             "train_config") if k in previous}]

    # 2. Training loop
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.stop_after or config.steps), desc="train shapes", disable=not progress)
    for step in bar:
        prompts, scenes = zip(*(sample_prompt(rng) for _ in range(config.batch_size)))
        prompts = ["" if rng.random() < config.uncond_p else p for p in prompts]
        x0 = render(list(scenes), IMAGE_SIZE, generator) * 2 - 1  # (B, 3, H, W) in [-1, 1]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids
        context = text_encoder(ids)[0]  # (B, T, TEXT_DIM)
        goal = prediction_target(scheduler, x0, noise, t)
        per_sample = (unet(x_t, t, context).sample - goal).pow(2).mean(dim=(1, 2, 3))  # (B,)
        snr = (a / (1 - a)).flatten()
        if config.min_snr_gamma is not None:
            # Weight down the low-noise steps, whose error is large but decides little; the
            # high-noise steps decide shape and colour (here the slow part to learn). In x_0 terms
            # an ε-loss weighs the error by SNR, a v-loss by 1 + SNR: cap either at γ.
            weight = snr + 1 if config.prediction_type == "v_prediction" else snr
            per_sample = per_sample * weight.clamp(max=config.min_snr_gamma) / weight
        if config.low_snr_boost is not None:
            # An ε-loss gives the noisiest steps an x_0-weight of only SNR, yet those steps choose
            # the colour and the background's tint: weight them up (by 1/SNR, capped).
            per_sample = per_sample * (1 / snr).clamp(min=1, max=config.low_snr_boost)
        loss = per_sample.mean()

        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for averaged, live in zip(ema, (unet, text_encoder)):
                torch._foreach_lerp_(list(averaged.parameters()), list(live.parameters()), 1 - decay)

        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        last = step + 1 == (config.stop_after or config.steps)
        if (step + 1) % config.save_every == 0 or last:
            meta = {
                "name": "shapes",
                "image_size": IMAGE_SIZE,
                "guidance_scale": config.guidance_scale,
                "num_inference_steps": 25,
                "trained_steps": step + 1,
                "train_seconds": round(time.perf_counter() - start, 1),
                "final_loss": round(sum(losses[-200:]) / len(losses[-200:]), 5),
                "train_config": asdict(config),
                "history": history,
            }
            save_model(out, ema[0], ema[1], tokenizer, scheduler, meta)
        if last:
            break
    return {"losses": losses, "seconds": time.perf_counter() - start}


# The shipped weights: 1,500 steps of a 3,600-step plain run; 1,100 steps of a 3,000-step run
# with Min-SNR weighting at a lower rate (the plain loss learned shapes too slowly; the full
# second run lost prompt fidelity); a stage with the noisiest steps weighted up (colours
# followed the prompt better); then 250 steps that turn the ε model into a v-prediction one,
# sampled with weaker guidance (colour 85% → 100% on validation seeds; see README, Fidelity).
SHIPPED_RECIPE = (
    TrainConfig(steps=3600, stop_after=1500),
    TrainConfig(steps=3000, stop_after=1100, lr=4e-4, warmup_steps=100, min_snr_gamma=5.0),
    TrainConfig(steps=750, stop_after=500, lr=3e-4, warmup_steps=50, min_snr_gamma=5.0, low_snr_boost=25.0),
    TrainConfig(steps=1000, stop_after=250, lr=3e-4, warmup_steps=50, min_snr_gamma=5.0,
                prediction_type="v_prediction", guidance_scale=1.5),
)


def train_recipe(out: Path, seed: int = 0, progress: bool = True, text_width: int = TEXT_DIM,
                 freeze_text_encoder: bool = False) -> None:
    """Reproduce the shipped model: each stage goes on from the one before."""
    previous = None
    for k, stage in enumerate(SHIPPED_RECIPE):
        stage_out = out if k == len(SHIPPED_RECIPE) - 1 else out.parent / f"{out.name}.stage{k + 1}"
        stage = dataclasses.replace(stage, seed=seed, text_width=text_width, freeze_text_encoder=freeze_text_encoder)
        train(stage, stage_out, progress=progress, resume=previous)
        previous = stage_out


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from ..cli import whole_number  # (the CLI's own check: "must be 1 or more")

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "assets" / "shapes",
                        help="folder to write the model to (default: the shipped assets/shapes, replaced)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed,
                        help="seeds prompts, renders, noise and initial weights (default: %(default)s)")
    parser.add_argument("--text-width", type=int, default=TEXT_DIM,
                        help=f"width of the text encoder and of cross-attention (default {TEXT_DIM}; a multiple of 4)")
    parser.add_argument("--freeze-text-encoder", action="store_true",
                        help="train the UNet only, on the text encoder's initial (random) weights")
    parser.add_argument("--single", action="store_true",
                        help="one run with the flags below, instead of the shipped recipe")
    parser.add_argument("--steps", type=whole_number(1), default=TrainConfig.steps,
                        help="optimizer steps the schedule spans (default: %(default)s)")
    parser.add_argument("--batch-size", type=whole_number(1), default=TrainConfig.batch_size,
                        help="images per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr,
                        help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--save-every", type=whole_number(1), default=TrainConfig.save_every,
                        help="steps between writes of the EMA weights (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps,
                        help="linear warm-up steps, then cosine decay to 10%% (default: %(default)s)")
    parser.add_argument("--resume", type=Path, default=None, help="go on from this model folder's weights")
    parser.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR loss weighting, e.g. 5")
    parser.add_argument("--low-snr-boost", type=float, default=None, help="weight up to this on SNR < 1, e.g. 5")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon",
                        help="what the UNet predicts; v_prediction can go on from an epsilon model")
    parser.add_argument("--stop-after", type=int, default=None, help="end after this many steps")
    parser.add_argument("--guidance-scale", type=float, default=TrainConfig.guidance_scale,
                        help="default classifier-free guidance written to trust.json")
    args = parser.parse_args(argv)
    if not args.single:
        train_recipe(args.out, seed=args.seed, text_width=args.text_width,
                     freeze_text_encoder=args.freeze_text_encoder)
        return
    config = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup_steps, save_every=min(args.save_every, args.steps),
                         min_snr_gamma=args.min_snr_gamma, stop_after=args.stop_after,
                         low_snr_boost=args.low_snr_boost, prediction_type=args.prediction_type,
                         guidance_scale=args.guidance_scale, text_width=args.text_width,
                         freeze_text_encoder=args.freeze_text_encoder)
    train(config, args.out, resume=args.resume)


if __name__ == "__main__":  # as `trust train-shapes`: a bad flag is one line, not a traceback
    from trust.cli import main as trust_main

    sys.exit(trust_main(["train-shapes", *sys.argv[1:]]))
