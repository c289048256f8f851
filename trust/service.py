"""The model behind the web app: loaded once, on first use, and touched under a lock."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .attention import CrossAttentionRecorder
from .generation import generate
from .models import DiffusionModel, load_model
from .visualize import overlay, to_uint8


@dataclass(frozen=True)
class GenerationPanels:
    images: list[tuple[np.ndarray, str]]  # (picture, caption) per generated image
    heat_maps: list[tuple[np.ndarray, str]]  # (overlay, token) per token of the prompt, first image
    verdicts: list[str]  # the detector's reading of each image, where the model has a detector


class ModelService:
    """Holds one model for every user of a server; the recorder hooks it, so one call at a time."""

    def __init__(self, name: str = "shapes", device: str = "cpu"):
        self.name, self.device = name, device
        self._model: DiffusionModel | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> DiffusionModel:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.name, device=self.device)
            return self._model

    def generate_panels(self, prompt: str, num_images: int, seed: int, num_inference_steps: int | None = None,
                        size: int = 192) -> GenerationPanels:
        model = self.model
        with self._lock, CrossAttentionRecorder(model.unet) as recorder:
            out = generate(model, prompt, num_images_per_prompt=num_images, seed=seed,
                           num_inference_steps=num_inference_steps, recorder=recorder)
        maps = recorder.heat_maps()
        tokens = model.tokens(prompt)
        word_idx = list(range(1, len(tokens) - 1))
        verdicts = []
        if model.detector is not None:
            verdicts = [f"{v.color} {v.shape}, {v.background} ({v.confidence:.0%})"
                        for v in model.detector.detect(out.images)]
        images = [(to_uint8(image, size), f"seed {seed_}" + (f": {verdicts[i]}" if verdicts else ""))
                  for i, (image, seed_) in enumerate(zip(out.images, out.seeds))]
        heat = maps.token_maps(0, word_idx) if word_idx else []
        heat_maps = [(overlay(out.images[0], h, size), tokens[i]) for i, h in zip(word_idx, heat)]
        return GenerationPanels(images=images, heat_maps=heat_maps, verdicts=verdicts)
