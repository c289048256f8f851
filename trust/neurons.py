"""Concept neurons: which rows of which projections, their saliency, and the mask over them.

A neuron is one output row of a cross-attention projection (TRUST_METHOD.md §1):
by default `attn2.to_k` and `attn2.to_v`, the only weights that read the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import cross_attention_layers

PROJECTIONS = ("to_k", "to_v", "to_q", "to_out")  # the attn2 projections a config may select


def candidate_weights(unet: nn.Module, projections: tuple[str, ...] = ("to_k", "to_v")) -> dict[str, nn.Parameter]:
    """The weight matrices whose rows are candidate neurons, by parameter name, in forward order."""
    weights = {}
    for layer_name, attn in cross_attention_layers(unet).items():
        for proj in projections:
            if proj not in PROJECTIONS:
                raise ValueError(f"unknown projection {proj!r}; choose from {PROJECTIONS}")
            linear = attn.to_out[0] if proj == "to_out" else getattr(attn, proj)
            suffix = "to_out.0" if proj == "to_out" else proj
            weights[f"{layer_name}.{suffix}.weight"] = linear.weight
    return weights


def projection_kind(param_name: str) -> str:
    """'to_k', 'to_v', ... from a parameter name; saliency is normalised within a kind."""
    return param_name.split(".")[-2] if not param_name.endswith("to_out.0.weight") else "to_out"


def neuron_saliency(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean |gradient| over each row (TRUST_METHOD.md §3): (rows,) per weight."""
    return {name: g.abs().flatten(1).mean(1) for name, g in grads.items()}


def z_scores(saliency: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saliency z-normalised per projection kind across all layers."""
    by_kind: dict[str, list[str]] = {}
    for name in saliency:
        by_kind.setdefault(projection_kind(name), []).append(name)
    z = {}
    for names in by_kind.values():
        values = torch.cat([saliency[n] for n in names]).float()
        mean, std = values.mean(), values.std().clamp_min(1e-12)
        for n in names:
            z[n] = (saliency[n].float() - mean) / std
    return z


@dataclass(frozen=True)
class NeuronMask:
    """Selected rows per weight: name -> bool tensor (rows,)."""

    rows: dict[str, torch.Tensor]

    @classmethod
    def from_z(cls, z: dict[str, torch.Tensor], tau: float | None = None, rho: float | None = None) -> NeuronMask:
        """z > tau, or the top rho fraction of all neurons (exactly one of the two)."""
        if (tau is None) == (rho is None):
            raise ValueError("give exactly one of tau (z-score threshold) or rho (top fraction)")
        if tau is not None:
            return cls({n: v > tau for n, v in z.items()})
        flat = torch.cat(list(z.values()))
        k = max(1, round(rho * flat.numel()))
        threshold = flat.topk(k).values[-1]
        return cls({n: v >= threshold for n, v in z.items()})

    @classmethod
    def full(cls, weights: dict[str, torch.Tensor]) -> NeuronMask:
        return cls({n: torch.ones(w.shape[0], dtype=torch.bool, device=w.device) for n, w in weights.items()})

    @property
    def num_selected(self) -> int:
        return int(sum(int(m.sum()) for m in self.rows.values()))

    def per_layer(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.rows.items()}

    def indices(self) -> dict[str, list[int]]:
        return {n: m.nonzero().flatten().tolist() for n, m in self.rows.items() if m.any()}

    def churn(self, other: NeuronMask) -> tuple[int, int]:
        """(neurons added, neurons removed) going from `other` to this mask."""
        added = sum(int((m & ~other.rows[n]).sum()) for n, m in self.rows.items())
        removed = sum(int((~m & other.rows[n]).sum()) for n, m in self.rows.items())
        return added, removed

    def union(self, other: NeuronMask) -> NeuronMask:
        return NeuronMask({n: m | other.rows[n] for n, m in self.rows.items()})

    def within_budget(self, ever: NeuronMask | None, z: dict[str, torch.Tensor], row_width: dict[str, int],
                      budget: int) -> NeuronMask:
        """This mask, with only as many neurons outside `ever` (those changed so far) as keep the weights of
        `ever` ∪ mask within `budget`, the most salient first: a neuron already changed costs nothing."""
        ever_rows = ever.rows if ever is not None else {n: torch.zeros_like(m) for n, m in self.rows.items()}
        left = budget - sum(int(m.sum()) * row_width[n] for n, m in ever_rows.items())
        kept = {n: m & ever_rows[n] for n, m in self.rows.items()}
        new = [(float(z[n][i]), n, i) for n, m in self.rows.items() for i in (m & ~ever_rows[n]).nonzero().flatten()
               .tolist()]
        for _, n, i in sorted(new, reverse=True):
            if row_width[n] <= left:
                kept[n][i] = True
                left -= row_width[n]
        return NeuronMask(kept)
