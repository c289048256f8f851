"""What is erased, and how "the concept is present" is decided from a detector's verdict.

A concept is a set of required attributes. It is present in an image only when
every required attribute is seen:
- individual:  {"color": "red"}                          any red shape
- combination: {"color": "red", "shape": "circle"}       red AND circle, not red alone or circle alone
- conditional: {"shape": "circle", "background": "striped"}  a circle IN that context only
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass, field

from .errors import TrustError, shorten
from .shapes.detector import Verdict
from .shapes.world import BACKGROUNDS, COLORS, SHAPES, Scene, all_prompts, named_words, parse_prompt

_VALUES = {"color": COLORS, "shape": SHAPES, "background": BACKGROUNDS}
TEXT = "text"  # a concept named only by words (real models): no ShapesWorld detector can see it


@dataclass(frozen=True)
class Concept:
    """Required attributes, e.g. (("color", "red"), ("shape", "circle"))."""

    attributes: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ValueError("a concept needs at least one attribute (colour, shape or background)")
        for key, value in self.attributes:
            if key == TEXT and value.strip():
                continue
            if key not in _VALUES or value not in _VALUES[key]:
                raise ValueError(f"unknown concept attribute {key}={value!r}; expected colour in {COLORS}, "
                                 f"shape in {SHAPES} or background in {BACKGROUNDS}")

    @property
    def kind(self) -> str:
        keys = {key for key, _ in self.attributes}
        if len(keys) == 1:
            return "individual"
        return "conditional" if "background" in keys else "combination"

    @property
    def detectable(self) -> bool:
        """Whether the ShapesWorld detector can decide this concept."""
        return all(key != TEXT for key, _ in self.attributes)

    def present(self, verdict: Verdict) -> bool:
        if not self.detectable:
            raise TrustError(f"the concept {self.describe()!r} is not one ShapesWorld scene (name a colour, a "
                             "shape or a background, at most one of each), so its detector cannot see it")
        return all(getattr(verdict, key) == value for key, value in self.attributes)

    def describe(self) -> str:
        return " + ".join(f"{key}={value}" for key, value in self.attributes)

    @classmethod
    def from_prompt(cls, prompt: str) -> Concept:
        """The attributes a prompt names (a background only when named); else the prompt's words.

        A prompt that names two colours, two shapes or two backgrounds ("a red circle and a blue
        square") is not one ShapesWorld scene, so its concept is its words too.
        """
        named = set(named_words(prompt))
        if any(len(named & set(values)) > 1 for values in _VALUES.values()):
            return cls(((TEXT, prompt.strip()),))
        spec = parse_prompt(prompt)
        attributes = [("color", spec.color), ("shape", spec.shape)]
        if named & set(BACKGROUNDS):  # a background word (or its synonym) said as a word, not inside one ("explained")
            attributes.append(("background", spec.background))
        named = tuple((k, v) for k, v in attributes if v is not None)
        return cls(named or ((TEXT, prompt.strip()),))


def generated_right(prompt: str, verdict: Verdict) -> bool:
    """Does a sample show what its prompt asks for? (what IRA and CRA count)"""
    spec = parse_prompt(prompt)
    return ((spec.color is None or verdict.color == spec.color)
            and (spec.shape is None or verdict.shape == spec.shape)
            and verdict.background == spec.background)


@dataclass(frozen=True)
class Scenario:
    """A concept to erase with the prompts that train and measure it."""

    name: str
    concept: Concept
    targets: tuple[str, ...]  # c_f: prompts whose images are unlearned
    neighbours: tuple[str, ...]  # c_r: close prompts that must survive (IRA)
    unrelated: tuple[str, ...]  # far prompts that must survive (CRA)
    anchor: str = ""  # c_a: what the target should look like instead
    paraphrases: tuple[str, ...] = field(default=())  # other wordings of the target, counted in UA
    anchors: tuple[str, ...] = field(default=())  # c_a of each target where they differ (empty: `anchor` for all)

    def __post_init__(self) -> None:
        if not self.targets or any(not t.strip() for t in self.targets):
            raise ValueError("the target prompt must not be empty")
        for role, prompts in (("neighbour", self.neighbours), ("unrelated", self.unrelated)):
            if any(not p.strip() for p in prompts):
                raise ValueError(f"an empty {role} prompt: give a prompt to keep, or leave it out")
        if self.anchors and len(self.anchors) != len(self.targets):
            raise ValueError(f"give one anchor for every target ({len(self.targets)}), or one for all; "
                             f"got {len(self.anchors)}")
        for target, anchor in zip(self.targets, self.target_anchors):
            if _same(target, anchor):
                raise ValueError(f"the target {shorten(target)!r} equals the anchor {shorten(anchor)!r}; the anchor "
                                 "is what the target becomes, so it must differ")
        for neighbour in self.neighbours:
            if any(_same(neighbour, target) for target in self.targets):
                raise ValueError(f"neighbour {shorten(neighbour)!r} is also a target; a neighbour is what must be kept")

    @property
    def target_anchors(self) -> tuple[str, ...]:
        """The anchor of each target prompt, in order."""
        return self.anchors or (self.anchor,) * len(self.targets)

    @property
    def ua_prompts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.targets + self.paraphrases))


def one_space(prompt: str) -> str:
    """A prompt with one space between its words and none around them (all a tokenizer reads of its spacing)."""
    return " ".join(prompt.split())


def _same(a: str, b: str) -> bool:
    """The same prompt, whatever the case and spacing."""
    return one_space(a.lower()) == one_space(b.lower())


def check_scenario(scenario: Scenario) -> None:
    """Raise a ValueError saying why, when a ShapesWorld detector could not measure `scenario` as meant.

    Every target shows the concept and no anchor does; every neighbour and unrelated prompt is one
    scene of the world (its colour, shape and background, at most one of each) without the concept,
    so that IRA and CRA count what must be kept. Other models' prompts are not checked.
    """
    concept = scenario.concept
    if not concept.detectable:
        return
    for target in scenario.targets:  # every target names the one concept (UA measures that concept)
        if not concept.present(parse_prompt(target)):
            raise ValueError(f"target {shorten(target)!r} does not show the concept being erased "
                             f"({concept.describe()}, from {shorten(scenario.targets[0])!r}); "
                             "give prompts of one concept, one per line")
    for target, anchor in zip(scenario.targets, scenario.target_anchors):  # the anchor is what it becomes
        if anchor.strip() and concept.present(parse_prompt(anchor)):
            raise ValueError(f"anchor {shorten(anchor)!r} shows the concept being erased ({concept.describe()}); "
                             f"the anchor is what {shorten(target)!r} becomes, so it must not")
    for role, prompts in (("neighbour", scenario.neighbours), ("unrelated prompt", scenario.unrelated)):
        for prompt in prompts:
            if not Concept.from_prompt(prompt).detectable:
                raise ValueError(f"{role} {shorten(prompt)!r} is not one scene of this world (it names no colour, "
                                 "shape or background, or two of a kind), so the detector cannot tell whether it is "
                                 "kept")
            if concept.present(parse_prompt(prompt)):  # IRA and CRA would count the concept as kept
                raise ValueError(f"{role} {shorten(prompt)!r} shows the concept being erased ({concept.describe()}); "
                                 f"{role}s are what must be kept")


_WORD = {"color": "colour", "shape": "shape", "background": "background"}


def left_open(concept: Concept, prompt: str) -> tuple[str, ...]:
    """The attributes of `concept` that `prompt` does not name, where it names the rest as the concept has them
    ("a red shape" leaves the shape of red + circle open): the model may draw the concept for it. () where it names
    another value of one of them, or all of them (then it shows the concept). A background unnamed is plain."""
    spec = parse_prompt(prompt)
    named = {"color": spec.color, "shape": spec.shape, "background": spec.background}
    if not concept.detectable or any(named[k] not in (None, v) for k, v in concept.attributes):
        return ()
    return tuple(k for k, v in concept.attributes if named[k] is None)


def open_prompt_warnings(scenario: Scenario) -> list[str]:
    """Warnings for an anchor or neighbour that may show the concept (`left_open`): legal, and rarely meant."""
    said = []
    prompts = [("anchor", a) for a in dict.fromkeys(a for a in scenario.target_anchors if a.strip())]
    for role, prompt in prompts + [("neighbour", n) for n in scenario.neighbours]:
        if not (open_ := left_open(scenario.concept, prompt)):
            continue
        them = "it" if len(open_) == 1 else "them"
        why = ("the erasure has little to push away from: an anchor that names " + them + " erases (see the README)"
               if role == "anchor" else f"keeping it keeps the target too: name {them}")
        said.append(f"the {role} {shorten(prompt)!r} leaves the {' and '.join(_WORD[k] for k in open_)} open, so the "
                    f"model may draw the target ({scenario.concept.describe()}) for it, and {why}")
    return said


def _paraphrases(concept: Concept, shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = COLORS) -> tuple:
    attrs = dict(concept.attributes)
    if not concept.detectable:
        return ()
    prompts: list[str] = []
    for color in [attrs["color"]] if "color" in attrs else colors[:2]:
        for shape in [attrs["shape"]] if "shape" in attrs else shapes:
            prompts += all_prompts(color, shape, attrs.get("background", "plain"))
    return tuple(prompts)


# Which of a concept's attributes its anchor changes: the colour if it has one, else the background
# (the object stays, its context goes), else the shape
_ANCHOR_ORDER = ("color", "background", "shape")


def concept_anchor(prompt: str, concept: Concept) -> str:
    """What a target prompt becomes: the scene it names with one attribute of the concept replaced.

    The colour goes to the next one of the world's colours ("a red circle" -> "a green circle"),
    the background to plain (a plain one to striped), the shape to the next shape; the rest of the scene is kept, so the
    negative guidance of L_u points from the concept to a scene that differs from it in that one
    attribute. "" (the empty prompt) for a concept the world cannot name.
    """
    if not concept.detectable:
        return ""
    spec = parse_prompt(prompt)
    scene = {"color": spec.color, "shape": spec.shape, "background": spec.background}
    required = dict(concept.attributes)
    key = next(k for k in _ANCHOR_ORDER if k in required)
    values = _VALUES[key]
    if key == "background":  # to plain, or off it: a plain one's anchor is striped (its own scene would not move)
        scene[key] = "plain" if required[key] != "plain" else "striped"
    else:
        scene[key] = values[(values.index(required[key]) + 1) % len(values)]
    if not (scene["color"] or scene["shape"]):
        return ""
    wordings = all_prompts(scene["color"], scene["shape"], scene["background"])
    if "background" in required and key != "background":  # a plain one kept is said, as the neighbours say it
        return next(w for w in wordings if "background" in w)  # ("a green star on a plain background")
    return wordings[0]  # the plainest wording


MAX_DERIVED_NEIGHBOURS = 4


def concept_neighbours(targets: tuple[str, ...], concept: Concept) -> tuple[str, ...]:
    """Close prompts to keep for a typed target: each target's scene with one attribute of the concept changed,
    once per attribute, so that the concept is gone and the rest of the scene stays (at most 4).

    "a red circle" -> "a blue circle", "a red square" (the combination preset's); "a circle on a striped
    background" -> "a square on a striped background", "a circle on a plain background" (the conditional
    preset's). A colour or shape goes to the value after the one its anchor takes, a background to plain
    (for a plain one: striped, or dotted where its anchor is striped); () for a concept the world cannot name.
    """
    if not concept.detectable:
        return ()
    required = dict(concept.attributes)
    anchor_key = next(k for k in _ANCHOR_ORDER if k in required)
    found: list[str] = []
    for prompt in targets:
        spec = parse_prompt(prompt)
        for key in ("shape", "color", "background"):
            if key not in required:
                continue
            scene = {"color": spec.color, "shape": spec.shape, "background": spec.background}
            values = _VALUES[key]
            if key == "background":  # (a plain one's anchor is striped: its neighbour is dotted, not the anchor)
                scene[key] = "plain" if required[key] != "plain" else "dotted" if key == anchor_key else "striped"
            else:
                scene[key] = values[(values.index(required[key]) + (2 if key == anchor_key else 1)) % len(values)]
            wordings = all_prompts(scene["color"], scene["shape"], scene["background"])
            if not wordings:
                continue
            # the background said outright where the concept has one ("on a plain background", not "a circle")
            neighbour = next((w for w in wordings if "background" in w), wordings[0]) if "background" in required \
                else wordings[0]
            if not any(_same(neighbour, p) for p in (*targets, *found)):
                found.append(neighbour)
    return tuple(found[:MAX_DERIVED_NEIGHBOURS])


def concept_anchors(targets: tuple[str, ...], concept: Concept) -> tuple[str, ...]:
    """`concept_anchor` of each target; () when every one is the empty prompt (a concept of words)."""
    anchors = tuple(concept_anchor(t, concept) for t in targets)
    return anchors if any(anchors) else ()


def with_anchors(scenario: Scenario, anchors: tuple[str, ...]) -> Scenario:
    """`scenario` with one anchor for every target (one given) or one per target (one each)."""
    if len(anchors) == 1:
        return dataclasses.replace(scenario, anchor=anchors[0], anchors=())
    return dataclasses.replace(scenario, anchor="", anchors=tuple(anchors))


def _preset(name: str, concept: Concept, targets, neighbours, unrelated) -> Scenario:
    return Scenario(name=name, concept=concept, targets=tuple(targets), neighbours=tuple(neighbours),
                    unrelated=tuple(unrelated), paraphrases=_paraphrases(concept),
                    anchors=concept_anchors(tuple(targets), concept))


UNRELATED = ("a green triangle", "a yellow star on a dotted background", "a purple square", "a blue star")
# Stand-ins, in order, for the UNRELATED prompts that a custom target's concept or prompts take
_SPARE_UNRELATED = ("an orange circle on a striped background", "a red square", "a green circle",
                    "a purple triangle on a dotted background", "a blue square", "a yellow circle")

STOCK_UNRELATED = frozenset(UNRELATED + _SPARE_UNRELATED)  # what a custom target gets unless given its own

PRESETS: dict[str, Scenario] = {
    "red": _preset(
        "red", Concept((("color", "red"),)),
        targets=["a red circle", "a red square", "a red triangle", "a red star"],
        neighbours=["an orange circle", "a purple square", "a blue triangle", "a green star"],
        unrelated=["a yellow square on a dotted background", "a green circle", "a blue square on a striped "
                   "background", "a yellow triangle"]),
    "triangle": _preset(
        "triangle", Concept((("shape", "triangle"),)),
        targets=["a red triangle", "a blue triangle", "a yellow triangle", "a green triangle"],
        neighbours=["a red star", "a blue square", "a yellow circle", "a green star"],
        unrelated=["a purple circle on a dotted background", "an orange square", "a blue circle on a striped "
                   "background", "a red square"]),
    "combination": _preset(
        "combination", Concept((("color", "red"), ("shape", "circle"))),
        targets=["a red circle"],
        neighbours=["a red square", "a blue circle"],
        unrelated=UNRELATED),
    "conditional": _preset(
        "conditional", Concept((("shape", "circle"), ("background", "striped"))),
        targets=["a circle on a striped background"],
        neighbours=["a circle on a plain background", "a square on a striped background"],
        unrelated=UNRELATED),
}
PRESETS["individual"] = PRESETS["red"]


def common_concept(targets: tuple[str, ...]) -> Concept:
    """The concept that every target prompt names: the attributes they share ("a red circle" and
    "a red star": red). Targets of words only (another model's) make a concept of all their words, as do
    targets that share nothing (not one ShapesWorld can erase)."""
    concepts = [Concept.from_prompt(t) for t in targets]
    shared = tuple(a for a in concepts[0].attributes if all(a in c.attributes for c in concepts[1:])) if all(
        c.detectable for c in concepts) else ()
    return Concept(shared or ((TEXT, " / ".join(targets)),))  # words (ShapesWorld refuses those that share nothing)


def scenario_from_prompts(target: str | None, neighbours: list[str] | None, anchor: str | None = None,
                          unrelated: list[str] | None = None, preset: str | None = None,
                          more_targets: tuple[str, ...] = ()) -> Scenario:
    """A scenario for any target; a preset fills what is not given (target None: the preset's targets;
    neighbours None: the preset's, [] none).

    `anchor` None: each target's `concept_anchor` (the empty prompt for a concept the world cannot name);
    a string, that anchor for every target. `more_targets` are other prompts of the concept `target` names.
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    for name, value in (("neighbours", neighbours), ("unrelated", unrelated)):
        if isinstance(value, str):  # (a string is a sequence of one-letter prompts)
            raise ValueError(f"give {name} as a list of prompts, got the string {value!r}")
    if target is not None and not isinstance(target, str):  # (a list: the first, and the rest as more_targets)
        raise ValueError(f"give the target as one prompt (a string), got {type(target).__name__}; more prompts of "
                         "the same concept go in more_targets")
    base = PRESETS[preset] if preset else None
    if isinstance(anchor, str):  # (blank is the empty prompt, as "" is)
        anchor = anchor.strip()
    if target is None and base is None:
        raise ValueError("give a target prompt or a preset")
    if target is None:
        targets, concept = base.targets, base.concept
    else:
        target = one_space(target)  # (spaces inside a prompt change nothing a tokenizer reads: one each)
        if not target:
            raise ValueError("the target prompt must not be empty")
        targets = (target, *(one_space(t) for t in more_targets if t.strip()))
        concept = base.concept if base and base.targets == targets else common_concept(targets)
    neighbours = tuple(map(one_space, neighbours)) if neighbours is not None else (base.neighbours if base else ())
    for role, prompts in (("target", targets), ("neighbour", neighbours)):
        repeated = next((p for i, p in enumerate(prompts)
                         if p.strip() and any(_same(p, q) for q in prompts[:i])), None)
        if repeated is not None:
            raise ValueError(f"the {role} {shorten(repeated.strip())!r} is given twice; give each prompt once")
    if not unrelated:
        unrelated = default_unrelated(concept, targets + neighbours, base.unrelated if base else UNRELATED)
    return Scenario(
        name=base.name if base else "custom", concept=concept, targets=targets,
        neighbours=neighbours, unrelated=tuple(unrelated),
        anchor=anchor or "", anchors=concept_anchors(targets, concept) if anchor is None else (),
        paraphrases=_paraphrases(concept))


def default_unrelated(concept: Concept, taken: tuple[str, ...], prompts: tuple[str, ...]) -> tuple[str, ...]:
    """`prompts`, less those that show `concept` or are among `taken`, topped up from spare scenes."""
    if not concept.detectable:
        return prompts
    scenes = {parse_prompt(p) for p in taken}

    def free(prompt: str) -> bool:
        spec = parse_prompt(prompt)
        return not concept.present(spec) and spec not in scenes

    kept = [p for p in prompts if free(p)]
    spare = [p for p in _SPARE_UNRELATED if free(p) and p not in kept]
    return tuple(kept + spare[:len(prompts) - len(kept)])


def retain_prompts(scenario: Scenario, k: int) -> tuple[str, ...]:
    """Up to k ShapesWorld scenes without the concept, worded plainly, for preservation to keep too.

    None is a scene the scenario measures (its targets, neighbours or unrelated prompts), so CRA
    stays measured on scenes no method trained on. The scenes are a fixed shuffle of the world,
    so they spread over colours, shapes and backgrounds.
    """
    if k <= 0 or not scenario.concept.detectable:
        return ()
    measured = [parse_prompt(p) for p in scenario.targets + scenario.neighbours + scenario.unrelated]

    def is_measured(color: str, shape: str, background: str) -> bool:
        return any(m.color in (None, color) and m.shape in (None, shape) and m.background == background
                   for m in measured)

    scenes = list(itertools.product(COLORS, SHAPES, BACKGROUNDS))
    random.Random(0).shuffle(scenes)
    chosen = [scene for scene in scenes
              if not scenario.concept.present(Scene(*scene)) and not is_measured(*scene)][:k]
    return tuple(all_prompts(color, shape, bg)[0] for color, shape, bg in chosen)  # the plainest wording
