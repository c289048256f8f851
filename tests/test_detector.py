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
