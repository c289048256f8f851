"""The models behind the web app: loaded once, on first use, and touched under a lock.

    service = ModelService("shapes")
    service.model                          # the model jobs erase from (its UNet is the job's while one runs)
    service.try_prompt("a red circle")     # original and erased model side by side, with heat maps
    service.set_erased(result.unet, "run 1 (trust)")
    service.reset()                        # back to the original model

The recorder hooks the UNet it records, so the service generates from its own copy of
the original UNet and from the erased UNet, never from the model's UNet that a running
job reads: every generation holds the service lock.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from .attention import CrossAttentionRecorder
from .generation import generate
from .models import DiffusionModel, ModelLoadError, is_local_model, load_model, looks_like_path
from .shapes.world import NONE
from .visualize import overlay, to_uint8

ORIGINALS_KEPT = 16  # Try a prompt results of the original model kept (about 1 MB each)


@dataclass(frozen=True)
class GenerationPanels:
    images: list[tuple[np.ndarray, str]]  # (picture, caption) per generated image
    heat_maps: list[tuple[np.ndarray, str]]  # (overlay, token) per token of the prompt, first image
    verdicts: list[str]  # the detector's reading of each image, where the model has a detector
    model: str = ""  # which erased model drew them ("run 3"), for the erased side


def describe_verdicts(model: DiffusionModel, images: torch.Tensor) -> list[str]:
    """The detector's reading of each image (N, 3, H, W), in words ("no shape" where nothing is drawn)."""
    return [f"{' '.join(w for w in (v.color, v.shape) if w != NONE) or 'no shape'}, {v.background} "
            f"({v.confidence:.0%})" for v in model.detector.detect(images)]


def generation_panels(model: DiffusionModel, prompt: str, num_images: int, seed: int,
                      num_inference_steps: int | None = None, size: int = 192) -> GenerationPanels:
    """Generate with cross-attention recorded; the caller owns `model.unet` (it gets hooked)."""
    with CrossAttentionRecorder(model.unet) as recorder:
        out = generate(model, prompt, num_images_per_prompt=num_images, seed=seed,
                       num_inference_steps=num_inference_steps, recorder=recorder)
    maps = recorder.heat_maps()
    tokens = model.tokens(prompt)
    word_idx = list(range(1, len(tokens) - 1))
    verdicts = describe_verdicts(model, out.images) if model.detector is not None else []
    images = [(to_uint8(image, size), f"seed {seed_}" + (f": {verdicts[i]}" if verdicts else ""))
              for i, (image, seed_) in enumerate(zip(out.images, out.seeds))]
    heat = maps.token_maps(0, word_idx) if word_idx else []
    heat_maps = [(overlay(out.images[0], h, size), tokens[i]) for i, h in zip(word_idx, heat)]
    return GenerationPanels(images=images, heat_maps=heat_maps, verdicts=verdicts)


