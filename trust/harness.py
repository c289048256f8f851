"""What every unlearning method shares, so that they differ only in what they train and how.

TRuST, its ablations and the baselines (TRUST_METHOD.md, "Baselines, in the same harness")
all learn from the same images the frozen model made, the same text states, the same
seeded batches, timesteps and noise, and are probed by the same detector on the same
seeds. `prepare` builds that once per job; a method draws from it through `target_batch`,
`negative_guidance`, `retain_loss` and `preserve_batch`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel

from .concepts import Scenario, generated_right, retain_prompts
from .generation import GenerationOutput, generate
from .losses import negative_guidance_target
from .metrics import spread
from .models import DiffusionModel, prediction_target

if TYPE_CHECKING:
    from .unlearn import UnlearnConfig

PROBE_SEED = 10_000  # probe samples use seeds PROBE_SEED + k, apart from training and metric seeds


@dataclass(frozen=True)
class Probe:
    ua: float  # share of target probe samples without the concept
    ira: float | None  # share of neighbour probe samples generated right (None without neighbours)
    num_samples: int


@dataclass(frozen=True)
class StepOutcome:
    """What one step of a method did; the shared loop turns it into a `StepReport`."""

    losses: dict[str, float]  # at least "unlearn" and "total"
    changed_fraction: float  # share of UNet weights the method may have changed so far
    num_selected: int = 0  # masked neurons (TRuST) or masked weights (SalUn); 0 without a mask
    mask_sizes: dict[str, int] = field(default_factory=dict)  # selected neurons per weight (TRuST only)
    refreshed: bool = False  # the mask was re-estimated this step
    churn: tuple[int, int] = (0, 0)  # (added, removed) at the latest refresh
    top_neurons: tuple[tuple[str, int, float], ...] = ()  # (weight, row, z), TRuST only
    saliency_z: dict[str, np.ndarray] = field(default_factory=dict)  # TRuST only
    failure: str | None = None  # why the step was not taken (a NaN); the job stops with the last good weights


def spread_prompts(prompts: tuple[str, ...], total: int) -> list[str]:
    """`total` prompts cycling through `prompts`, each image its own seed (at least one per prompt)."""
    if not prompts:
        return []
    return [prompts[k % len(prompts)] for k in range(max(total, len(prompts)))]


def token_embeddings(model: DiffusionModel, prompts: tuple[str, ...], states: torch.Tensor) -> torch.Tensor:
    """Of text-encoder outputs `states` (N, T, D): every position but the start token, up to each
    prompt's end token, stacked (P, D)."""
    ids = model.tokenize(list(prompts))
    eos = model.tokenizer.eos_token_id
    rows = []
    for i in range(ids.shape[0]):
        end = int((ids[i] == eos).nonzero()[0]) if (ids[i] == eos).any() else ids.shape[1] - 1
        rows.append(states[i, 1 : end + 1])
    return torch.cat(rows)


