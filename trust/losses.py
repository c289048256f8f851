"""The loss terms of TRuST (TRUST_METHOD.md §2, §4, §5, §8); pure functions over tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .neurons import NeuronMask, projection_kind


def negative_guidance_target(eps_anchor: torch.Tensor, eps_target: torch.Tensor, eta: float) -> torch.Tensor:
    """ε* = ε_θ0(x_t, c_a) − η·(ε_θ0(x_t, c_f) − ε_θ0(x_t, c_a))  (§2, as in ESD)."""
    return eps_anchor - eta * (eps_target - eps_anchor)


def unlearning_loss(eps_pred: torch.Tensor, eps_star: torch.Tensor) -> torch.Tensor:
    """L_u = ‖ε_θ(x_t, c_f) − sg(ε*)‖²  (§2)."""
    return F.mse_loss(eps_pred, eps_star.detach())


def concept_inhibition_loss(weights: dict[str, torch.Tensor], mask: NeuronMask,
                            embeddings: torch.Tensor) -> torch.Tensor:
    """CIP (§4): mean |W_j·e| over masked key/value neurons j and target token embeddings e (P, D)."""
    terms = []
    for name, weight in weights.items():
        rows = mask.rows[name]
        if projection_kind(name) in ("to_k", "to_v") and rows.any():
            terms.append((weight[rows] @ embeddings.T).abs().flatten())  # (selected * P,)
    if not terms:
        return embeddings.new_zeros(())
    return torch.cat(terms).mean()


def sensitivity_loss(weights: dict[str, torch.Tensor], originals: dict[str, torch.Tensor],
                     hessian: dict[str, torch.Tensor], mask: NeuronMask) -> torch.Tensor:
    """CSR (§5): Σ_i h_i (θ_i − θ0_i)² over masked weights."""
    total = next(iter(weights.values())).new_zeros(())
    for name, weight in weights.items():
        rows = mask.rows[name]
        if rows.any():
            total = total + (hessian[name][rows] * (weight[rows] - originals[name][rows]) ** 2).sum()
    return total


def preservation_loss(eps_pred: torch.Tensor, eps_frozen: torch.Tensor) -> torch.Tensor:
    """‖ε_θ(x_t^r, c_r) − ε_θ0(x_t^r, c_r)‖² on neighbour images (§8, our extension)."""
    return F.mse_loss(eps_pred, eps_frozen.detach())


def key_value_preservation_loss(weights: dict[str, torch.Tensor], originals: dict[str, torch.Tensor],
                                mask: NeuronMask, states: torch.Tensor) -> torch.Tensor:
    """How far the masked K/V rows moved the keys and values of the kept prompts' token states `states` (K, D),
    relative to what they were: Σ‖(W − W0)_j·E‖² / Σ‖W0_j·E‖² over masked rows j (§8, our extension)."""
    moved, before = [], []
    for name, weight in weights.items():
        rows = mask.rows[name]
        if projection_kind(name) in ("to_k", "to_v") and rows.any():
            moved.append(((weight[rows] - originals[name][rows]) @ states.T).pow(2).sum())
            before.append((originals[name][rows] @ states.T).pow(2).sum())
    if not moved:
        return next(iter(weights.values())).sum() * 0
    return torch.stack(moved).sum() / torch.stack(before).sum().clamp_min(1e-12)
