"""The vocabulary and prompt grammar of ShapesWorld, the embedded synthetic world.

A scene is one shape of one colour on one background. Prompts are written from a
few templates; every word may appear through a synonym. Whatever a prompt leaves
out is drawn at random, except the background, which is plain unless named.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..errors import shorten

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("plain", "striped", "dotted")

# A sample with no shape in it (the detector's answer for an erased concept).
NONE = "none"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "blue": ("azure", "navy"),
    "green": ("emerald",),
    "yellow": ("golden",),
    "purple": ("violet",),
    "orange": ("amber",),
    "circle": ("disc",),
    "square": ("box",),
    "triangle": ("wedge",),
    "star": ("pentagram",),
}

# The four templates of the world's grammar, then partial ones (an attribute left
# out is drawn at random) so that "a circle on a striped background" or "a red
# shape" mean something to the model.
TEMPLATES = (
    "a {color} {shape}",
    "a {color} {shape} on a {background} background",
    "a {shape} that is {color}",
    "{color} {shape}, {background} background",
)
PARTIAL_TEMPLATES = (
    "a {shape}",
    "a {shape} on a {background} background",
    "a {color} shape",
    "a {color} shape on a {background} background",
)

_CANONICAL = {word: word for word in COLORS + SHAPES + BACKGROUNDS}
_CANONICAL.update({syn: word for word, syns in SYNONYMS.items() for syn in syns})


@dataclass(frozen=True)
class Scene:
    color: str  # one of COLORS, or NONE for an empty image
    shape: str  # one of SHAPES, or NONE
    background: str  # one of BACKGROUNDS


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for; None where it leaves the attribute open."""

    color: str | None
    shape: str | None
    background: str  # "plain" when the prompt names no background


def words_for(canonical: str) -> tuple[str, ...]:
    """The canonical word and all its synonyms."""
    return (canonical, *SYNONYMS.get(canonical, ()))


def fix_articles(prompt: str) -> str:
    """'a' before a vowel sound becomes 'an' ("an orange star")."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", prompt)


def fill(template: str, color: str = "", shape: str = "", background: str = "") -> str:
    return fix_articles(template.format(color=color, shape=shape, background=background))


def named_words(prompt: str) -> list[str]:
    """The colours, shapes and backgrounds a prompt names, canonical, in order (synonyms mapped)."""
    return [_CANONICAL[word] for word in re.findall(r"[a-z]+", prompt.lower()) if word in _CANONICAL]


def parse_prompt(prompt: str) -> PromptSpec:
    """Read the canonical colour, shape and background a prompt names.

    The last word of each kind wins; words the world does not know are ignored.
    """
    color = shape = None
    background = "plain"
    for canonical in named_words(prompt):
        if canonical in COLORS:
            color = canonical
        elif canonical in SHAPES:
            shape = canonical
        elif canonical in BACKGROUNDS:
            background = canonical
    return PromptSpec(color=color, shape=shape, background=background)


def sample_prompt(rng: random.Random, synonym_p: float = 0.4, partial_p: float = 0.2,
                  wrong_article_p: float = 0.15) -> tuple[str, Scene]:
    """Draw a training prompt and the scene it describes (TRAINING grammar)."""
    templates = PARTIAL_TEMPLATES if rng.random() < partial_p else TEMPLATES
    template = rng.choice(templates)
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    background = rng.choice(BACKGROUNDS) if "{background}" in template else "plain"

    def word(canonical: str) -> str:
        syns = SYNONYMS.get(canonical, ())
        return rng.choice(syns) if syns and rng.random() < synonym_p else canonical

    prompt = fill(template, word(color), word(shape), background)
    if rng.random() < wrong_article_p:  # both "a" and "an" must work
        prompt = re.sub(r"\b(an?)\b", lambda m: "a" if m.group(1) == "an" else "an", prompt, count=1)
    return prompt, Scene(color, shape, background)


def all_prompts(color: str | None, shape: str | None, background: str = "plain") -> list[str]:
    """Every way the grammar can say one scene: each template (a partial one where colour or shape is
    None), each synonym."""
    prompts = []
    for template in TEMPLATES + PARTIAL_TEMPLATES:
        if ("{color}" in template) != (color is not None) or ("{shape}" in template) != (shape is not None):
            continue
        if "{background}" not in template and background != "plain":
            continue  # without a background word the background is plain
        for c in words_for(color) if color else ("",):
            for s in words_for(shape) if shape else ("",):
                prompts.append(fill(template, c, s, background))
    return prompts


def wordings(prompt: str) -> list[str]:
    """Every way the grammar says what `prompt` asks for, itself included when it is one of them;
    [] when it names no shape and no colour."""
    spec = parse_prompt(prompt)
    if spec.color is None and spec.shape is None:
        return []
    return all_prompts(spec.color, spec.shape, spec.background)


# Every word a training prompt can hold: the templates' own words, "an", and each colour, shape and background
# with its synonyms. The model never saw any other word, so what it draws for one is arbitrary.
VOCABULARY = frozenset(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", " ".join(TEMPLATES + PARTIAL_TEMPLATES)))
                       ) | {"an"} | frozenset(_CANONICAL)


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` (runs of letters or digits, and of symbols such as emoji; common punctuation aside)
    that no training prompt holds, lowercased, each once, in order."""
    words = re.findall(r"\w+|[^\w\s,.'\"!?;:()\-]+", prompt.lower())
    return list(dict.fromkeys(word for word in words if word not in VOCABULARY))


def meant(word: str) -> str | None:
    """The colour, shape or background (or synonym) that a word the model never trained on most likely means: the
    singular of a plural ("circles", "boxes"), or a spelling one letter away ("cirlce", "purpel", "yelow"; two for
    8 letters or more); None if none is that close ("playing" is no "plain")."""
    for end in ("es", "s"):
        if word.endswith(end) and word[: -len(end)] in _CANONICAL:
            return word[: -len(end)]
    if not 3 <= len(word) <= 40:
        return None
    allowed = 2 if len(word) >= 8 else 1
    close = [(_edits(word, known), known) for known in _CANONICAL if abs(len(known) - len(word)) <= 1]
    distance, known = min(close, default=(allowed + 1, None))
    return known if distance <= allowed else None


def _edits(a: str, b: str) -> int:
    """Letters inserted, deleted, replaced or swapped with their neighbour that turn `a` into `b`."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def said_unknown(words: list[str]) -> str:
    """Unknown words as a message lists them, each with what it likely means: "circles (circle?), zorb"; a word
    over 40 characters is cut."""
    return ", ".join(shorten(word, 40) + (f" ({hint}?)" if (hint := meant(word)) else "") for word in words)
