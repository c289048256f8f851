"""Erased-model artifacts: a safetensors delta that belongs to one base model, and its loading.

An erase folder holds:
  delta.safetensors   changed rows only: "<param>::rows" (int64) and "<param>::delta" (new − old)
  masks.json          the mask history, step -> weight -> selected rows
  config.json         the unlearning config and scenario
  report.json         method, target, anchor, neighbours, steps, wall_seconds, changed_fraction, metrics
  images/             before/after samples
The delta's metadata names the base model and a fingerprint of the weights it
changes, plus a checksum of its own tensors, so a delta for another model or a
tampered file is refused with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .errors import TrustError
from .models import DiffusionModel, no_progress_bars

DELTA_FILE = "delta.safetensors"
FORMAT = "trust-delta-1"


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors, in name order; each is read once, when its turn comes (see `_Applied`)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Applied(Mapping):
    """The changed weights with a delta applied, made one at a time as they are read: a fingerprint of the erased
    weights holds one weight in memory at once, not every changed one (about 80 MB on SD 1.5)."""

    def __init__(self, params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], names: list[str]):
        self.params, self.tensors, self.names = params, tensors, names

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self.params[name].detach().float().clone()
        _applied(weight, self.tensors[f"{name}::rows"], self.tensors[f"{name}::delta"])
        return weight

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def fingerprint(unet: torch.nn.Module, names: list[str]) -> str:
    """sha256 of the named parameters of a UNet: identifies the base weights a delta applies to."""
    params = dict(unet.named_parameters())
    return _digest({n: params[n].float() for n in names})


UNET_ENDS = ["conv_in.weight", "conv_out.weight"]  # in every diffusers UNet, and small: which UNet this is,
#                                                   even for a delta that changes nothing


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """sha256 of the UNet's first and last convolutions: tells models apart whatever rows a delta holds."""
    params = dict(unet.named_parameters())
    return fingerprint(unet, UNET_ENDS) if all(n in params for n in UNET_ENDS) else "none"


def compute_delta(base: torch.nn.Module, edited: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rows that differ between two UNets of the same architecture."""
    tensors: dict[str, torch.Tensor] = {}
    edited_params = dict(edited.named_parameters())
    for name, old in base.named_parameters():
        new = edited_params[name]
        diff = (new != old).reshape(old.shape[0], -1).any(1) if old.dim() else (new != old).reshape(1)
        if diff.any():
            rows = diff.nonzero().flatten()
            tensors[f"{name}::rows"] = rows.cpu()
            tensors[f"{name}::delta"] = (new.detach()[rows] - old.detach()[rows]).float().cpu().contiguous()
    return tensors


def _applied(param: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
    """Add a delta's rows to a weight in place (load_erased's one arithmetic step, so that a fingerprint of the
    result taken when saving is bit for bit the one of a model the delta was applied to)."""
    param[rows.to(param.device)] += delta.to(param.device, param.dtype)


def _sorted_metadata(data: bytes) -> bytes:
    """A safetensors file with its metadata keys in sorted order. The library writes them in hash-map order, which
    changes from process to process, so two identical erases gave files with equal tensors and different sha256s."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data that follows stays 8-byte aligned, as the library pads it
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def save_delta(path: Path, model: DiffusionModel, edited: torch.nn.Module, extra: dict | None = None) -> int:
    """Write the delta of `edited` against `model.unet`; returns the number of changed rows."""
    tensors = compute_delta(model.unet, edited)
    names = sorted({k.split("::")[0] for k in tensors})
    applied = _Applied(dict(model.unet.named_parameters()), tensors, names)
    metadata = {"format": FORMAT, "base_model": model.name, "base_fingerprint": fingerprint(model.unet, names),
                "erased_fingerprint": _digest(applied), "unet_fingerprint": unet_fingerprint(model.unet),
                "payload_sha256": _digest(tensors), **{k: str(v) for k, v in (extra or {}).items()}}
    write_bytes_atomic(path, _sorted_metadata(save(tensors, metadata=metadata)))
    return sum(int(v.numel()) for k, v in tensors.items() if k.endswith("::rows"))


def base_model_of(path: Path) -> str | None:
    """The name of the model a delta file was erased from, as its metadata says (None if it cannot be read)."""
    try:
        with safe_open(path, framework="pt") as f:
            base = (f.metadata() or {}).get("base_model")
    except Exception:  # (a truncated or foreign file: the caller's message goes without the name)
        return None
    return base if isinstance(base, str) and base else None