@dataclass
class Harness:
    """The frozen and edited UNets, the training data, and the seeded draws from it."""

    config: UnlearnConfig
    frozen: UNet2DConditionModel  # θ0: the model's own UNet, never changed
    edited: UNet2DConditionModel  # θ: a copy, the one every method edits (all weights start frozen)
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) of the noise schedule
    scheduler: DDIMScheduler  # the model's: what the UNet predicts (ε or v)
    generator: torch.Generator  # seeds every batch, timestep, noise draw and Hutchinson probe
    target_x0: torch.Tensor  # (N, C, h, w) the frozen model's target images: x_0 of L_u
    target_c: torch.Tensor  # (N, T, D) the target prompt of each
    anchor_c: torch.Tensor  # (N, T, D) c_a of each target image (its prompt's anchor)
    preserve_x0: torch.Tensor | None  # (M, C, h, w) the frozen model's neighbour and retain-scene images (§8)
    preserve_c: torch.Tensor | None  # (M, T, D) their prompts
    retain_x0: torch.Tensor  # (R, C, h, w) anchor, neighbour and retain-scene images: the denoising loss of
    #                          CSR and SalUn
    retain_c: torch.Tensor  # (R, T, D) their prompts
    cip_embeddings: torch.Tensor  # (P, D) the target's token states, for CIP
    keep_states: torch.Tensor | None  # (K, D) every token state of the neighbour, anchor and empty prompts
    #                                   (trust+p with keep_energy > 0; with lambda_kv > 0 also the retain scenes')
    text_states: torch.Tensor | None = None  # (S, D) every token state of every prompt of the job (whiten > 0)

    @property
    def num_unet_weights(self) -> int:
        return sum(p.numel() for p in self.edited.parameters())

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoising target of x_0 noised with `noise` to `t` (ε or v)."""
        return prediction_target(self.scheduler, x0, noise, t)

    def noised(self, x0: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(x_t, t, noise): x_0 noised to random timesteps (or the given ones)."""
        if t is None:
            t = torch.randint(0, len(self.alphas_cumprod), (x0.shape[0],), generator=self.generator)
        t = t.to(x0.device)
        noise = torch.randn(x0.shape, generator=self.generator).to(x0.device, x0.dtype)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    def target_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, c_f, c_a) for `batch_size` noised target images, with their prompts and anchors."""
        idx = torch.randint(0, self.target_x0.shape[0], (self.config.batch_size,), generator=self.generator)
        x_t, t, _ = self.noised(self.target_x0[idx])
        return x_t, t, self.target_c[idx], self.anchor_c[idx]

    @torch.no_grad()
    def negative_guidance(self, x_t: torch.Tensor, t: torch.Tensor, c_f: torch.Tensor,
                          c_a: torch.Tensor) -> torch.Tensor:
        """ε* of L_u from the frozen model (TRUST_METHOD.md §2), in one batched forward pass."""
        eps = self.frozen(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c_a, c_f])).sample
        eps_anchor, eps_target = eps.chunk(2)
        return negative_guidance_target(eps_anchor, eps_target, self.config.eta)

    def retain_loss(self) -> torch.Tensor:
        """The ordinary denoising loss of the edited UNet on a batch of retain images."""
        idx = torch.randint(0, self.retain_x0.shape[0], (self.config.batch_size,), generator=self.generator)
        x0 = self.retain_x0[idx]
        x_t, t, noise = self.noised(x0)
        return F.mse_loss(self.edited(x_t, t, self.retain_c[idx]).sample, self.target(x0, noise, t))

    def preserve_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, c_r) for `batch_size` noised neighbour and retain-scene images."""
        idx = torch.randint(0, self.preserve_x0.shape[0], (self.config.batch_size,), generator=self.generator)
        x_t, t, _ = self.noised(self.preserve_x0[idx])
        return x_t, t, self.preserve_c[idx]


@dataclass(frozen=True)
class Prepared:
    harness: Harness
    before: GenerationOutput  # the frozen model's target images (also x_0 of L_u)
    before_neighbours: GenerationOutput | None
    retain: tuple[str, ...]  # the retain scenes' prompts (`retain_prompts`)


