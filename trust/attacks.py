"""Attacks on an erased model: do other wordings, or an optimised prompt embedding, bring the target back?

    paraphrase_attack(erased, scenario)                  # every template and synonym of the target
    embedding_attack(erased, scenario, result.before)    # UnlearnDiffAtk-style optimised token embeddings

Both count the share of samples in which the concept detector finds the target (the attack
success rate, ASR; TRUST_METHOD.md, Metrics). The embedding attack follows UnlearnDiffAtk
(Zhang et al., 2024): it optimises the prompt so that the erased model denoises the frozen
model's own target images again — ‖ε_θ(x_t, c_adv) − ε‖² on those images noised to x_t —
here over the continuous token embeddings of the target prompt's words, for a small fixed
budget. Given the original model (`reference`), the target of that regression is the original
model's prediction for the prompt as written instead of the noise ε: a lower-variance signal
that asks the erased model to behave as it did before. The embeddings are also projected onto
the vocabulary (each replaced by its nearest token's), which gives a real prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .concepts import Scenario
from .errors import TrustError
from .generation import GenerationOutput, generate
from .models import DiffusionModel

ATTACK_SEED = 30_000  # attack samples use seeds ATTACK_SEED + k, apart from training, probe and metric seeds


@dataclass(frozen=True)
class ParaphraseAttack:
    asr: float  # share of samples, over every wording, in which the detector finds the target
    num_samples: int
    per_prompt: dict[str, float]  # wording -> its share


@dataclass(frozen=True)
class EmbeddingAttack:
    asr: float  # share of samples from the optimised continuous embeddings that show the target
    asr_projected: float  # the same for the embeddings projected onto the vocabulary
    num_samples: int  # per variant
    loss_before: float  # the attack loss of the target prompt as written, on a fixed evaluation batch
    loss_after: float  # ... and of the optimised embeddings
    projected_prompts: tuple[str, ...]  # the projected embeddings as text, one per target prompt
    embeddings: torch.Tensor  # (n_targets, T, D) the optimised text states


def _require_detector(model: DiffusionModel) -> None:
    if model.detector is None:
        raise TrustError(f"model {model.name!r} has no concept detector, so attack success cannot be measured")


def _found(model: DiffusionModel, scenario: Scenario, images: torch.Tensor) -> list[bool]:
    return [scenario.concept.present(v) for v in model.detector.detect(images)]


def paraphrase_attack(model: DiffusionModel, scenario: Scenario, samples_per_prompt: int = 2,
                      seed: int = ATTACK_SEED) -> ParaphraseAttack:
    """The target through every template and synonym: the share of samples that show the concept.

    Every sample has its own seed (`seed` + k over all samples): whether an erasure holds depends
    on the starting noise as much as on the wording, and samples of every wording on the same two
    seeds would measure those two seeds."""
    _require_detector(model)
    prompts = list(scenario.ua_prompts)
    chosen = [p for p in prompts for _ in range(samples_per_prompt)]
    out = generate(model, chosen, seeds=[seed + k for k in range(len(chosen))], batch_size=32)
    found = _found(model, scenario, out.images)
    per_prompt = {p: sum(found[i * samples_per_prompt : (i + 1) * samples_per_prompt]) / samples_per_prompt
                  for i, p in enumerate(prompts)}
    return ParaphraseAttack(asr=sum(found) / len(found), num_samples=len(found), per_prompt=per_prompt)


class TokenEmbeddingOverride:
    """Replace the input token embeddings at some positions with given vectors (a forward hook on the
    text encoder's embedding table; removed on exit). Gradients reach the given vectors."""

    def __init__(self, text_encoder: nn.Module, positions: torch.Tensor, vectors: torch.Tensor):
        self.table = text_encoder.get_input_embeddings()
        self.positions, self.vectors = positions, vectors
        self._handle = None

    def __enter__(self) -> TokenEmbeddingOverride:
        if self._handle is not None:
            raise RuntimeError("TokenEmbeddingOverride is already hooked")
        self._handle = self.table.register_forward_hook(self._replace)
        return self

    def _replace(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, self.positions] = self.vectors.to(output.dtype)
        return output

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None


def _word_positions(model: DiffusionModel, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (1, T), positions of the prompt's word tokens: after the start token, before the end token)."""
    ids = model.tokenize([prompt])
    eos = model.tokenizer.eos_token_id
    end = int((ids[0] == eos).nonzero()[0]) if (ids[0] == eos).any() else ids.shape[1]
    if end <= 1:
        raise TrustError(f"the target {prompt!r} has no word tokens to attack")
    return ids, torch.arange(1, end)


def _attack_loss(model: DiffusionModel, prompt: str, positions: torch.Tensor, adversarial: torch.Tensor,
                 x_t: torch.Tensor, t: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """‖ε_θ(x_t, c_adv) − goal‖²: how well the model denoises the target images with the adversarial prompt."""
    with TokenEmbeddingOverride(model.text_encoder, positions, adversarial):
        context = model.encode_prompts([prompt])  # (1, T, D)
    eps = model.unet(x_t, t, context.expand(x_t.shape[0], -1, -1)).sample
    return F.mse_loss(eps, goal)


def embedding_attack(model: DiffusionModel, scenario: Scenario, before: GenerationOutput, num_steps: int = 40,
                     lr: float = 0.1, batch_size: int = 4, num_samples: int = 4, seed: int = ATTACK_SEED,
                     reference: DiffusionModel | None = None) -> EmbeddingAttack:
    """Optimise each target prompt's word embeddings against the (erased) `model`, then generate with them.

    `before` are the frozen model's images of the targets (`UnlearnResult.before`); `lr` is Adam's step
    relative to the mean magnitude of the prompt's token embeddings. With `reference` (the original
    model) the regression target is its prediction for the prompt as written, else the true ε (or v).
    """
    _require_detector(model)
    if num_steps < 1 or batch_size < 1 or num_samples < 1:
        raise ValueError("num_steps, batch_size and num_samples must be >= 1")
    targets = [p for p in scenario.targets if p in before.prompts]
    if not targets:
        raise TrustError("`before` holds no images of the scenario's target prompts")
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = model.scheduler.alphas_cumprod.to(model.device)
    table = model.text_encoder.get_input_embeddings().weight  # (vocab, D)

    def noised(x0: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, goal) for target images x0."""
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator).to(model.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        a = alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if reference is None:
            return x_t, t, model.prediction_target(x0, noise, t)
        with torch.no_grad():
            c_f = reference.encode_prompts([prompt]).expand(x0.shape[0], -1, -1)
            return x_t, t, reference.unet(x_t, t, c_f).sample

    states, projected_states, projected_prompts = [], [], []
    loss_before = loss_after = 0.0
    for prompt in targets:
        # 1. Start from the prompt as written; a fixed evaluation batch compares before and after
        ids, positions = _word_positions(model, prompt)
        x0 = before.latents[[i for i, p in enumerate(before.prompts) if p == prompt]]
        initial = table[ids[0, positions].to(table.device)].detach().float()  # (P, D)
        adversarial = initial.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([adversarial], lr=lr * float(initial.abs().mean()))
        evaluation = noised(x0[torch.arange(batch_size) % x0.shape[0]], prompt)
        with torch.no_grad():
            loss_before += _attack_loss(model, prompt, positions, adversarial, *evaluation).item() / len(targets)
        # 2. A fixed budget of Adam steps on fresh noised batches
        for _ in range(num_steps):
            batch = noised(x0[torch.randint(0, x0.shape[0], (batch_size,), generator=generator)], prompt)
            loss = _attack_loss(model, prompt, positions, adversarial, *batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # 3. The optimised text states, and their projection onto the vocabulary
        with torch.no_grad():
            loss_after += _attack_loss(model, prompt, positions, adversarial, *evaluation).item() / len(targets)
            with TokenEmbeddingOverride(model.text_encoder, positions, adversarial):
                states.append(model.encode_prompts([prompt])[0])
            nearest = torch.cdist(adversarial.to(table.dtype), table).argmin(1).cpu()
            projected_ids = ids.clone()
            projected_ids[0, positions] = nearest
            projected_states.append(model.text_encoder(projected_ids.to(model.text_encoder.device))[0][0])
            projected_prompts.append(model.decode(nearest.tolist()))

    # 4. Generate with each and let the detector decide
    def found(embeds: list[torch.Tensor]) -> list[bool]:
        out = generate(model, targets, num_images_per_prompt=num_samples, seed=seed,
                       prompt_embeds=torch.stack(embeds))
        return _found(model, scenario, out.images)

    continuous, projected = found(states), found(projected_states)
    return EmbeddingAttack(
        asr=sum(continuous) / len(continuous), asr_projected=sum(projected) / len(projected),
        num_samples=len(continuous), loss_before=loss_before, loss_after=loss_after,
        projected_prompts=tuple(projected_prompts), embeddings=torch.stack(states).detach())


def attack_summary(original: DiffusionModel, erased: DiffusionModel, scenario: Scenario, before: GenerationOutput,
                   samples_per_prompt: int = 2, embedding_steps: int = 40, embedding_samples: int = 4) -> dict:
    """Both attacks on `erased`, as report.json holds them: ASR_paraphrase, ASR_embedding and details."""
    paraphrases = paraphrase_attack(erased, scenario, samples_per_prompt=samples_per_prompt)
    embedding = embedding_attack(erased, scenario, before, num_steps=embedding_steps, num_samples=embedding_samples,
                                 reference=original)
    return {
        "ASR_paraphrase": paraphrases.asr, "ASR_embedding": embedding.asr,
        "ASR_embedding_projected": embedding.asr_projected,
        "attacks": {"paraphrase": {"num_samples": paraphrases.num_samples, "per_prompt": paraphrases.per_prompt},
                    "embedding": {"num_samples": embedding.num_samples, "loss_before": embedding.loss_before,
                                  "loss_after": embedding.loss_after,
                                  "projected_prompts": list(embedding.projected_prompts)}},
    }
