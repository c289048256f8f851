"""Ask the concept detector what a model draws for a list of prompts."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import TrustError
from .generation import generate, prompt_list
from .models import DiffusionModel


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: one per line, or JSON lines with a "prompt" field (other fields ignored) or that are
    strings ("a red circle", quotes included, is the prompt a red circle).

    Blank lines and comments (lines that start with #) are skipped; an empty prompt is written as
    {"prompt": ""} or "", a prompt that starts with # as {"prompt": "#…"}.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not a prompt
    except UnicodeDecodeError as err:
        raise TrustError(f"cannot read prompts file {path}: it is not UTF-8 text (byte {err.start}); save it as "
                         "UTF-8") from err
    except OSError as err:
        raise TrustError(f"cannot read prompts file {path}: {err}") from err
    prompts = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):  # a blank line, or a comment
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrustError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
            if not isinstance(record.get("prompt"), str):
                raise TrustError(f'{path}:{line_no}: a JSON line needs a string "prompt" field')
            prompts.append(record["prompt"])
        elif line.strip().startswith('"') and isinstance(text := _json(line), str):  # JSON lines of strings
            prompts.append(text)
        elif line.lstrip().startswith("[") and isinstance(_json(line), list):  # ["a red circle"]: no prompt
            raise TrustError(f'{path}:{line_no}: a JSON line must be a string or an object with a "prompt" field, '
                             "not a list; write one prompt per line")
        else:
            prompts.append(line.strip())
    if not prompts:
        raise TrustError(f"{path} holds no prompts")
    return prompts


def _json(line: str):
    """The JSON value a line holds, or None where it is no JSON (a prompt that merely starts with " or [)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def evaluate(model: DiffusionModel, prompts: str | list[str], num_samples: int, seed: int = 0,
             batch_size: int = 32) -> list[dict]:
    """The detector's verdict on each of `num_samples` samples per prompt (seeds seed .. seed + n - 1)."""
    if model.detector is None:
        raise TrustError(f"model {model.name!r} has no concept detector; `trust eval` needs one "
                         "(the embedded 'shapes' model ships it)")
    if type(num_samples) is not int or num_samples < 1:  # (True is no number of samples)
        raise ValueError(f"the number of samples must be a whole number >= 1, got {num_samples!r}")
    prompts = prompt_list(prompts)  # one prompt, as generate takes it
    output = generate(model, prompts, num_images_per_prompt=num_samples, seed=seed, batch_size=batch_size)
    verdicts = model.detector.detect(output.images)
    results = []
    for p_idx, prompt in enumerate(prompts):
        samples = []
        for k in range(num_samples):
            i = p_idx * num_samples + k
            v = verdicts[i]
            samples.append({"seed": output.seeds[i], "color": v.color, "shape": v.shape,
                            "background": v.background, "confidence": round(v.confidence, 4)})
        results.append({"prompt": prompt, "samples": samples})
    return results
