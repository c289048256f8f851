"""Diagonal curvature of the denoising loss for CSR (TRUST_METHOD.md §5)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def hutchinson_diagonal(loss_fn: Callable[[], torch.Tensor], params: dict[str, torch.Tensor], num_probes: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
    """E[v ⊙ Hv] with Rademacher v; Hv by double backward. Needs twice-differentiable ops."""
    names, tensors = list(params), list(params.values())
    total = [torch.zeros_like(p) for p in tensors]
    for _ in range(num_probes):
        grads = torch.autograd.grad(loss_fn(), tensors, create_graph=True)
        probes = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in tensors]
        hvps = torch.autograd.grad(grads, tensors, grad_outputs=probes)
        for acc, v, hv in zip(total, probes, hvps):
            acc += v * hv
    return {n: (t / num_probes).detach() for n, t in zip(names, total)}


def fisher_diagonal(loss_fn: Callable[[], torch.Tensor], params: dict[str, torch.Tensor],
                    num_samples: int) -> dict[str, torch.Tensor]:
    """The empirical Fisher: mean squared gradient, the cheap option."""
    names, tensors = list(params), list(params.values())
    total = [torch.zeros_like(p) for p in tensors]
    for _ in range(num_samples):
        for acc, g in zip(total, torch.autograd.grad(loss_fn(), tensors)):
            acc += g.detach() ** 2
    return {n: t / num_samples for n, t in zip(names, total)}


def normalise(diagonal: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clamp to >= 0 (noisy estimates can dip below) and scale to mean 1 over all candidate weights."""
    clamped = {n: d.clamp_min(0) for n, d in diagonal.items()}
    mean = torch.cat([d.flatten() for d in clamped.values()]).mean().clamp_min(1e-20)
    return {n: d / mean for n, d in clamped.items()}