class ModelService:
    """Holds one model for every user of a server, a copy of its UNet to show, and the erased UNet."""

    def __init__(self, name: str = "shapes", device: str | None = None, model_dirs: tuple[str | Path, ...] = ()):
        """`model_dirs`: the folders whose model folders `load` may open (the one the server started with is
        one of them); the page's users name models, so any other path on the server is refused."""
        self.name = name
        self.model_dirs = tuple(Path(d).expanduser().resolve() for d in model_dirs)
        if is_local_model(name):
            self.model_dirs += (Path(name).expanduser().resolve(),)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model: DiffusionModel | None = None
        self._shown: UNet2DConditionModel | None = None  # the original UNet, as generated from here
        self._erased: UNet2DConditionModel | None = None
        self._erased_label = ""
        self._originals: OrderedDict[tuple, GenerationPanels] = OrderedDict()  # the original UNet's, newest last
        self._lock = threading.Lock()

    @property
    def model(self) -> DiffusionModel:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.name, device=self.device)
                self._shown = copy.deepcopy(self._model.unet)
            return self._model

    def load_in_background(self) -> None:
        """Start loading now, in a thread, so that the first page does not wait for it."""
        threading.Thread(target=lambda: self.model, daemon=True, name="trust-load").start()

    def load(self, name: str) -> DiffusionModel:
        """Switch to another model (shapes, a hub id, an SD 1.x folder in `model_dirs`); on failure keep the
        current one."""
        # A path is read only inside `model_dirs`; any other name is 'shapes' or a hub id, decided without looking
        # at the disk, so that the answer never tells whether some other path exists on the server
        name = name.strip()
        folder = self._named_folder(name) or (Path(name).expanduser().resolve() if name not in ("", "shapes")
                                              else None)
        inside = folder is not None and any(folder.is_relative_to(d) for d in self.model_dirs)
        if not inside and looks_like_path(name):  # (their names, not where they are on the server's disk)
            held = ", ".join(self.local_models()) or "none"
            raise ModelLoadError(f"this server loads local model folders only from its model folders (which hold: "
                                 f"{held}; whoever runs it sets them with TRUST_MODEL_DIRS); type one of those names, "
                                 "'shapes' or a hub id")
        try:
            model = load_model(folder if inside else name, device=self.device,  # ModelLoadError with the reason
                               local_folders=inside)
        except ModelLoadError as err:
            if inside or not (held := self.local_models()):
                raise
            raise ModelLoadError(f"{err}; this server's model folders hold {', '.join(held)} (type one of those "
                                 "names)") from None
        shown = copy.deepcopy(model.unet)
        with self._lock:
            self.name, self._model, self._shown = name, model, shown
            self._erased, self._erased_label = None, ""
            self._originals.clear()
        return model

    def _named_folder(self, name: str) -> Path | None:
        """The folder `name` names inside one of the model folders ('sd15' for MODEL_DIR/sd15), or None: the page's
        users type what the model folders hold, not where they are. A name read this way never leaves them."""
        if name in ("", "shapes") or looks_like_path(name):
            return None
        for root in self.model_dirs:
            folder = (root / name).resolve()
            if folder != root and folder.is_relative_to(root) and folder.is_dir():
                return folder
        return None

    def local_models(self, limit: int = 12) -> list[str]:
        """The names `load` takes for the model folders' models (diffusers folders, with model_index.json): the
        folders in each of them, or its path where it is a model itself (the one the server started with)."""
        names: list[str] = []
        for root in self.model_dirs:
            if (root / "model_index.json").is_file():
                names.append(str(root))
            elif root.is_dir():
                names += sorted(c.name for c in root.iterdir() if (c / "model_index.json").is_file())
        return list(dict.fromkeys(names))[:limit]

    @property
    def erased_label(self) -> str:
        """Which run the erased model comes from ('' when there is none)."""
        return self._erased_label

    def set_erased(self, unet: UNet2DConditionModel, label: str) -> None:
        with self._lock:
            self._erased, self._erased_label = unet, label

    def reset(self) -> None:
        """Back to the original model: Try a prompt shows no erased model until the next run."""
        with self._lock:
            self._erased, self._erased_label = None, ""

    def try_prompt(self, prompt: str, num_images: int = 4, seed: int = 0, num_inference_steps: int | None = None,
                   ) -> tuple[GenerationPanels, GenerationPanels | None]:
        """The original and the erased model on the same prompt and seeds (None: no erased model yet).

        The original model never changes, so its panels are kept: a prompt tried before and after an erase
        is generated once by the original model.
        """
        model = self.model
        key = (prompt, num_images, seed, num_inference_steps)
        with self._lock:
            original = self._originals.pop(key, None)
            if original is None:
                original = generation_panels(dataclasses.replace(model, unet=self._shown), prompt, num_images, seed,
                                             num_inference_steps)
            self._originals[key] = original
            if len(self._originals) > ORIGINALS_KEPT:
                self._originals.popitem(last=False)
            erased = None
            if self._erased is not None:
                erased = dataclasses.replace(generation_panels(dataclasses.replace(model, unet=self._erased), prompt,
                                                               num_images, seed, num_inference_steps),
                                             model=self._erased_label)
        return original, erased
