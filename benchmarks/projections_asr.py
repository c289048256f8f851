"""Does TRuST+P's embedding ASR come from editing only K/V rows? trust+p on the shipped model, combination,
seeds 0 and 1, with its neurons in the given attn2 projections; one JSON line per seed (metrics and both ASRs).

    python benchmarks/projections_asr.py to_k,to_v                 # the default neurons
    python benchmarks/projections_asr.py to_q,to_k,to_v,to_out     # every attn2 projection
"""

from __future__ import annotations

import json
import sys

from trust.bench import run_one
from trust.models import load_model


def main(argv: list[str]) -> None:
    projections = tuple(argv[0].split(","))
    model = load_model("shapes")
    for seed in (0, 1):
        run = run_one(model, "trust+p", "combination", seed, {"projections": projections}, 8, {})
        keep = {k: run[k] for k in ("method", "seed", "UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding",
                                    "ASR_embedding_projected", "steps", "changed_pct", "wall_seconds")}
        print(json.dumps({**keep, "projections": list(projections)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
