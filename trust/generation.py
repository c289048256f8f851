"""Our own denoising loop: DDIM with classifier-free guidance, seeded per image.

Image k of every prompt starts from the noise of seed `seed + k`, drawn on the CPU,
so the same seed gives the same image on any device and in any batch: before and
after panels of an erased model compare like with like.
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from .attention import CrossAttentionRecorder
from .errors import shorten
from .methods import MAX_SEED
from .models import DiffusionModel
from .shapes.world import said_unknown

StepCallback = Callable[[int, int, torch.Tensor], None]  # (step_idx, timestep, latents)


@dataclass(frozen=True)
class GenerationOutput:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], on the CPU, image-major by prompt
    prompts: tuple[str, ...]  # the prompt of each image
    seeds: tuple[int, ...]  # the seed of each image
    latents: torch.Tensor  # (N, C, h, w) final latents on the model's device (pixels in [-1, 1] without a VAE)


def initial_noise(model: DiffusionModel, seeds: Sequence[int]) -> torch.Tensor:
    """Starting latents (N, C, h, w), one CPU generator per seed."""
    shape = (model.latent_channels, model.latent_size, model.latent_size)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(model.device, model.dtype)


def decode(model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents to images (N, 3, H, W) in [0, 1]."""
    if model.vae is not None:
        latents = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    return ((latents.float() + 1) / 2).clamp(0, 1)


def prompt_slug(prompt: str) -> str:
    """A prompt as part of a file name: lower-case letters and digits joined by '-' (no '/', '.', spaces)."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "unconditional"


def prompt_list(prompts: str | Sequence[str]) -> list[str]:
    """One prompt or a sequence of them, as a list; anything else is refused with its type."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise ValueError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
                    + ("" if not isinstance(prompts, Sequence) else " holding something other than strings"))


GENERATOR_SEED = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes


@torch.no_grad()
def generate(
    model: DiffusionModel,
    prompts: str | Sequence[str],
    num_images_per_prompt: int = 1,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 16,
    callback: StepCallback | None = None,
    recorder: CrossAttentionRecorder | None = None,
    seeds: Sequence[int] | None = None,
    prompt_embeds: torch.Tensor | None = None,
) -> GenerationOutput:
    """Generate `num_images_per_prompt` images for each prompt (an empty prompt is unconditional).

    `seeds` gives every image its own seed instead (one per image, prompt-major; each within 0..2⁶⁴−1).
    `prompt_embeds` (len(prompts), T, D), as in diffusers, replaces the encoded prompts (which then only
    label the images), e.g. an embedding found by an attack.
    """
    # 1. Check inputs
    prompts = prompt_list(prompts)
    num_inference_steps = model.num_inference_steps if num_inference_steps is None else num_inference_steps
    guidance_scale = model.guidance_scale if guidance_scale is None else guidance_scale
    if not prompts:
        raise ValueError("give at least one prompt (an empty string generates unconditionally)")
    if type(num_images_per_prompt) is not int or num_images_per_prompt < 1:  # (True is no number of images)
        raise ValueError(f"num_images_per_prompt must be a whole number >= 1, got {num_images_per_prompt!r}")
    if not isinstance(num_inference_steps, numbers.Integral) or isinstance(num_inference_steps, bool) or \
            not 1 <= num_inference_steps <= 1000:
        raise ValueError(f"num_inference_steps must be a whole number within 1..1000, got {num_inference_steps!r}")
    if not isinstance(guidance_scale, numbers.Real) or isinstance(guidance_scale, bool) or \
            not 0 <= guidance_scale <= 50:  # (NaN fails the range too)
        raise ValueError(f"guidance_scale must be a number within 0..50, got {guidance_scale!r}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    # a seed the user gives is within 0..MAX_SEED; image k of a prompt takes seed + k, so the seeds of single
    # images (derived ones: a job's image k of seed s is s + k) may be anything a torch Generator takes
    limit = MAX_SEED if seeds is None else GENERATOR_SEED
    for value in [seed] if seeds is None else seeds:  # (numpy ints are fine)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= limit:
            raise ValueError(f"a seed must be a whole number within 0..{limit}, got {value!r}")
    if recorder is not None and recorder.unet is not model.unet:
        raise ValueError("the recorder is attached to another UNet than this model's, so it would record nothing: "
                         "make it with CrossAttentionRecorder(model.unet)")
    if prompt_embeds is not None and prompt_embeds.shape[0] != len(prompts):
        raise ValueError(f"got {prompt_embeds.shape[0]} prompt embeddings for {len(prompts)} prompts")
    for prompt in prompts if prompt_embeds is None else ():
        if unknown := model.unknown_words(prompt):
            warnings.warn(f"prompt {shorten(prompt)!r} has words the model never trained on ({said_unknown(unknown)}): "
                          "what it draws for them is arbitrary", stacklevel=3)  # (the caller of no_grad)

    # 2. Lay out images: prompt-major, image k of each prompt has seed + k
    image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
    image_seeds = [int(seed) + k for _ in prompts for k in range(num_images_per_prompt)]
    if seeds is not None:
        if len(seeds) != len(image_prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(image_prompts)} images")
        image_seeds = [int(s) for s in seeds]
    use_cfg = guidance_scale != 1.0
    uncond = model.encode_prompts([""]) if use_cfg else None  # (1, T, D)

    # 3. Denoise batch by batch
    images, final_latents = [], []
    for start in range(0, len(image_prompts), batch_size):
        batch_prompts = image_prompts[start : start + batch_size]
        n = len(batch_prompts)
        if prompt_embeds is None:
            context = model.encode_prompts(batch_prompts)  # (n, T, D)
        else:
            prompt_idx = torch.arange(start, start + n) // num_images_per_prompt
            context = prompt_embeds[prompt_idx.to(prompt_embeds.device)].to(model.device, model.dtype)
        if use_cfg:
            context = torch.cat([uncond.expand(n, -1, -1), context])  # (2n, T, D)
        scheduler = DDIMScheduler.from_config(model.scheduler.config)  # a fresh one: calls may run in threads
        scheduler.set_timesteps(num_inference_steps, device=model.device)
        x = initial_noise(model, image_seeds[start : start + batch_size]) * scheduler.init_noise_sigma
        for step_idx, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([x, x]) if use_cfg else x
            if recorder is not None:
                recorder.begin_step(step_idx, int(t), slice(n, 2 * n) if use_cfg else slice(None))
            noise_pred = model.unet(scheduler.scale_model_input(model_input, t), t, context).sample
            if use_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            x = scheduler.step(noise_pred, t, x).prev_sample
            if callback is not None:
                callback(step_idx, int(t), x)
        images.append(decode(model, x).cpu())
        final_latents.append(x)
    return GenerationOutput(images=torch.cat(images), prompts=tuple(image_prompts), seeds=tuple(image_seeds),
                            latents=torch.cat(final_latents))