def prepare(model: DiffusionModel, scenario: Scenario, config: UnlearnConfig) -> Prepared:
    """Copy the UNet, encode the prompts and have the frozen model make the training images."""
    # 1. The frozen UNet is the model's own; every method edits a copy
    frozen = model.unet
    edited = copy.deepcopy(frozen).requires_grad_(False)
    # ShapesWorld scenes without the concept, kept alongside the neighbours (not on other models: no grammar)
    retain = (retain_prompts(scenario, config.retain_prompts)
              if model.detector is not None else ())

    # 2. Text: the target, anchor and neighbour prompts, and the target's tokens for CIP
    with torch.no_grad():
        c_targets = model.encode_prompts(list(scenario.targets))  # (n_targets, T, D)
        anchors = tuple(dict.fromkeys(scenario.target_anchors))  # each once
        c_anchor = model.encode_prompts(list(anchors))  # (A, T, D)
        c_neighbours = model.encode_prompts(list(scenario.neighbours)) if scenario.neighbours else None
        c_retain = model.encode_prompts(list(retain)) if retain else None
        cip_embeddings = token_embeddings(model, scenario.targets, c_targets)  # (P, D)
        keep_states = None
        if config.keep_energy > 0 or config.lambda_kv > 0:
            # what must keep its keys and values: the neighbours, the anchor and the empty prompt of guidance
            # (lambda_kv: and the retain scenes)
            kept = tuple(dict.fromkeys((*scenario.neighbours, *(retain if config.lambda_kv > 0 else ()),
                                        *anchors, "")))
            keep_states = model.encode_prompts(list(kept)).flatten(0, 1)  # (K, D), every position: all attended
        text_states = None
        if config.whiten > 0:  # every prompt the job knows, every position (all are attended)
            known = tuple(dict.fromkeys((*scenario.targets, *scenario.neighbours, *retain, *anchors, "")))
            text_states = model.encode_prompts(list(known)).flatten(0, 1)

    # 3. Images the frozen model makes (x_0 of L_u, and the "before" panels)
    def make_images(prompts: tuple[str, ...], total: int) -> tuple[GenerationOutput, torch.Tensor]:
        chosen = spread_prompts(prompts, total)  # image k: prompt k mod n, seed config.seed + k
        seeds = [config.seed + k for k in range(len(chosen))]
        out = generate(model, chosen, num_inference_steps=config.data_steps, seeds=seeds)
        return out, torch.tensor([prompts.index(p) for p in chosen])

    before, target_idx = make_images(scenario.targets, config.num_train_images)
    kept_x0, kept_c = [], []  # what preservation keeps: neighbour images, then retain-scene images
    before_neighbours = None
    if scenario.neighbours:
        before_neighbours, neighbour_idx = make_images(scenario.neighbours, config.num_train_images)
        kept_x0.append(before_neighbours.latents)
        kept_c.append(c_neighbours[neighbour_idx])
    if retain:
        retain_out, retain_idx = make_images(retain, len(retain))  # one image a scene
        kept_x0.append(retain_out.latents)
        kept_c.append(c_retain[retain_idx])
    preserve_x0, preserve_c = (torch.cat(kept_x0), torch.cat(kept_c)) if kept_x0 else (None, None)
    # retain data: anchor images with the anchor, neighbour and retain-scene images with their prompts
    anchor_out, anchor_idx = make_images(anchors, max(len(anchors), config.num_train_images // 2))
    retain_x0, retain_c = anchor_out.latents, c_anchor[anchor_idx]
    if preserve_x0 is not None:
        retain_x0, retain_c = torch.cat([retain_x0, preserve_x0]), torch.cat([retain_c, preserve_c])

    harness = Harness(
        config=config, frozen=frozen, edited=edited, alphas_cumprod=model.scheduler.alphas_cumprod.to(model.device),
        scheduler=model.scheduler,
        generator=torch.Generator().manual_seed(config.seed), target_x0=before.latents,
        target_c=c_targets[target_idx],
        anchor_c=c_anchor[[anchors.index(scenario.target_anchors[i]) for i in target_idx.tolist()]],
        preserve_x0=preserve_x0, preserve_c=preserve_c,
        retain_x0=retain_x0, retain_c=retain_c, cip_embeddings=cip_embeddings,
        keep_states=keep_states, text_states=text_states)
    return Prepared(harness=harness, before=before, before_neighbours=before_neighbours, retain=retain)


def probe(model: DiffusionModel, edited: UNet2DConditionModel, scenario: Scenario,
          config: UnlearnConfig) -> Probe | None:
    """The detector's verdict on fixed-seed samples of the target (and the neighbours) (§7).

    With `probe_paraphrases`, half the target samples use other wordings of it (templates and
    synonyms, as UA counts them).
    """
    if model.detector is None:
        return None
    erased = dataclasses.replace(model, unet=edited)
    targets = spread_prompts(scenario.targets, config.probe_samples)
    others = [p for p in scenario.paraphrases if p not in scenario.targets]
    if config.probe_paraphrases and others and config.probe_samples > 1:
        # half the samples on other wordings, so that "erased" means what UA counts
        half = config.probe_samples // 2
        targets = spread_prompts(scenario.targets, config.probe_samples - half) + spread(tuple(others), half)
    neighbours = spread_prompts(scenario.neighbours, config.probe_samples) if config.probe_neighbours else []
    seeds = [PROBE_SEED + k for k in range(len(targets) + len(neighbours))]
    out = generate(erased, targets + neighbours, num_inference_steps=config.probe_steps, seeds=seeds)
    verdicts = model.detector.detect(out.images)
    ua = sum(not scenario.concept.present(v) for v in verdicts[: len(targets)]) / len(targets)
    ira = None
    if neighbours:
        right = [generated_right(p, v) for p, v in zip(neighbours, verdicts[len(targets) :])]
        ira = sum(right) / len(right)
    return Probe(ua=ua, ira=ira, num_samples=len(verdicts))
