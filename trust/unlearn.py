"""TRuST: find a concept's neurons from cross-attention saliency, fine-tune only those.

    result = unlearn(model, PRESETS["combination"], UnlearnConfig.for_method("trust+p"), callback=print)
    erased = result.erased_model(model)

The loop reads top to bottom as TRUST_METHOD.md §2–§8: negative-guidance loss on
images the frozen model made for the target, saliency from that loss's own
gradient, a mask re-estimated every `mask_every` steps, CIP and CSR on the masked
neurons, a masked Adam step, and a detector probe that stops the job once the
target is gone. It reports a `StepReport` per step through `callback`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from .concepts import Scenario, generated_right
from .errors import TrustError
from .generation import GenerationOutput, generate
from .hessian import fisher_diagonal, hutchinson_diagonal, normalise
from .losses import (
    concept_inhibition_loss,
    negative_guidance_target,
    preservation_loss,
    sensitivity_loss,
    unlearning_loss,
)
from .models import DiffusionModel
from .neurons import PROJECTIONS, NeuronMask, candidate_weights, neuron_saliency, z_scores
from .optim import MaskedAdam

METHODS = ("trust", "trust+p")
PROBE_SEED = 10_000  # probe samples use seeds PROBE_SEED + k, apart from training and metric seeds


@dataclass(frozen=True)
class UnlearnConfig:
    method: str = "trust"  # "trust" (the paper, as we read it) or "trust+p" (+ neighbour preservation, §8)
    max_steps: int = 300  # fine-tuning steps at most
    lr: float = 1e-2  # Adam learning rate on the masked rows
    batch_size: int = 4  # noised target images per step
    eta: float = 1.0  # negative-guidance strength η (§2), > 0
    tau: float | None = 2.0  # mask: neurons with saliency z-score above tau ...
    rho: float | None = None  # ... or the top rho fraction of neurons (then tau must be None)
    mask_every: int = 1  # steps between mask refreshes; 0 keeps the mask of step 0 (static, as SalUn)
    projections: tuple[str, ...] = ("to_k", "to_v")  # which attn2 projections hold candidate neurons
    lambda_cip: float = 0.1  # weight of CIP, the hard sparse removal term (§4)
    lambda_csr: float = 1.0  # weight of CSR, the Hessian-weighted pull-back (§5)
    lambda_pres: float = 0.0  # weight of neighbour preservation (§8); > 0 only for trust+p
    hessian: str = "hutchinson"  # "hutchinson" (E[v ⊙ Hv]) or "fisher" (squared gradients, cheaper)
    hessian_samples: int = 2  # probe vectors (Hutchinson) or gradients (Fisher) per estimate
    hessian_every: int = 50  # steps between curvature estimates (taken at a mask refresh)
    probe_every: int = 20  # steps between detector probes; 0 never probes (runs max_steps)
    probe_samples: int = 8  # fixed-seed samples at each probe, spread over the target (and neighbour) prompts
    probe_steps: int = 10  # DDIM steps of probe samples
    probe_neighbours: bool = True  # also probe the neighbours (IRA along the way), at twice the cost
    stop_ua: float = 1.0  # stop once this share of probe samples no longer shows the target
    num_train_images: int = 12  # images the frozen model makes for the targets, spread over their prompts,
    #                             and as many for the neighbours (half as many for the anchor)
    data_steps: int = 20  # DDIM steps of those images
    seed: int = 0  # seeds images, noise, timesteps and Hutchinson probes

    def __post_init__(self) -> None:
        def bad(what: str) -> None:
            raise ValueError(f"invalid unlearning config: {what}")

        if self.method not in METHODS:
            bad(f"method {self.method!r} is not one of {METHODS}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            bad(f"max_steps must be a whole number >= 1, got {self.max_steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.eta) and self.eta > 0):
            bad(f"eta must be > 0, got {self.eta}")
        if (self.tau is None) == (self.rho is None):
            bad("give exactly one of tau (z-score threshold) and rho (top fraction)")
        if self.tau is not None and not (math.isfinite(self.tau) and -5 <= self.tau <= 10):
            bad(f"tau must be within -5..10 (a z-score), got {self.tau}")
        if self.rho is not None and not 0 < self.rho <= 1:
            bad(f"rho must be within (0, 1], got {self.rho}")
        for name in ("lambda_cip", "lambda_csr", "lambda_pres"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad(f"{name} must be >= 0, got {value}")
        if self.method == "trust" and self.lambda_pres > 0:
            bad("plain 'trust' has no preservation term; use method 'trust+p' for lambda_pres > 0")
        if self.method == "trust+p" and self.lambda_pres <= 0:
            bad("'trust+p' needs lambda_pres > 0")
        if any(p not in PROJECTIONS for p in self.projections) or not self.projections:
            bad(f"projections must be a non-empty subset of {PROJECTIONS}, got {self.projections}")
        if self.hessian not in ("hutchinson", "fisher"):
            bad(f"hessian must be 'hutchinson' or 'fisher', got {self.hessian!r}")
        for name in ("batch_size", "hessian_samples", "hessian_every", "probe_samples", "probe_steps",
                     "num_train_images", "data_steps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mask_every < 0 or self.probe_every < 0:
            bad("mask_every and probe_every must be >= 0")
        if not 0 < self.stop_ua <= 1:
            bad(f"stop_ua must be within (0, 1], got {self.stop_ua}")

    @classmethod
    def for_method(cls, method: str, **overrides) -> UnlearnConfig:
        """Defaults of a method, with overrides (None values are ignored)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "rho" in values and "tau" not in values:
            values["tau"] = None  # a top fraction replaces the default z-score threshold
        defaults = {"trust+p": {"lambda_pres": 20.0}}.get(method, {})
        return cls(method=method, **{**defaults, **values})