def load_erased(model: DiffusionModel, folder: str | Path) -> DiffusionModel:
    """The model with an erase folder's delta applied to a copy of its UNet (the model is untouched)."""
    if not isinstance(model, DiffusionModel):
        raise TrustError(f"give the model the erase started from (trust.load_model(...)), got {model!r}")
    if not isinstance(folder, (str, Path)):
        raise TrustError(f"give the erase folder as a path, got {type(folder).__name__}")
    if model.unet.dtype != torch.float32:  # the fingerprints are of float32 weights
        raise TrustError(f"load the model in float32 to apply an erase (this one is in {str(model.unet.dtype)[6:]}): "
                         "trust.load_model(name), then .unet.half() after load_erased if you want half precision")
    folder = Path(folder)
    if folder.is_file() and folder.name == DELTA_FILE:  # the delta itself: its folder is the erase folder
        folder = folder.parent
    path = folder / DELTA_FILE
    if not folder.exists():
        raise TrustError(f"{folder} does not exist; pass a folder written by `trust erase`")
    if not folder.is_dir():
        raise TrustError(f"{folder} is a file; pass the folder written by `trust erase` (it holds {DELTA_FILE})")
    if not path.is_file():
        raise TrustError(f"{folder} holds no {DELTA_FILE}; pass a folder written by `trust erase`")
    # 1. Read, refusing anything that is not a well-formed delta
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a truncated or garbled file: say which and why
        raise TrustError(f"cannot read {path}: it is not a valid safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise TrustError(f"{path} is not a TRuST delta (format {metadata.get('format')!r})")
    if _digest(tensors) != metadata.get("payload_sha256"):
        raise TrustError(f"{path} was modified after it was written (its checksum does not match); "
                         "re-run `trust erase` to make a new one")
    # 2. Check it is made of (rows, delta) pairs and belongs to this model
    params = dict(model.unet.named_parameters())
    names = sorted({k.split("::")[0] for k in tensors})
    other = next((k for k in tensors if not k.endswith(("::rows", "::delta"))), None)
    if other is not None:
        raise TrustError(f"{path} is not a TRuST delta: it holds {other!r}, which is neither a weight's '::rows' nor "
                         "its '::delta'")
    for name in names:
        rows, delta = tensors.get(f"{name}::rows"), tensors.get(f"{name}::delta")
        if rows is None or delta is None:
            raise TrustError(f"{path} is not a TRuST delta: each weight needs exactly a '::rows' and a '::delta' "
                             f"tensor ({name!r} does not have them)")
        if (rows.dtype not in (torch.int32, torch.int64) or rows.ndim != 1 or rows.numel() == 0
                or delta.ndim < 1 or delta.shape[0] != rows.numel() or len(set(rows.tolist())) != rows.numel()):
            raise TrustError(f"{path}: the rows of {name!r} are not a list of distinct row indices, one per "
                             "delta row")
        if delta.dtype != torch.float32:  # (save_delta writes float32; an int or bool delta is no weight change)
            raise TrustError(f"{path}: the delta of {name!r} is {str(delta.dtype)[6:]}, not float32")
    missing = [n for n in names if n not in params]
    if missing:
        raise TrustError(f"{path} was made for another architecture (model {metadata.get('base_model')!r}): "
                         f"this model has no parameter {missing[0]!r}")
    here = unet_fingerprint(model.unet)  # (a delta written before 2026-12-05 has none: its rows alone are checked)
    weights = fingerprint(model.unet, names)
    if metadata.get("unet_fingerprint", here) == here and weights == metadata.get("erased_fingerprint") != \
            metadata.get("base_fingerprint"):
        raise TrustError(f"this {model.name!r} already has {path}'s erase applied (its weights are the erased ones); "
                         "apply it to the model as loaded, not to one load_erased returned")
    if weights != metadata.get("base_fingerprint") or metadata.get("unet_fingerprint", here) != here:
        raise TrustError(f"{path} was made for a model {metadata.get('base_model')!r} with other weights than this "
                         f"{model.name!r} (their fingerprints differ); load it on the model it was erased from")
    # 3. Apply to a copy
    unet = copy.deepcopy(model.unet)
    edited_params = dict(unet.named_parameters())
    with torch.no_grad():
        for name in names:
            rows, delta = tensors[f"{name}::rows"], tensors[f"{name}::delta"]
            param = edited_params[name]
            if (not torch.isfinite(delta).all() or rows.min() < 0 or rows.max() >= param.shape[0]
                    or delta.shape[1:] != param.shape[1:]):
                raise TrustError(f"{path}: the delta for {name} does not fit the model or is not finite")
            _applied(param, rows, delta)
    return dataclasses.replace(model, unet=unet)


def export_diffusers(model: DiffusionModel, folder: Path) -> None:
    """Write an erased SD model as a normal diffusers folder (loadable by StableDiffusionPipeline)."""
    if model.vae is None:
        raise TrustError("only latent (Stable Diffusion) models export to a diffusers pipeline folder")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):  # as `trust export`: nothing written over
        what = "a file" if not folder.is_dir() else "not an empty folder"
        raise TrustError(f"{folder} is {what}; export into a new or empty folder")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder,
                                   tokenizer=model.tokenizer, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with no_progress_bars():  # ("Writing model shards")
        pipe.save_pretrained(folder, safe_serialization=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: a failure or Ctrl-C half-way leaves the previous file (a bench's
    hours of runs, a previous eval) as it was, never a truncated one."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temp, 0o644)  # as a plain write_text would leave it (mkstemp makes it private)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
