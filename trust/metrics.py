"""UA, IRA and CRA (TRUST_METHOD.md, Metrics), measured by the concept detector on fixed seeds."""

from __future__ import annotations

from .concepts import Scenario, generated_right
from .errors import TrustError
from .generation import generate
from .methods import METRIC_SEED
from .models import DiffusionModel
from .shapes.world import wordings


def spread(items: tuple[str, ...], k: int) -> list[str]:
    """At most k items, evenly spread (so paraphrases cover every template and synonym)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else [items[0]]


def measure(model: DiffusionModel, scenario: Scenario, num_samples: int = 8, max_paraphrases: int = 12,
            seed: int = METRIC_SEED, neighbour_wordings: int = 0) -> dict:
    """{"UA", "IRA", "CRA", "per_prompt": {prompt: share}} for a (possibly erased) model.

    UA counts samples of the target and its paraphrases in which the concept is absent;
    IRA and CRA count neighbour and unrelated samples that show what their prompt asks.
    With `neighbour_wordings` > 0 also "IRA_wordings": IRA on that many other wordings of each
    neighbour, which no method trained on (is a neighbour kept, or only its exact prompt?).
    """
    if model.detector is None:
        raise TrustError(f"model {model.name!r} has no concept detector, so UA/IRA/CRA cannot be measured")
    ua_prompts = list(dict.fromkeys(list(scenario.targets) + spread(scenario.paraphrases, max_paraphrases)))
    groups = {"UA": ua_prompts, "IRA": list(scenario.neighbours), "CRA": list(scenario.unrelated)}
    if neighbour_wordings > 0:
        others = [spread(tuple(w for w in wordings(n) if w not in scenario.neighbours), neighbour_wordings)
                  for n in scenario.neighbours]
        groups["IRA_wordings"] = list(dict.fromkeys(w for ws in others for w in ws if w not in ua_prompts))
    prompts = list(dict.fromkeys(p for group in groups.values() for p in group))
    out = generate(model, prompts, num_images_per_prompt=num_samples, seed=seed, batch_size=32)
    verdicts = model.detector.detect(out.images)
    per_prompt: dict[str, float] = {}
    for p_idx, prompt in enumerate(prompts):
        vs = verdicts[p_idx * num_samples : (p_idx + 1) * num_samples]
        if prompt in groups["UA"]:
            per_prompt[prompt] = sum(not scenario.concept.present(v) for v in vs) / num_samples
        else:
            per_prompt[prompt] = sum(generated_right(prompt, v) for v in vs) / num_samples
    metrics: dict = {}
    for name, group in groups.items():
        metrics[name] = sum(per_prompt[p] for p in group) / len(group) if group else None
    metrics["per_prompt"] = per_prompt
    metrics["num_samples"] = num_samples
    return metrics
