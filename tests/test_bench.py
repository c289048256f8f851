"""`trust bench` and `trust erase` with a baseline, end to end on tiny settings."""

import json
from pathlib import Path

import pytest

from trust import bench
from trust.cli import main
from trust.harness import Probe
from trust.unlearn import StepReport

TINY = {"config": {"max_steps": 2, "probe_every": 1, "num_train_images": 2, "retain_prompts": 2,
                   "batch_size": 2, "probe_samples": 1,
                   "probe_steps": 5, "hessian_samples": 1, "data_steps": 4},
        "metric_samples": 1, "attack": {"samples_per_prompt": 1, "embedding_steps": 2, "embedding_samples": 1},
        "methods": ("esd-x", "conceptprune"), "scenarios": ("conditional",), "seeds": 1}


def test_bench_writes_a_row_per_method_and_scenario(tmp_path, monkeypatch, shapes_model, capsys):
    monkeypatch.setattr(bench, "QUICK", TINY)
    runs = bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["method"], r["scenario"], r["seed"]) for r in saved["runs"]] == [
        ("esd-x", "conditional", 0), ("conceptprune", "conditional", 0)]
    esd, prune = runs
    assert esd["steps"] == 2 and len(esd["probes"]) == 2 and esd["seconds_per_step"] > 0
    assert prune["steps"] == 0 and prune["seconds_per_step"] is None
    assert prune["time_to_good"]["UA"] is not None  # one probe of the pruned model
    for run in runs:
        assert all(0 <= run[k] <= 1 for k in ("UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding"))
        assert run["peak_memory_mb"] >= 0 and 0 < run["changed_pct"] < 100
    table = (tmp_path / "bench.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| conditional |")]
    assert [row.split(" | ")[1] for row in rows] == ["esd-x", "conceptprune"]
    assert all(row.count("|") == 14 for row in rows)

    # --resume keeps what is done and runs nothing again; other settings are refused, not mixed in
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: pytest.fail("a finished run was run again"))
    for config in saved["configs"].values():  # as if written before keep_best existed: its default is the same
        del config["keep_best"]
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    again = bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True,
                            resume=True)
    assert again == saved["runs"]
    from trust.cli import main  # the command says that nothing was left, not only "wrote …"

    assert main(["bench", "--quick", "--methods", "esd-x", "conceptprune", "--scenarios", "conditional", "--seeds",
                 "1", "--resume", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"nothing left to run: {tmp_path / 'bench.json'} holds every run")
    _check_merge(saved, tmp_path / "merge")
    with pytest.raises(ValueError, match=r"other settings \(methods\); choose another --out"):  # (no config of a
        bench.run_bench(shapes_model, ("esd-x", "conceptprune", "trust"), ("conditional",), 1, tmp_path,  # method
                        quick=True, resume=True)                                                  # it never ran)
    assert saved["anchors"] == {"conditional": ["a circle"]}  # each target's anchor is a setting too
    saved["anchors"] = {"conditional": [""]}  # a bench of the empty anchor: not the same bench
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"other settings \(anchors\)"):
        bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True,
                        resume=True)
    saved["anchors"] = {"conditional": ["a circle"]}
    saved["configs"]["esd-x"]["lr"] = 1.0  # another learning rate: not the same bench
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="esd-x's config"):
        bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True,
                        resume=True)
    with pytest.raises(ValueError, match="other settings"):
        bench.run_bench(shapes_model, ("esd-x",), ("conditional",), 1, tmp_path, quick=True, resume=True)
    saved["configs"]["esd-x"]["lr"] = bench.UnlearnConfig.for_method("esd-x").lr
    del saved["runs"][1]["UA"]  # a run edited by hand: refused with what it lacks, not a KeyError later
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="run 1 lacks UA"):
        bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True,
                        resume=True)
    # a run copied twice, of a method this bench does not run, or with a seed that is no seed: refused by name
    runs = saved["runs"]
    for edited, message in (([runs[0], runs[0]], "run 1 .* has a second copy of an earlier run"),
                            ([{**runs[0], "method": "magic"}], "run 0 \\('magic'.* has its method"),
                            ([{**runs[0], "scenario": "red"}], "run 0 .* has its scenario"),
                            ([{**runs[0], "seed": -1}], "seed -1\\) has its seed"),
                            ("oops", "its runs are not a list")):
        (tmp_path / "bench.json").write_text(json.dumps({**saved, "runs": edited}))
        with pytest.raises(ValueError, match=message):
            bench.run_bench(shapes_model, ("esd-x", "conceptprune"), ("conditional",), 1, tmp_path, quick=True,
                            resume=True)


