import random

import pytest
import torch

from trust.shapes.render import render
from trust.shapes.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SYNONYMS,
    VOCABULARY,
    Scene,
    all_prompts,
    fix_articles,
    parse_prompt,
    said_unknown,
    sample_prompt,
    unknown_words,
    wordings,
)


def test_articles_follow_the_sound_of_the_next_word():
    assert fix_articles("a orange star") == "an orange star"
    assert fix_articles("a amber disc on a dotted background") == "an amber disc on a dotted background"
    assert fix_articles("a red circle") == "a red circle"


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a crimson disc", ("red", "circle", "plain")),
    ("an amber pentagram on a dotted background", ("orange", "star", "dotted")),
    ("a box that is navy", ("blue", "square", "plain")),
    ("emerald wedge, striped background", ("green", "triangle", "striped")),
    ("a circle on a striped background", (None, "circle", "striped")),
    ("a dog riding a bicycle", (None, None, "plain")),
    ("", (None, None, "plain")),
])
def test_parse_prompt_reads_canonical_attributes(prompt, expected):
    spec = parse_prompt(prompt)
    assert (spec.color, spec.shape, spec.background) == expected


def test_sampled_prompts_describe_their_scene_and_cover_the_grammar():
    rng = random.Random(0)
    seen_words, seen_articles = set(), set()
    for _ in range(3000):
        prompt, scene = sample_prompt(rng)
        spec = parse_prompt(prompt)
        assert spec.background == scene.background
        assert spec.color in (None, scene.color) and spec.shape in (None, scene.shape)
        words = prompt.replace(",", "").split()
        seen_words.update(words)
        seen_articles.add(words[0] if words[0] in ("a", "an") else "-")
    every_word = set(COLORS + SHAPES + BACKGROUNDS) | {s for syns in SYNONYMS.values() for s in syns}
    assert every_word <= seen_words
    assert {"a", "an", "-"} <= seen_articles
    assert seen_words == VOCABULARY  # what unknown_words calls known is exactly what training prompts say
    assert unknown_words("A Crimson DISC, on a striped background!") == []
    # what an unknown word likely means, as messages say it: plurals, typos; nothing for a word far from all
    assert said_unknown(unknown_words("two red circles, boxes, a purpel cirlce unicorn " + "x" * 50)) == (
        "two, circles (circle?), boxes (box?), purpel (purple?), cirlce (circle?), unicorn, " + "x" * 39 + "…")
    assert unknown_words("two red circles, 2 of them 🎉 日本語 circles") == ["two", "circles", "2", "of", "them", "🎉",
                                                                      "日本語"]


def test_all_prompts_lists_every_template_and_synonym():
    prompts = all_prompts("red", "circle")
    assert "a scarlet disc" in prompts and "a disc that is crimson" in prompts
    assert len(prompts) == 2 * 3 * 2 * 2  # templates without background x colour words x shape words
    assert all(parse_prompt(p).background == "striped" for p in all_prompts("blue", "star", "striped"))


def test_wordings_say_the_same_scene_every_way():
    said = wordings("a circle on a plain background")
    assert said == ["a circle", "a disc", "a circle on a plain background", "a disc on a plain background"]
    assert all(parse_prompt(p) == parse_prompt("a crimson box") for p in wordings("a crimson box"))
    assert len(wordings("a red square")) == len(all_prompts("red", "square"))  # no partial template fits
    assert wordings("a square on a striped background") == ["a square on a striped background",
                                                            "a box on a striped background"]
    assert wordings("an azure pentagram")[0] == "a blue star" and wordings("a dog") == []


def test_render_draws_the_scene():
    generator = torch.Generator().manual_seed(0)
    images = render([Scene("red", "circle", "plain"), Scene("blue", "square", "striped")], generator=generator)
    assert images.shape == (2, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1
    centre = images[:, :, 14:18, 14:18].mean(dim=(2, 3))
    assert centre[0, 0] > 0.8 and centre[0, 2] < 0.2  # a red centre
    assert centre[1, 2] > 0.8 and centre[1, 0] < 0.2  # a blue centre
    corners = images[1, :, :, :3].mean(0)  # stripes alternate down the left edge
    assert corners.max() - corners.min() > 0.3
