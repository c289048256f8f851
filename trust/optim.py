"""Adam that moves only the rows of the current neuron mask (TRUST_METHOD.md §6).

Rows outside the mask stay bit for bit as they are, and so does their optimizer
state: a neuron that leaves the mask does not drift on momentum, and when it comes
back its moments and step count resume where they stopped.
"""

from __future__ import annotations

import torch

from .neurons import NeuronMask


class MaskedAdam:
    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, precondition: dict[str, torch.Tensor] | None = None):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.precondition = precondition or {}  # name -> symmetric (D, D) S: Adam runs on W~ = W·S^-1
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.row_steps = {n: torch.zeros(p.shape[0], dtype=torch.long, device=p.device) for n, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], mask: NeuronMask) -> None:
        beta1, beta2 = self.betas
        for name, param in self.params.items():
            rows = mask.rows[name]
            if not rows.any():
                continue
            grad = grads[name][rows]  # (selected, ...)
            s = self.precondition.get(name)
            if s is not None:  # W = W~·S: the gradient of W~ is g·S, and a step of W~ moves W by that step·S
                grad = grad @ s
            self.row_steps[name][rows] += 1
            t = self.row_steps[name][rows].to(grad.dtype).view(-1, *[1] * (grad.dim() - 1))
            m = self.exp_avg[name][rows] * beta1 + (1 - beta1) * grad
            v = self.exp_avg_sq[name][rows] * beta2 + (1 - beta2) * grad * grad
            self.exp_avg[name][rows] = m
            self.exp_avg_sq[name][rows] = v
            update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + self.eps)
            if s is not None:
                update = update @ s
            param[rows] = param[rows] - self.lr * update