def test_bench_scenarios_keep_the_presets_anchors_unless_one_is_given():
    assert bench.bench_scenario("red").target_anchors == ("a green circle", "a green square", "a green triangle",
                                                          "a green star")
    assert bench.bench_scenario("red", "").target_anchors == ("",) * 4  # the empty prompt, as benchmarks/full ran
    assert bench.bench_scenario("conditional", "a square").target_anchors == ("a square",)
    full = json.loads((Path(__file__).parents[1] / "benchmarks" / "full" / "bench.json").read_text())
    assert all(set(anchors) == {""} for anchors in full["anchors"].values())


def test_shards_split_the_runs_left(tmp_path, monkeypatch, shapes_model, capsys):
    """--shard K/N: every N-th run still to do, from the K-th; together the shards run each once."""
    monkeypatch.setattr(bench, "QUICK", TINY)
    ran = []

    def fake_run(model, method, scenario, seed, *args):
        ran.append((seed, scenario, method))
        return {"method": method, "scenario": scenario, "seed": seed}

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.setattr(bench, "markdown_table", lambda *a: "")
    methods, scenarios = ("esd-x", "conceptprune", "salun"), ("conditional", "red")
    for k in range(2):
        bench.run_bench(shapes_model, methods, scenarios, 2, tmp_path / str(k), quick=True, shard=(k, 2))
    everything = [(s, c, m) for s in range(2) for c in scenarios for m in methods]
    assert ran == everything[0::2] + everything[1::2]
    with pytest.raises(ValueError, match="shard must be"):
        bench.run_bench(shapes_model, methods, scenarios, 2, tmp_path, quick=True, shard=(2, 2))
    with pytest.raises(SystemExit):  # argparse: "K/N needs 0 <= K < N"
        main(["bench", "--shard", "3/2", "--out", str(tmp_path)])
    # a shard with nothing left to run still leaves a bench.json (with no runs) for merge_bench.py
    (tmp_path / "idle").mkdir()
    assert bench.run_bench(shapes_model, methods, scenarios, 1, tmp_path / "idle", quick=True, shard=(9, 10)) == []
    assert json.loads((tmp_path / "idle" / "bench.json").read_text())["runs"] == []
    assert main(["bench", "--quick", "--shard", "3/4", "--out", str(tmp_path / "none")]) == 0  # 2 runs, 4 shards
    assert capsys.readouterr().out.startswith("this shard (3/4) takes none of the bench's runs")


def _check_merge(saved: dict, folder: Path) -> None:
    """benchmarks/merge_bench.py on a bench split in two: the whole back; a method's other config refused; a run
    in no input said."""
    import subprocess
    import sys

    def split(name: str, runs: list, configs: dict) -> Path:
        (folder / name).mkdir(parents=True)
        (folder / name / "bench.json").write_text(json.dumps({**saved, "runs": runs, "configs": configs}))
        return folder / name

    def merge(*inputs: Path) -> subprocess.CompletedProcess:
        script = Path(__file__).parents[1] / "benchmarks" / "merge_bench.py"
        return subprocess.run([sys.executable, script, folder / "out", *inputs], capture_output=True, text=True)

    esd, prune = saved["runs"]
    a, b = split("a", [esd], saved["configs"]), split("b", [prune], saved["configs"])
    merged = merge(a, b)
    assert merged.returncode == 0 and "warning" not in merged.stdout
    assert json.loads((folder / "out" / "bench.json").read_text())["runs"] == saved["runs"]
    other = split("c", [prune], {**saved["configs"], "conceptprune": {**saved["configs"]["conceptprune"], "rho": 0.5}})
    refused = merge(a, b, other)  # (named against the first input that holds that method's config)
    assert refused.returncode == 1 and f"{other} has another config of conceptprune than {a}" in refused.stderr
    only_esd = split("d", [esd], {"esd-x": saved["configs"]["esd-x"]})
    refused = merge(only_esd, b, other)
    assert refused.returncode == 1 and f"{other} has another config of conceptprune than {b}" in refused.stderr
    alone = merge(a)
    assert alone.returncode == 0 and "1 of this bench's runs is in no input (conceptprune on conditional seed 0)" \
        in alone.stdout
    missing = merge(folder / "none")
    assert missing.returncode == 1 and "holds no readable bench.json" in missing.stderr  # not a traceback


def _report(step, ua, ira, elapsed):
    return StepReport(step=step, max_steps=9, losses={}, mask_sizes={}, num_selected=0, refreshed=False,
                      churn=(0, 0), top_neurons=(), saliency_z={}, changed_fraction=0.0,
                      probe=Probe(ua=ua, ira=ira, num_samples=4), elapsed=elapsed)


