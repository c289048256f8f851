import random

import torch

from trust.shapes.detector import ConceptDetector
from trust.shapes.render import render
from trust.shapes.train_detector import random_scenes


def test_shipped_detector_reads_fresh_renders(shapes_model):
    # Renders the detector never saw (another seed), every attribute scored on its own.
    scenes = random_scenes(random.Random(12345), 600)
    images = render(scenes, generator=torch.Generator().manual_seed(12345))
    verdicts = shapes_model.detector.detect(images)
    for attribute in ("color", "shape", "background"):
        accuracy = sum(getattr(v, attribute) == getattr(s, attribute) for v, s in zip(verdicts, scenes)) / len(scenes)
        assert accuracy >= 0.99, f"{attribute} accuracy {accuracy:.3f}"
    assert min(v.confidence for v in verdicts) > 0.0
    assert sum(v.confidence > 0.9 for v in verdicts) / len(verdicts) > 0.95


def test_detector_verdicts_are_canonical_names():
    verdicts = ConceptDetector().detect(torch.rand(3, 3, 64, 64))  # any size is resized to 32 x 32
    assert len(verdicts) == 3
    assert all(v.color in ("red", "green", "blue", "yellow", "purple", "orange", "none") for v in verdicts)
    assert all(0 < v.confidence <= 1 for v in verdicts)


def test_a_flat_or_broken_image_shows_no_shape(shapes_model):
    # a broken model's samples (one colour, or NaN) are not scored as whatever the network guesses for them
    scenes = random_scenes(random.Random(7), 4)
    images = render(scenes, generator=torch.Generator().manual_seed(7))
    images[0] = 0.0  # black, as a model whose weights blew up draws
    images[1] = torch.tensor([0.8, 0.1, 0.1])[:, None, None]  # one flat colour
    images[2, :, 3, 3] = float("nan")
    verdicts = shapes_model.detector.detect(images)
    assert [(v.color, v.shape) for v in verdicts[:3]] == [("none", "none")] * 3
    assert (verdicts[3].color, verdicts[3].shape) == (scenes[3].color, scenes[3].shape)  # a real render is read