@dataclass(frozen=True)
class Probe:
    ua: float  # share of target probe samples without the concept
    ira: float | None  # share of neighbour probe samples generated right (None without neighbours)
    num_samples: int


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done so far (1-based)
    max_steps: int
    losses: dict[str, float]  # "unlearn", "cip", "csr", "pres", "total"
    mask_sizes: dict[str, int]  # selected neurons per weight
    num_selected: int  # selected neurons in all
    refreshed: bool  # the mask was re-estimated this step
    churn: tuple[int, int]  # (added, removed) neurons at the latest refresh
    top_neurons: tuple[tuple[str, int, float], ...]  # (weight, row, z) of the most salient neurons
    saliency_z: dict[str, np.ndarray]  # z-score of every candidate neuron this step (float16)
    changed_fraction: float  # share of UNet weights changed so far
    probe: Probe | None  # the detector's verdict, on probe steps
    elapsed: float  # seconds since the job started


@dataclass
class UnlearnResult:
    unet: UNet2DConditionModel  # the edited UNet; the model's own is untouched
    scenario: Scenario
    config: UnlearnConfig
    steps: int
    wall_seconds: float
    stop_reason: str  # "erased", "max_steps", "stopped" or "nan"
    message: str
    mask_history: dict[int, dict[str, list[int]]]  # step -> weight -> selected rows
    reports: list[StepReport]
    before: GenerationOutput  # the frozen model's target images (also x_0 of L_u)
    before_neighbours: GenerationOutput | None
    changed_fraction: float
    changed_weights: int
    peak_memory_mb: float

    def erased_model(self, model: DiffusionModel) -> DiffusionModel:
        return dataclasses.replace(model, unet=self.unet)


@contextlib.contextmanager
def classic_attention(unet: UNet2DConditionModel):
    """Twice-differentiable attention for Hessian-vector products; the processors come back after."""
    original = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS


def _token_embeddings(model: DiffusionModel, prompts: tuple[str, ...], states: torch.Tensor) -> torch.Tensor:
    """Of text-encoder outputs `states` (N, T, D): every position but the start token, up to each
    prompt's end token, stacked (P, D)."""
    ids = model.tokenize(list(prompts))
    eos = model.tokenizer.eos_token_id
    rows = []
    for i in range(ids.shape[0]):
        end = int((ids[i] == eos).nonzero()[0]) if (ids[i] == eos).any() else ids.shape[1] - 1
        rows.append(states[i, 1 : end + 1])
    return torch.cat(rows)


def _probe(model: DiffusionModel, edited: UNet2DConditionModel, scenario: Scenario,
           config: UnlearnConfig) -> Probe | None:
    if model.detector is None:
        return None
    erased = dataclasses.replace(model, unet=edited)
    targets = spread_prompts(scenario.targets, config.probe_samples)
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


def spread_prompts(prompts: tuple[str, ...], total: int) -> list[str]:
    """`total` prompts cycling through `prompts`, each image its own seed (at least one per prompt)."""
    if not prompts:
        return []
    return [prompts[k % len(prompts)] for k in range(max(total, len(prompts)))]