class _Result:
    def __init__(self, reports):
        self.reports, self.steps = reports, len(reports)


def test_time_to_good_is_the_first_probe_with_both_targets_met():
    reports = [_report(1, 1.0, 0.5, 3.0), _report(2, 0.96, 0.85, 5.0), _report(3, 1.0, 1.0, 7.0)]
    assert bench.time_to_good(None, _Result(reports)) == {"seconds": 5.0, "UA": 0.96, "IRA": 0.85}
    never = bench.time_to_good(None, _Result(reports[:1] + [_report(2, 0.5, 1.0, 5.0)]))
    assert never == {"seconds": None, "UA": 1.0, "IRA": 0.5}  # the closest to good: min(1.05, 0.625)


@pytest.mark.parametrize("method", ["esd-x"])
def test_erase_with_a_baseline_reports_attack_success(tmp_path, method):
    out = tmp_path / method
    code = main(["erase", "--preset", "conditional", "--method", method, "--max-steps", "2", "--probe-every", "0",
                 "--num-train-images", "2", "--data-steps", "4", "--metric-samples", "1", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["steps"] == 2
    assert 0 <= report["ASR_paraphrase"] <= 1 and 0 <= report["ASR_embedding"] <= 1
    assert report["attacks"]["embedding"]["loss_before"] > 0
    assert (out / "delta.safetensors").is_file()


def benchmark_script(name: str):
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pareto_fronts_and_dominance():
    pareto = benchmark_script("pareto")
    points = [(0.2, 1.0), (0.5, 0.9), (0.4, 0.8), (1.0, 0.3), (0.9, 0.2)]
    front = pareto.pareto_front(points)
    assert front == [(0.2, 1.0), (0.5, 0.9), (1.0, 0.3)]  # (0.4, 0.8) and (0.9, 0.2) are beaten
    assert pareto.dominates(front, [(0.5, 0.5), (1.0, 0.3)])
    assert not pareto.dominates(front, [(0.8, 0.8)])
    runs = [{"method": "a", "UA": 0.1, "IRA": 0.9, "probes": [{"UA": 0.5, "IRA": 0.7}, {"UA": 0.6, "IRA": None}]},
            {"method": "b", "UA": 0.3, "IRA": 0.4, "probes": []}]
    assert pareto.sweep_points(runs) == {"a": [(0.5, 0.7)], "b": [(0.3, 0.4)]}


def test_sweep_time_to_a_good_erasure_and_step_cost(capsys):
    sweep = benchmark_script("lr_sweep")
    run = {"method": "trust", "knob": "lr", "value": 0.1, "UA": 1.0, "IRA": 0.9, "CRA": 1.0, "steps": 40,
           "wall_seconds": 50.0, "seconds_per_step": 0.5,
           "probes": [{"UA": 0.5, "IRA": 1.0, "elapsed": 12.0}, {"UA": 1.0, "IRA": 0.5, "elapsed": 25.0},
                      {"UA": 0.96, "IRA": 0.8, "elapsed": 38.4}]}
    assert sweep.time_to_good(run) == "38 s"  # the first probe with UA >= 0.95 and IRA >= 0.80
    never = {**run, "probes": run["probes"][:2]}
    assert sweep.time_to_good(never) == "never (best UA 1.00, IRA 0.50)"  # min(1/0.95, 0.5/0.8) > 0.5/0.95
    pruned = {**run, "method": "conceptprune", "steps": 0, "probes": []}  # no probes: its final metrics
    assert sweep.time_to_good(pruned) == "50 s"
    sweep.summarize([run, {**run, "method": "esd-x", "seconds_per_step": 0.4}])
    out = capsys.readouterr().out
    assert "| trust ★ | lr = 0.1 | 1.00 | 0.90 | 1.00 | 40 | 0.50 | 38 s |" in out
    assert "1.25x" in out  # 0.5 s against ESD-x's 0.4 s


def test_scale_benchmark_runs_every_method_step(capsys):
    scale = benchmark_script("scale")
    scale.main(["--small", "--steps", "2", "--rounds", "1", "--resolution", "64"])
    out = capsys.readouterr().out
    for method in scale.METHODS:
        row = next(line for line in out.splitlines() if line.startswith(f"| {method} |"))
        seconds = float(row.split("|")[2])
        assert seconds > 0
    assert "| trust | " in out and "| 1.00 |" in out  # TRuST is the base of the ratios
