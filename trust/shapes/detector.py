"""The ShapesWorld concept detector: colour, shape and background of an image, with confidence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .world import BACKGROUNDS, COLORS, NONE, SHAPES

FLAT_STD = 0.01  # an image whose channels each vary less than this (std, in [0, 1]) is one flat colour
COLOR_CLASSES = (*COLORS, NONE)
SHAPE_CLASSES = (*SHAPES, NONE)
BACKGROUND_CLASSES = BACKGROUNDS


@dataclass(frozen=True)
class Verdict:
    color: str  # canonical colour, or "none" when no shape is seen
    shape: str  # canonical shape, or "none"
    background: str
    color_confidence: float  # softmax probability of the chosen class
    shape_confidence: float
    background_confidence: float

    @property
    def confidence(self) -> float:
        """The least sure of the three answers."""
        return min(self.color_confidence, self.shape_confidence, self.background_confidence)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.MaxPool2d(2),
    )


class ConceptDetector(nn.Module):
    """A small CNN with one head per attribute; input (N, 3, 32, 32) in [0, 1]."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.color_head = nn.Linear(4 * width, len(COLOR_CLASSES))
        self.shape_head = nn.Linear(4 * width, len(SHAPE_CLASSES))
        self.background_head = nn.Linear(4 * width, len(BACKGROUND_CLASSES))
        self.width = width

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.shape[-2:] != (32, 32):
            images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
        features = self.features(images * 2 - 1).mean(dim=(2, 3))  # (N, 4 * width)
        return self.color_head(features), self.shape_head(features), self.background_head(features)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[Verdict]:
        """Verdicts for images (N, 3, H, W) in [0, 1].

        An image of one flat colour (or with NaNs: a broken model's) shows no shape, whatever the network,
        which never saw one, would guess: colour and shape are "none" there.
        """
        param = next(self.parameters())
        images = images.to(param.device, param.dtype)
        flat = ~torch.isfinite(images).flatten(1).all(1)
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
        flat |= images.flatten(2).std(2).amax(1) < FLAT_STD  # every channel the same over the image
        logits = self(images)
        (pc, ic), (ps, is_), (pb, ib) = (torch.softmax(lg.float(), -1).max(-1) for lg in logits)
        return [
            Verdict(NONE, NONE, BACKGROUND_CLASSES[b], 1.0, 1.0, float(bp)) if no_shape else
            Verdict(COLOR_CLASSES[c], SHAPE_CLASSES[s], BACKGROUND_CLASSES[b], float(cp), float(sp), float(bp))
            for c, s, b, cp, sp, bp, no_shape in zip(ic.tolist(), is_.tolist(), ib.tolist(), pc, ps, pb,
                                                     flat.tolist())
        ]


def load_detector(folder: Path) -> ConceptDetector:
    """Load a detector written by `trust.shapes.train_detector` (config.json + model.safetensors)."""
    config = json.loads((folder / "config.json").read_text())
    detector = ConceptDetector(width=config["width"])
    detector.load_state_dict(load_file(folder / "model.safetensors"))
    return detector.eval().requires_grad_(False)