def unlearn(model: DiffusionModel, scenario: Scenario, config: UnlearnConfig,
            callback: Callable[[StepReport], None] | None = None,
            stop_event: threading.Event | None = None,
            inspect: Callable[[UNet2DConditionModel, StepReport], None] | None = None) -> UnlearnResult:
    """Erase `scenario.concept` from a copy of `model.unet` with TRuST.

    `callback` gets each step's report; `inspect`, called right after it in the job's thread,
    also gets the UNet being edited (read it, e.g. to draw a preview; do not change it).
    """
    # 1. Set up: the frozen UNet is the model's own; we edit a copy.
    if model.detector is not None and not scenario.concept.detectable:
        raise TrustError(f"{model.name!r} can only erase colours, shapes and backgrounds; the target "
                         f"{scenario.targets[0]!r} names none of them")
    start = time.perf_counter()
    device = model.device
    generator = torch.Generator().manual_seed(config.seed)
    frozen = model.unet
    edited = copy.deepcopy(frozen).requires_grad_(False)
    weights = candidate_weights(edited, config.projections)
    for weight in weights.values():
        weight.requires_grad_(True)
    originals = {n: w.detach().clone() for n, w in weights.items()}
    num_unet_weights = sum(p.numel() for p in edited.parameters())
    alphas_cumprod = model.scheduler.alphas_cumprod.to(device)

    def noised(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        a = alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    # 2. Text: the target, anchor and neighbour prompts, and the target's tokens for CIP
    with torch.no_grad():
        c_targets = model.encode_prompts(list(scenario.targets))  # (n_targets, T, D)
        c_anchor = model.encode_prompts([scenario.anchor])  # (1, T, D)
        c_neighbours = model.encode_prompts(list(scenario.neighbours)) if scenario.neighbours else None
        cip_embeddings = _token_embeddings(model, scenario.targets, c_targets)  # (P, D)

    # 3. Images the frozen model makes (x_0 of L_u, and the "before" panels)
    def make_images(prompts: tuple[str, ...], total: int) -> tuple[GenerationOutput, torch.Tensor]:
        chosen = spread_prompts(prompts, total)  # image k: prompt k mod n, seed config.seed + k
        seeds = [config.seed + k for k in range(len(chosen))]
        out = generate(model, chosen, num_inference_steps=config.data_steps, seeds=seeds)
        return out, torch.tensor([prompts.index(p) for p in chosen])

    before, target_idx = make_images(scenario.targets, config.num_train_images)
    before_neighbours, neighbour_idx = None, None
    if scenario.neighbours:
        before_neighbours, neighbour_idx = make_images(scenario.neighbours, config.num_train_images)
    # retain data for the curvature: anchor images with the anchor, neighbour images with their prompts
    anchor_out, _ = make_images((scenario.anchor,), max(1, config.num_train_images // 2))
    retain_x0, retain_c = anchor_out.latents, c_anchor.expand(anchor_out.latents.shape[0], -1, -1)
    if before_neighbours is not None:
        retain_x0 = torch.cat([retain_x0, before_neighbours.latents])
        retain_c = torch.cat([retain_c, c_neighbours[neighbour_idx]])

    def retain_loss() -> torch.Tensor:
        idx = torch.randint(0, retain_x0.shape[0], (config.batch_size,), generator=generator)
        x_t, t, noise = noised(retain_x0[idx])
        return torch.nn.functional.mse_loss(edited(x_t, t, retain_c[idx]).sample, noise)

    # 4. Fine-tuning loop
    optimizer = MaskedAdam(weights, lr=config.lr)
    row_width = {n: w[0].numel() for n, w in weights.items()}  # weights per neuron
    mask: NeuronMask | None = None
    hessian: dict[str, torch.Tensor] | None = None
    last_hessian_step = -10**9
    churn = (0, 0)
    ever = None
    history: dict[int, dict[str, list[int]]] = {}
    reports: list[StepReport] = []
    stop_reason, message = "max_steps", f"ran all {config.max_steps} steps"
    for step in range(config.max_steps):
        if stop_event is not None and stop_event.is_set():
            stop_reason, message = "stopped", f"stopped by the user after {step} steps"
            break
        # 4a. L_u on a batch of noised target images (§2)
        idx = torch.randint(0, len(target_idx), (config.batch_size,), generator=generator)
        x_t, t, _ = noised(before.latents[idx])
        c_f = c_targets[target_idx[idx]]
        with torch.no_grad():
            eps = frozen(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         torch.cat([c_anchor.expand(len(idx), -1, -1), c_f])).sample
            eps_anchor, eps_target = eps.chunk(2)
        loss_u = unlearning_loss(edited(x_t, t, c_f).sample, negative_guidance_target(eps_anchor, eps_target,
                                                                                     config.eta))
        grads = dict(zip(weights, torch.autograd.grad(loss_u, list(weights.values()))))

        # 4b. Saliency from the same gradient; refresh the mask (§3)
        z = z_scores(neuron_saliency(grads))
        refreshed = mask is None or (config.mask_every > 0 and step % config.mask_every == 0)
        if refreshed:
            new_mask = NeuronMask.from_z(z, tau=config.tau, rho=config.rho)
            churn = new_mask.churn(mask) if mask is not None else (new_mask.num_selected, 0)
            mask = new_mask
            ever = mask if ever is None else ever.union(mask)
            history[step] = mask.indices()
        # 4c. Curvature for CSR, re-estimated at a refresh at most every `hessian_every` steps (§5)
        if config.lambda_csr > 0 and refreshed and step - last_hessian_step >= config.hessian_every:
            if config.hessian == "hutchinson":
                with classic_attention(edited):
                    diag = hutchinson_diagonal(retain_loss, weights, config.hessian_samples, generator)
            else:
                diag = fisher_diagonal(retain_loss, weights, config.hessian_samples)
            hessian, last_hessian_step = normalise(diag), step

        # 4d. CIP, CSR and preservation: cheap extra gradients on the masked rows (§4, §5, §8)
        loss_cip = concept_inhibition_loss(weights, mask, cip_embeddings)
        loss_csr = sensitivity_loss(weights, originals, hessian, mask) if hessian is not None else loss_cip * 0
        loss_pres = loss_cip * 0
        if config.lambda_pres > 0 and c_neighbours is not None:
            ridx = torch.randint(0, before_neighbours.latents.shape[0], (config.batch_size,), generator=generator)
            xr_t, tr, _ = noised(before_neighbours.latents[ridx])
            c_r = c_neighbours[neighbour_idx[ridx]]
            with torch.no_grad():
                eps_frozen = frozen(xr_t, tr, c_r).sample
            loss_pres = preservation_loss(edited(xr_t, tr, c_r).sample, eps_frozen)
        extra = config.lambda_cip * loss_cip + config.lambda_csr * loss_csr + config.lambda_pres * loss_pres
        if extra.requires_grad:
            extra_grads = torch.autograd.grad(extra, list(weights.values()), allow_unused=True)
            for name, g in zip(weights, extra_grads):
                if g is not None:
                    grads[name] = grads[name] + g
        total = loss_u + extra

        # 4e. The masked update; a NaN stops the job with the last good weights
        if not torch.isfinite(total) or not all(torch.isfinite(g).all() for g in grads.values()):
            stop_reason = "nan"
            message = (f"the loss became NaN or infinite at step {step + 1} (lower the learning rate or η); "
                       f"kept the weights of step {step}")
            break
        backup = {n: w.detach()[mask.rows[n]].clone() for n, w in weights.items()}
        optimizer.step(grads, mask)
        if not all(torch.isfinite(w).all() for w in weights.values()):
            with torch.no_grad():
                for n, w in weights.items():
                    w[mask.rows[n]] = backup[n]
            stop_reason = "nan"
            message = (f"the weights overflowed at step {step + 1} (lower the learning rate); "
                       f"kept the weights of step {step}")
            break

        # 4f. Probe and report
        probe = None
        if config.probe_every and ((step + 1) % config.probe_every == 0 or step + 1 == config.max_steps):
            probe = _probe(model, edited, scenario, config)
        names = list(z)
        offsets = np.cumsum([0] + [z[n].numel() for n in names])
        top = torch.cat([z[n] for n in names]).topk(min(8, int(offsets[-1])))
        top_neurons = []
        for value, flat_idx in zip(top.values.tolist(), top.indices.tolist()):
            k = int(np.searchsorted(offsets, flat_idx, side="right")) - 1  # which weight the index falls in
            top_neurons.append((names[k], flat_idx - int(offsets[k]), value))
        report = StepReport(
            step=step + 1, max_steps=config.max_steps,
            losses={"unlearn": loss_u.item(), "cip": loss_cip.item(), "csr": loss_csr.item(),
                    "pres": loss_pres.item(), "total": total.item()},
            mask_sizes=mask.per_layer(), num_selected=mask.num_selected, refreshed=refreshed, churn=churn,
            top_neurons=tuple(top_neurons),
            saliency_z={n: v.detach().cpu().numpy().astype(np.float16) for n, v in z.items()},
            changed_fraction=sum(int(m.sum()) * row_width[n] for n, m in ever.rows.items()) / num_unet_weights,
            probe=probe, elapsed=time.perf_counter() - start,
        )
        reports.append(report)
        if callback is not None:
            callback(report)
        if inspect is not None:
            with torch.no_grad():
                inspect(edited, report)
        if probe is not None and probe.ua >= config.stop_ua:
            stop_reason, message = "erased", f"the detector no longer finds the target after {step + 1} steps"
            break

    # 5. Finish: exact count of changed weights
    for weight in weights.values():
        weight.requires_grad_(False)
    changed = sum(int((w != originals[n]).sum()) for n, w in weights.items())
    return UnlearnResult(
        unet=edited.eval(), scenario=scenario, config=config, steps=len(reports),
        wall_seconds=time.perf_counter() - start,
        stop_reason=stop_reason, message=message, mask_history=history, reports=reports, before=before,
        before_neighbours=before_neighbours, changed_fraction=changed / num_unet_weights, changed_weights=changed,
        peak_memory_mb=_peak_memory_mb(device),
    )
