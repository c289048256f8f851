"""UA against IRA for each method over its learning-rate × steps sweep, with each method's Pareto front.

    python benchmarks/pareto.py [benchmarks/results/lr_sweep.json ...] [--out benchmarks/results/pareto.png]
    python benchmarks/pareto.py benchmarks/full/bench.json --out benchmarks/full/pareto.png   # per scenario

Reads the probe points of `benchmarks/lr_sweep.py` (every probe of every rate is one point:
the sweep over steps comes free with the sweep over rates) and draws a point per probe and a
line through the points no other point of the same method beats on both UA and IRA. Several
sweep files (e.g. from processes that ran different methods) are drawn as one. Prints each
front and whether TRuST+P's (and TRuST's) front dominates each other method's (every point of
theirs is matched or beaten on both UA and IRA by one of ours). Given a `trust bench` bench.json
instead, it draws one panel per scenario: every probe of every seed, each method at its own rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not beaten on both coordinates by another one, by rising UA."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def sweep_points(runs: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """method -> (UA, IRA) of every probe of every run (the final metrics where a run has no probes)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        probes = [(p["UA"], p["IRA"]) for p in run["probes"] if p["IRA"] is not None]
        points.setdefault(run["method"], []).extend(probes or [(run["UA"], run["IRA"])])
    return points


def dominates(front: list[tuple[float, float]], other: list[tuple[float, float]]) -> bool:
    """Every point of `other` is matched or beaten on both coordinates by a point of `front`."""
    return all(any(p[0] >= q[0] and p[1] >= q[1] for p in front) for q in other)


def draw(ax, runs: list[dict], title: str) -> dict[str, list[tuple[float, float]]]:
    """Every probe of `runs` as a point and each method's front as a line on `ax`; prints the fronts."""
    fronts = {}
    for k, (method, points) in enumerate(sweep_points(runs).items()):
        color = f"C{k % 10}"
        ax.scatter(*zip(*points), s=12, alpha=0.35, color=color)
        fronts[method] = front = pareto_front(points)
        ax.plot(*zip(*front), marker="o", color=color, label=method)
        print(f"{method:13s} front (UA, IRA): " + ", ".join(f"({u:.2f}, {i:.2f})" for u, i in front))
    for ours in ("trust+p", "trust"):
        if ours in fronts:
            verdicts = [f"{m} {'yes' if dominates(fronts[ours], f) else 'no'}" for m, f in fronts.items() if m != ours]
            print(f"{ours}'s front dominates: " + ", ".join(verdicts))
    ax.set_xlabel("UA (target erased)")
    ax.set_ylabel("IRA (neighbours kept)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    return fronts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="*",
                        default=[Path(__file__).parent / "results" / "lr_sweep.json"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pareto.png")
    args = parser.parse_args(argv)

    sweeps = [json.loads(path.read_text()) for path in args.sweeps]
    runs = [r for s in sweeps for r in s["runs"]]
    if "scenarios" in sweeps[0]:  # a trust bench: one panel per scenario, each method at its own rate
        scenarios = sweeps[0]["scenarios"]
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 4.4), dpi=100, squeeze=False)
        for ax, scenario in zip(axes[0], scenarios):
            print(f"\n{scenario}:")
            seeds = sorted({r["seed"] for r in runs if r["scenario"] == scenario})
            draw(ax, [r for r in runs if r["scenario"] == scenario],
                 f"{scenario}: every probe, seeds {', '.join(map(str, seeds))}")
        axes[0][0].legend(fontsize=7, loc="lower left")
    else:  # learning-rate sweeps (benchmarks/lr_sweep.py) of one scenario and seed
        fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
        draw(ax, runs, f"Pareto fronts over learning rate × steps ({sweeps[0]['scenario']}, seed {sweeps[0]['seed']})")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
