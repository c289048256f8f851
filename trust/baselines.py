"""The baselines of TRUST_METHOD.md, trained in TRuST's own harness (same data, seeds, probe, stop rule).

- ESD-x and ESD-u (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023): the
  negative-guidance loss L_u (§2) on every cross-attention weight (ESD-x), or on every other
  weight (ESD-u; like ESD's `noxattn`, without the time embedding and the output layers).
- SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
  ICLR 2024): map the target onto the anchor, ‖ε_θ(x_t, c_f) − sg ε_θ(x_t, c_a)‖², plus α times
  the denoising loss on retain images, on the whole UNet through an element-wise mask: the top
  `rho` (50%) of |∇L_f| at θ0. SalUn++ (named in the TRuST paper) recomputes that mask every step.
- ConceptPrune (Chavhan et al., "ConceptPrune: Concept Editing in Diffusion Models via Skilled
  Neuron Pruning", 2024): training-free; zero the FFN neurons (inputs of `ff.net.2`) whose Wanda
  score |W|·‖X‖₂ ranks high for the target and not for the retain prompts at most timesteps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .harness import Harness, StepOutcome
from .losses import unlearning_loss

PRUNE_TIMESTEPS = 10  # ConceptPrune: timesteps, evenly spread, at which neurons are scored
EXACT_QUANTILE_MAX = 2**24  # SalUn: weights above which the mask threshold is estimated from a sample
_OUTPUT_LAYERS = ("conv_norm_out.", "conv_out.", "time_embedding.")  # ESD-u leaves these alone (ESD's code)


def esd_parameters(unet: nn.Module, variant: str) -> dict[str, nn.Parameter]:
    """What ESD trains: every `attn2` weight ("esd-x"), or every other one but the time embedding and
    output layers ("esd-u")."""
    if variant not in ("esd-x", "esd-u"):
        raise ValueError(f"unknown ESD variant {variant!r}; choose 'esd-x' or 'esd-u'")
    if variant == "esd-x":
        return {n: p for n, p in unet.named_parameters() if ".attn2." in n}
    return {n: p for n, p in unet.named_parameters() if ".attn2." not in n and not n.startswith(_OUTPUT_LAYERS)}


def _finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors)


def _restore_on_overflow(harness: Harness, params: dict[str, nn.Parameter], step: int) -> StepOutcome | None:
    """Dense methods keep no copy of their weights (that would cost them memory TRuST does not pay), so
    after an overflow the edited UNet goes back to the original weights."""
    if _finite(params.values()):
        return None
    frozen = dict(harness.frozen.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(frozen[name])
    return StepOutcome(losses={}, changed_fraction=0.0, failure=(
        f"the weights overflowed at step {step + 1} (lower the learning rate); reverted to the original weights"))


class EsdUpdate:
    """ESD-x / ESD-u: L_u, Adam on every weight of the chosen set, no mask."""

    def __init__(self, harness: Harness, variant: str):
        self.h = harness
        self.params = esd_parameters(harness.edited, variant)
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=harness.config.lr)
        self.trained_fraction = sum(p.numel() for p in self.params.values()) / harness.num_unet_weights
        self.mask_history: dict[int, dict[str, list[int]]] = {}

    def step(self, step: int) -> StepOutcome:
        h = self.h
        x_t, t, c_f, c_a = h.target_batch()
        loss_u = unlearning_loss(h.edited(x_t, t, c_f).sample, h.negative_guidance(x_t, t, c_f, c_a))
        grads = torch.autograd.grad(loss_u, list(self.params.values()))
        if not torch.isfinite(loss_u) or not _finite(grads):
            return StepOutcome(losses={}, changed_fraction=0.0, failure=(
                f"the loss became NaN or infinite at step {step + 1} (lower the learning rate, η or a λ weight); "
                f"kept the weights of step {step}"))
        for p, g in zip(self.params.values(), grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        failed = _restore_on_overflow(h, self.params, step)
        if failed is not None:
            return failed
        return StepOutcome(losses={"unlearn": loss_u.item(), "total": loss_u.item()},
                           changed_fraction=self.trained_fraction)


def top_fraction_masks(scores: dict[str, torch.Tensor], rho: float, generator: torch.Generator
                       ) -> dict[str, torch.Tensor]:
    """Element-wise masks of the top `rho` fraction of all scores together (SalUn's hard threshold).

    Above EXACT_QUANTILE_MAX elements the threshold is the quantile of a seeded uniform sample of that
    many elements (sorting all of SD-1.5's 860M would need another copy of the model in memory).
    """
    flat = torch.cat([s.detach().flatten() for s in scores.values()])
    if flat.numel() > EXACT_QUANTILE_MAX:
        flat = flat[torch.randint(0, flat.numel(), (EXACT_QUANTILE_MAX,), generator=generator).to(flat.device)]
    k = max(1, round(rho * flat.numel()))
    threshold = flat.float().kthvalue(flat.numel() - k + 1).values
    return {n: s >= threshold for n, s in scores.items()}


class SalUnUpdate:
    """SalUn (static mask of step 0, at θ0) and SalUn++ (mask recomputed every `mask_every` steps)."""

    def __init__(self, harness: Harness):
        self.h, self.config = harness, harness.config
        self.params = dict(harness.edited.named_parameters())
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.config.lr)
        self.masks: dict[str, torch.Tensor] | None = None
        self.ever: dict[str, torch.Tensor] | None = None  # every weight masked in so far
        self.churn = (0, 0)
        self.num_unet_weights = harness.num_unet_weights
        self.mask_history: dict[int, dict[str, list[int]]] = {}  # element masks are too large to keep

    def step(self, step: int) -> StepOutcome:
        h, config = self.h, self.config
        tensors = list(self.params.values())
        # 1. Forget loss: the target's prediction pulled onto the anchor's (its own, stop-gradient)
        x_t, t, c_f, c_a = h.target_batch()
        with torch.no_grad():
            eps_anchor = h.edited(x_t, t, c_a).sample
        loss_f = F.mse_loss(h.edited(x_t, t, c_f).sample, eps_anchor)
        grads_f = torch.autograd.grad(loss_f, tensors)
        # 2. Retain loss: denoising on the anchor and neighbour images the frozen model made
        loss_r = h.retain_loss()
        grads_r = torch.autograd.grad(loss_r, tensors)
        total = loss_f + config.alpha * loss_r
        if not torch.isfinite(total) or not _finite(grads_f) or not _finite(grads_r):
            return StepOutcome(losses={}, changed_fraction=0.0, failure=(
                f"the loss became NaN or infinite at step {step + 1} (lower the learning rate); "
                f"kept the weights of step {step}"))

        # 3. Saliency mask: top rho of |∇L_f|, at θ0 (SalUn) or at every refresh (SalUn++)
        refreshed = self.masks is None or (config.mask_every > 0 and step % config.mask_every == 0)
        if refreshed:
            new = top_fraction_masks({n: g.abs() for n, g in zip(self.params, grads_f)}, config.rho, h.generator)
            if self.masks is not None:
                self.churn = (sum(int((m & ~self.masks[n]).sum()) for n, m in new.items()),
                              sum(int((~m & self.masks[n]).sum()) for n, m in new.items()))
            else:
                self.churn = (sum(int(m.sum()) for m in new.values()), 0)
            self.masks = new
            self.ever = new if self.ever is None else {n: m | new[n] for n, m in self.ever.items()}

        # 4. Adam on the masked gradient (as SalUn's code: the gradient times the mask)
        for (name, p), gf, gr in zip(self.params.items(), grads_f, grads_r):
            p.grad = (gf + config.alpha * gr) * self.masks[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        failed = _restore_on_overflow(h, self.params, step)
        if failed is not None:
            return failed
        return StepOutcome(
            losses={"unlearn": loss_f.item(), "retain": loss_r.item(), "total": total.item()},
            changed_fraction=sum(int(m.sum()) for m in self.ever.values()) / self.num_unet_weights,
            num_selected=sum(int(m.sum()) for m in self.masks.values()), refreshed=refreshed, churn=self.churn)


class InputNorms:
    """Sums of squared inputs, per input neuron, of some linear layers; forward pre-hooks, removed on exit."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.layers = layers
        self.sums: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> InputNorms:
        if self._handles:
            raise RuntimeError("InputNorms is already hooked")
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()  # (B, HW, inner)
            self.sums[name] = self.sums.get(name, 0) + x.pow(2).flatten(0, -2).sum(0)
        return record

    def take(self) -> dict[str, torch.Tensor]:
        """‖X_j‖₂ per input neuron since the last take."""
        norms = {n: s.sqrt() for n, s in self.sums.items()}
        self.sums = {}
        return norms

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def ffn_output_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """The second FFN linear (`ff.net.2`) of every transformer block; its inputs are ConceptPrune's neurons."""
    return {name: module for name, module in unet.named_modules()
            if name.endswith("ff.net.2") and isinstance(module, nn.Linear)}


@torch.no_grad()
def concept_prune(harness: Harness, num_timesteps: int = PRUNE_TIMESTEPS) -> dict[str, list[int]]:
    """Zero the skilled FFN neurons of the target in `harness.edited`; returns weight -> pruned columns.

    At each timestep a neuron j of a layer with weight W scores s_j = ‖W[:, j]‖₁ · ‖X_j‖₂ (Wanda, summed
    over the neuron's weights) for the noised target images with their prompts (X) and for the retain
    images with theirs. It is selected when in the layer's top `rho` for the target and not for the
    retain set; neurons selected at half the timesteps or more are pruned.
    """
    h, rho = harness, harness.config.rho
    layers = ffn_output_layers(h.edited)
    if not layers:
        raise ValueError("the UNet has no FFN layers named 'ff.net.2'; ConceptPrune needs diffusers' "
                         "BasicTransformerBlock")
    num_train = len(h.alphas_cumprod)
    timesteps = torch.linspace(0, num_train - 1, num_timesteps).round().long()
    counts = {n: torch.zeros(layer.in_features, dtype=torch.long) for n, layer in layers.items()}
    column_l1 = {n: layer.weight.abs().sum(0).float() for n, layer in layers.items()}  # (inner,)
    with InputNorms(layers) as norms:
        for t in timesteps:
            x_f, tf, _ = h.noised(h.target_x0, t.expand(h.target_x0.shape[0]))
            h.edited(x_f, tf, h.target_c)
            forget = norms.take()
            x_r, tr, _ = h.noised(h.retain_x0, t.expand(h.retain_x0.shape[0]))
            h.edited(x_r, tr, h.retain_c)
            retain = norms.take()
            for name in layers:
                k = max(1, math.ceil(rho * column_l1[name].numel()))
                top_f = (column_l1[name] * forget[name]).topk(k).indices
                top_r = (column_l1[name] * retain[name]).topk(k).indices
                selected = torch.zeros_like(counts[name], dtype=torch.bool)
                selected[top_f.cpu()] = True
                selected[top_r.cpu()] = False
                counts[name] += selected
    pruned = {}
    for name, layer in layers.items():
        columns = (counts[name] * 2 >= num_timesteps).nonzero().flatten()
        if columns.numel():
            layer.weight[:, columns.to(layer.weight.device)] = 0
            pruned[f"{name}.weight"] = columns.tolist()
    return pruned
