"""One interface for every model: the embedded ShapesWorld model and Stable Diffusion 1.x.

    model = load_model("shapes")                       # embedded, the default
    model = load_model("/path/to/sd15-diffusers")      # a local folder in diffusers layout
    model = load_model("runwayml/stable-diffusion-v1-5")  # a hub id, where a hub is reachable
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from .errors import ModelLoadError, shorten
from .shapes.detector import ConceptDetector, load_detector
from .shapes.world import unknown_words

REPO_ROOT = Path(__file__).resolve().parent.parent
SHAPES_REBUILD = "python -m trust.shapes.train && python -m trust.shapes.train_detector"  # about an hour on 2 cores
DETECTOR_REBUILD = "python -m trust.shapes.train_detector"  # about 3 minutes
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors", "scheduler/*.json", "tokenizer/*"]


def prediction_target(scheduler: DDIMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """The UNet's regression target for the scheduler's `prediction_type`: ε, v (Salimans & Ho 2022) or x_0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ModelLoadError(f"unknown prediction_type {kind!r} in the scheduler config")


def shapes_dir() -> Path:
    """Where the embedded model lives: $TRUST_ASSETS/shapes, else the repo's assets/shapes."""
    root = os.environ.get("TRUST_ASSETS")
    return (Path(root) if root else REPO_ROOT / "assets") / "shapes"

_TOKENIZER_LOCK = threading.Lock()  # one tokenizer call at a time, across models and threads (see _tokenize)


@dataclass
class DiffusionModel:
    """The parts of a text-to-image latent or pixel diffusion model that TRuST works on."""

    name: str
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    vae: AutoencoderKL | None  # None: the UNet works in pixel space
    detector: ConceptDetector | None  # the exact concept detector, where the model has one
    image_size: int  # pixels per side of a generated image
    guidance_scale: float  # classifier-free guidance used by default
    num_inference_steps: int  # DDIM steps used by default
    folder: Path

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_size(self) -> int:
        return self.image_size // (2 ** (len(self.vae.config.block_out_channels) - 1)) if self.vae else self.image_size

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def max_tokens(self) -> int:
        return self.tokenizer.model_max_length

    def _tokenize(self, *args, **kwargs):
        # A fast tokenizer keeps its padding and truncation settings in one shared Rust object and sets them on
        # every call, so two threads at once (a job and a page request) can pad one's prompts by the other's
        # settings: an empty prompt came back 2 tokens long instead of 24 and a job failed at step 0
        with _TOKENIZER_LOCK:
            return self.tokenizer(*args, **kwargs)

    def num_tokens(self, prompt: str) -> int:
        """Tokens of a prompt before any cut, start and end tokens included."""
        return len(self._tokenize(prompt, verbose=False).input_ids)  # verbose: no note of the tokenizer's own

    def read_part(self, prompt: str) -> str:
        """The text of a prompt that the model reads: all of it, or its start where it is over max_tokens."""
        if self.num_tokens(prompt) <= self.max_tokens:
            return prompt
        ids = self._tokenize(prompt, truncation=True, max_length=self.max_tokens).input_ids
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (N, max_tokens); prompts that are too long are cut, with a warning."""
        for prompt in prompts:
            num_tokens = self.num_tokens(prompt)
            if num_tokens > self.max_tokens:
                warnings.warn(f"prompt {shorten(prompt)!r} has {num_tokens} tokens; the model reads {self.max_tokens}, "
                              "so the end was cut", stacklevel=3)
        return self._tokenize(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                              return_tensors="pt").input_ids

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (N, max_tokens, cross_attention_dim) for the UNet's cross-attention."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def prediction_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet should output for x_0 noised with `noise` to timesteps `t`."""
        return prediction_target(self.scheduler, x0, noise, t)

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text (under the same lock as tokenizing: the Rust tokenizer is one shared object)."""
        with _TOKENIZER_LOCK:
            return self.tokenizer.decode(ids)

    def unknown_words(self, *prompts: str) -> list[str]:
        """Words of the prompts the model never trained on, each once: a model with the ShapesWorld detector knows
        its grammar's words only (plurals, typos and other languages are none of them); other models say []."""
        if self.detector is None:
            return []
        return list(dict.fromkeys(word for prompt in prompts for word in unknown_words(prompt)))

    def tokens(self, prompt: str) -> list[str]:
        """Readable tokens of a prompt as the model sees them: start token, words, end token."""
        ids = self._tokenize(prompt, truncation=True, max_length=self.max_tokens).input_ids
        return readable_tokens(self.tokenizer, ids)


