"""The web app's form, read into a `Scenario` and an `UnlearnConfig` (and filled from presets and defaults)."""

from __future__ import annotations

import math
import re

from .concepts import PRESETS, Scenario, common_concept, concept_neighbours, scenario_from_prompts, with_anchors
from .errors import number_text
from .methods import BASELINES, MAX_SEED, reads
from .unlearn import UnlearnConfig

SCENARIOS = ("individual", "combination", "conditional")  # the presets the page offers
EMPTY_PROMPT = '""'  # how the form writes the empty prompt as an anchor
ADVANCED_FIELDS = ("max_steps", "lr", "tau", "rho", "lambda_cip", "lambda_csr", "lambda_pres", "eta", "seed")


def lines(text: str) -> list[str]:
    """Non-empty lines of a text box, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def preset_fields(preset: str) -> tuple[str, str, str]:
    """(targets, anchor, neighbours) of a preset, one prompt per line, as the form shows them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {SCENARIOS}")
    scenario = PRESETS[preset]
    return "\n".join(scenario.targets), anchor_text(scenario), "\n".join(scenario.neighbours)


def anchor_text(scenario: Scenario) -> str:
    """The Anchor box for a scenario: one line for all targets, or one per target (`""`: the empty prompt)."""
    anchors = [a or EMPTY_PROMPT for a in scenario.target_anchors]
    return anchors[0] if len(set(anchors)) == 1 else "\n".join(anchors)


def derived_anchor_text(targets: str, grammar: bool = True) -> str:
    """The Anchor box that follows typed targets: each target's `concept_anchor` of the concept they share
    (whatever the neighbours; ValueError if there is no target or no such concept, which Erase refuses with the
    reason). `grammar` False (Stable Diffusion): the empty prompt, as `trust erase` gives it."""
    scenario = scenario_from_form(None, targets, "", "")
    if not grammar:
        return EMPTY_PROMPT
    if not scenario.concept.detectable:
        raise ValueError(f"the targets name no concept of the world: {scenario.concept.describe()}")
    return anchor_text(scenario)


def derived_neighbours_text(targets: str, preset: str | None, grammar: bool = True) -> str:
    """The Neighbours box that follows typed targets: the preset's when they are its targets, else each target's
    scene with one attribute of the concept changed (`concept_neighbours`). Empty when the world cannot name
    the concept, or when the model has no ShapesWorld grammar (`grammar` False: to Stable Diffusion "a red car"
    is no scene of shapes)."""
    target_lines = tuple(lines(targets))
    if preset in PRESETS and PRESETS[preset].targets == target_lines:
        return "\n".join(PRESETS[preset].neighbours)
    if not target_lines or not grammar:
        return ""
    return "\n".join(concept_neighbours(target_lines, common_concept(target_lines)))


def scenario_from_form(preset: str | None, targets: str, anchor: str, neighbours: str) -> Scenario:
    """The preset as is when its targets are unchanged, else a scenario for the typed target(s); the
    neighbours are those typed (none when the box is empty).

    Anchor: one prompt per target, or one for all; `""` is the empty prompt; left empty, each target's
    `concept_anchor`.
    """
    target_lines = lines(targets)
    if not target_lines:
        raise ValueError("type the prompt to erase in Target (one prompt per line)")
    anchor_lines = ["" if line == EMPTY_PROMPT else line for line in lines(anchor)]
    if len(anchor_lines) > 1 and len(anchor_lines) != len(target_lines):
        if len(target_lines) == 1:
            raise ValueError(f"give one anchor for the target (got {len(anchor_lines)} lines)")
        raise ValueError(f"give one anchor for each of the {len(target_lines)} targets, or one for all "
                         f"(got {len(anchor_lines)} lines)")
    base = PRESETS.get(preset) if preset else None
    same_targets = base is not None and tuple(target_lines) == base.targets
    scenario = scenario_from_prompts(None if same_targets else target_lines[0], lines(neighbours),  # []: none
                                     anchor=anchor_lines[0] if len(anchor_lines) == 1 else None,
                                     preset=preset if base else None,
                                     more_targets=() if same_targets else tuple(target_lines[1:]))
    return with_anchors(scenario, tuple(anchor_lines)) if len(anchor_lines) > 1 else scenario


def preset_of(targets: str, current: str | None = None) -> str | None:
    """The preset whose targets the Target box holds (`current` first, as two names share red's), else None."""
    target_lines = tuple(lines(targets))
    for name in (current, *SCENARIOS):
        if name in PRESETS and PRESETS[name].targets == target_lines:
            return name
    return None


