"""What makes TRuST+P's erasure easy for the embedding attack to undo? trust+p on the shipped model, combination,
seeds 0 and 1, with config overrides; one JSON line per seed (metrics and both ASRs).

    python benchmarks/trustp_asr.py                                        # the defaults
    python benchmarks/trustp_asr.py projections=to_q,to_k,to_v,to_out      # neurons in every attn2 projection
    python benchmarks/trustp_asr.py lambda_pres=0.01                       # next to no preservation (0: refused)
"""

from __future__ import annotations

import json
import sys

from trust.bench import run_one
from trust.models import load_model


def override(text: str) -> tuple[str, object]:
    name, value = text.split("=", 1)
    if name == "projections":
        return name, tuple(value.split(","))
    return name, float(value)


def main(argv: list[str]) -> None:
    overrides = dict(map(override, argv))
    model = load_model("shapes")
    for seed in (0, 1):
        run = run_one(model, "trust+p", "combination", seed, overrides, 8, {})
        keep = {k: run[k] for k in ("method", "seed", "UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding",
                                    "ASR_embedding_projected", "steps", "changed_pct", "wall_seconds")}
        print(json.dumps({**keep, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in overrides.items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