def readable_tokens(tokenizer, ids: list[int]) -> list[str]:
    """A label per token: its text, not the byte-level BPE's spelling of it ("ðŁĶ´" for part of "🔴"). A character
    spread over several tokens labels each of them with the whole and which part it is: "🔴 (1/2)", "🔴 (2/2)"."""
    pieces = tokenizer.convert_ids_to_tokens(ids)

    def text_of(start: int, end: int) -> str:  # (the end-of-word mark "</w>" is no part of the word)
        return tokenizer.convert_tokens_to_string(pieces[start:end]).replace("</w>", "").strip()

    labels, start = [], 0
    while start < len(pieces):
        end = start + 1
        text = text_of(start, end)
        while "\ufffd" in text and end < min(len(pieces), start + 8):  # (a UTF-8 character is 4 bytes at most)
            end += 1
            text = text_of(start, end)
        if "\ufffd" in text:  # no whole character within reach (a truncated prompt's last bytes): as it decodes
            end, text = start + 1, text_of(start, start + 1)
        n = end - start
        labels += [text if n == 1 else f"{text} ({k + 1}/{n})" for k in range(n)]
        start = end
    return labels


def looks_like_path(name: str) -> bool:
    """Whether a model name is written as a path (absolute, or from '.' or '~'), without looking at the disk."""
    return Path(name).expanduser().is_absolute() or name.startswith((".", "~"))


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a ModelLoadError naming what is wrong (an unknown name, no such GPU)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N (or mps on a Mac)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} asked for, but this machine has no CUDA GPU; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' asked for, but this machine has no Apple GPU; use cpu")
    if device.type == "meta":
        raise ModelLoadError("device 'meta' holds no weights; use cpu, cuda or cuda:N (or mps on a Mac)")
    if device.type not in ("cpu", "cuda", "mps"):  # xpu, vulkan, ...: usable only where this torch is built for it
        try:
            torch.empty(1, device=device)
        except Exception:
            raise ModelLoadError(f"device {str(device)!r} is not available to this torch build on this machine; "
                                 "use cpu or cuda") from None
    return device


def is_local_model(name_or_path: str | Path) -> bool:
    """Whether `load_model` would read this name as a local folder (not 'shapes', not a hub id)."""
    name = str(name_or_path).strip()
    if name in ("", "shapes"):
        return False
    return looks_like_path(name) or Path(name).expanduser().exists()


def _resolve(name_or_path: str | Path, local_folders: bool = True) -> tuple[str, Path]:
    """Map a model name, folder or hub id to a local folder in diffusers layout (`local_folders` False: the name
    is only 'shapes' or a hub id, and nothing on disk is looked at)."""
    name = str(name_or_path).strip()
    if not name:
        raise ModelLoadError("no model given: use 'shapes' (the embedded model)"
                             + (", a local folder in diffusers layout" if local_folders else "")
                             + " or a Hugging Face model id such as 'runwayml/stable-diffusion-v1-5'")
    if name == "shapes":
        return "shapes", shapes_dir()
    if not local_folders:
        if not _HUB_ID.match(name):  # (a path never matches: a hub id starts with a letter or digit)
            raise ModelLoadError(f"unknown model {shorten(name)!r}: use 'shapes' (the embedded model) or a Hugging "
                                 "Face model id such as 'runwayml/stable-diffusion-v1-5'")
        return name, _download(name, local_folders=False)
    from .artifacts import DELTA_FILE, base_model_of  # (artifacts imports this module)

    path = Path(name).expanduser()
    if is_local_model(name) and not path.is_dir():
        raise ModelLoadError(f"model folder {name!r} does not exist or is not a folder; pass a folder in diffusers "
                             "layout (unet/, text_encoder/, tokenizer/, scheduler/) or use 'shapes'")
    if path.is_dir() and (path / DELTA_FILE).is_file():
        base = base_model_of(path / DELTA_FILE)  # (the delta names its base model)
        base = f" ({shorten(base)!r})" if base else ""
        raise ModelLoadError(f"{name!r} is an erase folder (it holds {DELTA_FILE}), not a model: load the model it was "
                             f"erased from{base} and "
                             f"apply it (trust.load_erased(trust.load_model(...), {name!r}) in Python; `trust eval "
                             f"--model ... --erased {name}` on a model with a concept detector; `trust export --model "
                             f"... --erased {name} --out DIR` for Stable Diffusion)")
    if path.is_dir():
        return path.name, path
    if not _HUB_ID.match(name):
        raise ModelLoadError(f"unknown model {shorten(name)!r}: use 'shapes' (the embedded model), a local folder in "
                             "diffusers layout, or a Hugging Face model id such as 'runwayml/stable-diffusion-v1-5'")
    return name, _download(name)