def advanced_values(config: UnlearnConfig) -> list:
    """The advanced fields as `config` sets them (rho 0 means: use tau)."""
    return [0 if name == "rho" and config.rho is None else getattr(config, name) for name in ADVANCED_FIELDS]


def form_fields(scenario: Scenario, config: UnlearnConfig) -> list:
    """The form as it would ask for this job: targets, anchor, neighbours, method, then ADVANCED_FIELDS."""
    return ["\n".join(scenario.targets), anchor_text(scenario), "\n".join(scenario.neighbours), config.method,
            *advanced_values(config)]


def method_defaults(method: str) -> list:
    """The advanced fields as the method's defaults set them."""
    return advanced_values(UnlearnConfig.for_method(method))


def used_fields(method: str) -> set[str]:
    """The advanced fields that `method` reads (the others keep its defaults and cannot be edited)."""
    if method in BASELINES:  # ConceptPrune: rho and the seed; ESD: steps, rate, η; SalUn: and ρ
        return {name for name in ADVANCED_FIELDS if reads(method, name)}
    fixed = {"trust": {"lambda_pres"}, "trust-static": {"lambda_pres"}, "trust-no-cip": {"lambda_pres", "lambda_cip"},
             "trust-no-csr": {"lambda_pres", "lambda_csr"}}.get(method, set())  # an ablation fixes its term at 0
    return set(ADVANCED_FIELDS) - fixed


FIELD_LABELS = {"max_steps": "Steps", "lr": "Learning rate", "tau": "τ", "rho": "ρ", "lambda_cip": "λ_cip",
                "lambda_csr": "λ_csr", "lambda_pres": "λ_pres", "eta": "η", "seed": "Seed"}


def image_seed(value: float | None) -> int:
    """Try a prompt's seed field as a seed: a whole number within 0..MAX_SEED (the field is empty: None)."""
    if value is None or not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_SEED:
        shown = ("nothing (the field is empty, or what it holds is not a number)" if value is None
                 else number_text(value))
        raise ValueError(f"Seed of the images must be a whole number within 0..{MAX_SEED} (0: the first images), "
                         f"got {shown}")
    return int(value)


def config_from_form(method: str, max_steps: float | None, lr: float | None, tau: float | None, rho: float | None,
                     lambda_cip: float | None, lambda_csr: float | None, lambda_pres: float | None,
                     eta: float | None, seed: float | None, **extra) -> UnlearnConfig:
    """An UnlearnConfig from the advanced fields; `extra` sets fields the form does not show.

    Every field needs a number (τ not when ρ > 0 replaces it): an emptied one is an error naming the
    method's default, never a silent fallback.
    """
    values = dict(zip(ADVANCED_FIELDS, (max_steps, lr, tau, rho, lambda_cip, lambda_csr, lambda_pres, eta, seed)))
    use_rho = rho is not None and rho > 0
    defaults = dict(zip(ADVANCED_FIELDS, method_defaults(method)))
    used = used_fields(method)
    if "rho" in used and "tau" not in used and rho is not None and not use_rho:  # (its τ field is greyed out)
        raise ValueError(f"ρ must be within (0, 1] for {method}: it selects by ρ alone, with no τ to fall back on "
                         f"({method}'s default is {defaults['rho']})")
    if rho is not None and rho < 0:  # (before the empty fields: with ρ < 0, an empty τ is not the news)
        raise ValueError(f"ρ must be 0 (use τ) or within (0, 1], got {rho}")
    for name, value in values.items():
        if value is None and not (name == "tau" and use_rho):
            default = "0 (use τ)" if name == "rho" else defaults[name]
            raise ValueError(f"{FIELD_LABELS[name]} is empty or not a number: type a number ({method}'s default is "
                             f"{default})")
    for name in ("max_steps", "seed"):
        value = values[name]
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):  # (an int is whole)
            raise ValueError(f"{FIELD_LABELS[name]} must be a whole number, got {number_text(value)}")
    try:
        return UnlearnConfig.for_method(
            method, max_steps=int(max_steps), lr=lr, tau=None if use_rho else tau, rho=rho if use_rho else None,
            lambda_cip=lambda_cip, lambda_csr=lambda_csr, lambda_pres=lambda_pres, eta=eta, seed=int(seed), **extra)
    except ValueError as err:  # name the fields as the form labels them (Steps, not max_steps), as the checks above
        reason = str(err).removeprefix("invalid unlearning config: ")
        raise ValueError(re.sub(r"\b(" + "|".join(FIELD_LABELS) + r")\b", lambda m: FIELD_LABELS[m.group(1)],
                                reason)) from None
