"""A CLIP tokenizer built offline from the BPE merges that open_clip ships."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-character map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer(model_max_length: int) -> CLIPTokenizer:
    """The same 49,408-token vocabulary as Stable Diffusion's tokenizer."""
    from open_clip.tokenizer import default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]  # as CLIP does
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps({token: idx for idx, token in enumerate(vocab)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length,
                             pad_token="<|endoftext|>")