def _download(repo_id: str, local_folders: bool = True) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated repo: all end the same way for the user
        where = ("pass the local folder" if local_folders else  # a server's page: its owner places the folder
                 "have it placed in one of this server's model folders (TRUST_MODEL_DIRS)")
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub (no network here, or no such model); without a "
            f"network, download it where the hub is reachable and {where}, or use 'shapes' (the embedded model)"
        ) from err


class _OwnMessageOnly(logging.Filter):
    """Drops a library's log record that holds every one of `needles`, where the error it goes on to raise is what
    the user reads (in one line, naming the file and the fix) and the record said the same at length."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not all(needle in message for needle in self.needles)


# diffusers' line for a weights file it cannot find; transformers' table of every weight whose shape differs from
# its config (about 25 lines before the error it raises; logged as the loading module's)
logging.getLogger("diffusers.models.modeling_utils").addFilter(
    _OwnMessageOnly("An error occurred while trying to fetch"))
logging.getLogger("transformers.modeling_utils").addFilter(_OwnMessageOnly("LOAD REPORT", "MISMATCH"))


@contextlib.contextmanager
def no_progress_bars():
    """transformers' bars ("Loading weights", "Writing model shards") off for a while, then as the caller had them:
    a model of these sizes loads and saves at once, and the commands say what they do."""
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _load_part(what: str, folder: Path, rebuild: str, load):
    try:
        with no_progress_bars():
            return load()
    except Exception as err:  # a missing, truncated or tampered file: name it and say how to rebuild it
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200].rstrip(".")
        # diffusers names the model's folder, not the part's: "Error no file named X found in directory <folder>"
        reason = re.sub(r"^Error no file named (\S+) found in directory .*", r"it holds no \1", reason)
        if "ignore_mismatched_sizes" in reason:  # (transformers' report of which, dropped above)
            reason = "the shapes of its weights differ from what its config.json says (a width or size in it)"
        raise ModelLoadError(f"could not load the {what} from {folder / what}: {reason}. "
                             f"{rebuild}") from err


def load_model(name_or_path: str | Path = "shapes", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, local_folders: bool = True) -> DiffusionModel:
    """Load the embedded ShapesWorld model or a Stable Diffusion 1.x checkpoint (safetensors only).

    `local_folders=False` reads the name only as 'shapes' or a hub id, never as a path (what a server's users
    type: see `ModelService.load`)."""
    device = check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:  # ("float16": torch.float16 is meant)
        raise ModelLoadError(f"dtype must be a torch floating-point dtype such as torch.float32 or torch.float16, "
                             f"got {dtype!r}")
    name, folder = _resolve(name_or_path, local_folders)
    is_shapes = name == "shapes"
    if is_shapes:  # the repository has the shipped files; retraining the model takes an hour, the detector minutes
        rebuild = f"Restore it from the repository, or rebuild it with `{SHAPES_REBUILD}` (about an hour on 2 cores)."
        rebuild_detector = (f"Restore it from the repository, or rebuild the detector alone with `{DETECTOR_REBUILD}` "
                            "(about 3 minutes).")
    else:
        rebuild = rebuild_detector = "Re-download or re-save the model folder."
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} is missing. {rebuild}")
    if not is_shapes and not (folder / "unet").is_dir():
        raise ModelLoadError(f"{folder} is not a model folder in diffusers layout: it has no unet/ (a Stable "
                             "Diffusion 1.x folder holds unet/, text_encoder/, tokenizer/ and scheduler/)")

    common = {"torch_dtype": dtype}
    unet = _load_part("unet", folder, rebuild, lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", use_safetensors=True, **common))
    text_encoder = _load_part("text_encoder", folder, rebuild, lambda: CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", use_safetensors=True, **common))
    tokenizer = _load_part("tokenizer", folder, rebuild, lambda: CLIPTokenizer.from_pretrained(
        folder, subfolder="tokenizer"))
    scheduler = _load_part("scheduler", folder, rebuild, lambda: DDIMScheduler.from_pretrained(
        folder, subfolder="scheduler"))
    vae = None
    if (folder / "vae").is_dir():
        vae = _load_part("vae", folder, rebuild, lambda: AutoencoderKL.from_pretrained(
            folder, subfolder="vae", use_safetensors=True, **common))
    detector = None
    if (folder / "detector").is_dir():
        detector = _load_part("detector", folder, rebuild_detector, lambda: load_detector(folder / "detector"))

    # parts that load but do not fit together: say so now, not as a tensor error at the first prompt
    mismatch = None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)) or tokenizer.model_max_length > 100_000:  # (no words)
        mismatch = f"its tokenizer ({folder / 'tokenizer'}) holds no vocabulary (vocab.json, merges.txt)"
    elif getattr(unet.config, "addition_embed_type", None) is not None:
        mismatch = (f"its UNet takes extra conditioning ({unet.config.addition_embed_type!r}, as SDXL's does); "
                    "only Stable Diffusion 1.x folders load")
    elif text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        mismatch = (f"its text encoder gives {text_encoder.config.hidden_size}-wide states and its UNet reads "
                    f"{unet.config.cross_attention_dim}")
    elif unet.config.in_channels != (vae.config.latent_channels if vae is not None else 3):
        mismatch = (f"its UNet takes {unet.config.in_channels} channels and "
                    + (f"its VAE makes {vae.config.latent_channels}" if vae is not None else
                       "without a vae/ folder it would draw 3 (RGB)"))
    if mismatch:
        raise ModelLoadError(f"{folder} does not load as one model: {mismatch}. {rebuild}")
    for part, module, how in (("unet", unet, rebuild), ("text_encoder", text_encoder, rebuild), ("vae", vae, rebuild),
                              ("detector", detector, rebuild_detector)):
        # NaN weights draw nothing and raise nothing. A sum is non-finite whenever a weight is (14x faster than
        # isfinite on SD-sized weights: 0.26 s against 3.76 s for 885M here); a finite sum that overflowed is checked
        broken = next((n for n, p in (module.named_parameters() if module is not None else ())
                       if not torch.isfinite(p.sum()) and not torch.isfinite(p).all()), None)
        if broken is not None:
            raise ModelLoadError(f"{folder / part} holds weights that are not finite numbers (NaN or inf, in "
                                 f"{broken}): the file is corrupted. {how}")

    meta = {}
    if (folder / "trust.json").is_file():
        meta = _load_part("trust.json", folder, rebuild, lambda: json.loads((folder / "trust.json").read_text()))
    if vae is not None:
        default_size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    else:
        default_size = unet.config.sample_size

    for module in (unet, text_encoder, vae):  # from_pretrained already made them `dtype`
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    if detector is not None:
        detector.to(device=device, dtype=dtype)
    unet.to(memory_format=torch.channels_last)  # faster convolutions, on CPU and GPU alike
    return DiffusionModel(
        name=name, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae,
        detector=detector, image_size=int(meta.get("image_size", default_size)),
        guidance_scale=float(meta.get("guidance_scale", 7.5)),
        num_inference_steps=int(meta.get("num_inference_steps", 25)), folder=folder,
    )
