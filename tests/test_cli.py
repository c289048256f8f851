import json
import subprocess
import sys
import time

import pytest
from PIL import Image

from trust.cli import main


def test_generate_writes_images_and_heat_maps(tmp_path):
    code = main(["generate", "--prompt", "a red circle", "--prompt", "an amber star on a dotted background",
                 "--num-images", "2", "--seed", "5", "--steps", "5", "--out", str(tmp_path)])
    assert code == 0
    images = sorted(p.name for p in tmp_path.glob("*.png") if not p.name.endswith("_heatmaps.png"))
    assert images == ["000_a-red-circle_seed5.png", "001_a-red-circle_seed6.png",
                      "002_an-amber-star-on-a-dotted-background_seed5.png",
                      "003_an-amber-star-on-a-dotted-background_seed6.png"]
    assert Image.open(tmp_path / images[0]).size == (128, 128)
    heat = Image.open(tmp_path / "002_an-amber-star-on-a-dotted-background_seed5_heatmaps.png")
    assert heat.size[0] > 6 * heat.size[1]  # the image and one panel per token (7 words)


def test_eval_writes_canonical_verdicts(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a crimson disc", "note": "ignored"}\n\n{"prompt": ""}\n')
    out = tmp_path / "eval.json"
    assert main(["eval", "--prompts", str(prompts), "--samples", "3", "--seed", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "shapes" and report["erased"] is None
    assert [r["prompt"] for r in report["results"]] == ["a crimson disc", ""]
    samples = report["results"][0]["samples"]
    assert [s["seed"] for s in samples] == [2, 3, 4]
    assert set(samples[0]) == {"seed", "color", "shape", "background", "confidence"}
    assert sum(s["color"] == "red" and s["shape"] == "circle" for s in samples) >= 2  # never "crimson"


def test_eval_reads_plain_lines(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue square\na green star on a striped background\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--prompts", str(prompts), "--samples", "1", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"]) == 2
    assert main(["eval", "--prompts", str(prompts), "--samples", "1", "--out", str(out)]) == 0  # its own: replaced
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["eval", "--prompts", str(prompts), "--samples", "1", "--out", str(tmp_path / "notes.txt")]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"  # anything else is never written over


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trust", *args], capture_output=True, text=True, timeout=300)


def test_bad_input_gives_one_line_errors(tmp_path):
    result = run_cli("generate", "--prompt", "a red circle", "--num-images", "0", "--out", str(tmp_path))
    assert result.returncode == 2 and "--num-images: must be within 1..1000, got 0" in result.stderr
    result = run_cli("generate", "--prompt", "x", "--num-images", "-3", "--out", str(tmp_path))
    assert result.returncode == 2 and "must be within 1..1000, got -3" in result.stderr
    result = run_cli("generate", "--model", "no such model", "--prompt", "x", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: unknown model 'no such model'")
    assert "Traceback" not in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a red circle"}\n')
    result = run_cli("eval", "--prompts", str(bad), "--out", str(tmp_path / "o.json"))
    assert result.returncode == 2 and 'needs a string "prompt" field' in result.stderr


def test_long_prompt_warns_on_the_terminal(tmp_path):
    result = run_cli("generate", "--prompt", "a red circle" + " and more words" * 12, "--num-images", "1",
                     "--steps", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and result.stderr.count("the end was cut") == 1  # once, not per tokenizing


def test_outputs_and_devices_are_checked_before_any_work(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\ufeffa red circle\n")  # a byte-order mark (as some editors write) is not a prompt
    assert main(["eval", "--prompts", str(prompts), "--samples", "1", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; give the JSON file to write" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a red circle", "--out", str(prompts)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    for device, message in (("tpu", "unknown device 'tpu'"), ("cuda:7", "asked for, but this machine has"),
                            ("xpu", "not available to this torch build"), ("meta", "'meta' holds no weights")):
        assert main(["generate", "--prompt", "x", "--device", device, "--out", str(tmp_path / "g")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "g").exists()
    with pytest.raises(SystemExit):  # argparse: a seed out of range is a usage error
        main(["generate", "--prompt", "x", "--seed", "-1", "--out", str(tmp_path / "g")])
    assert "must be within 0..4294967295" in capsys.readouterr().err
    for flag, value, message in (("--steps", "100000", "--steps: must be within 1..1000"),
                                 ("--guidance", "nan", "--guidance: must be within 0..50, got nan"),
                                 ("--num-images", "100000", "--num-images: must be within 1..1000")):
        with pytest.raises(SystemExit):  # in the flag's name, before any folder is made
            main(["generate", "--prompt", "x", flag, value, "--out", str(tmp_path / "g2")])
        assert message in capsys.readouterr().err and not (tmp_path / "g2").exists()
    # an erase folder that holds files is not written into (two runs would mix), unless --overwrite
    out = tmp_path / "erase"
    (out / "images").mkdir(parents=True)
    (out / "images" / "after_00_old.png").write_bytes(b"old")
    args = ["erase", "--target", "a red circle", "--max-steps", "1", "--probe-every", "0", "--num-train-images", "2",
            "--data-steps", "2", "--metric-samples", "1", "--no-attacks", "--no-progress", "--out", str(out)]
    assert main(args) == 2 and "is not empty; choose a new folder, or add --overwrite" in capsys.readouterr().err
    # --overwrite never removes what is not a run's: with a file of the user's there, nothing is removed
    (out / "config.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds files that are not a previous erase's (notes.txt, config.json)" in err
    (out / "report.json").write_text('{"metrics": {"UA"')  # a run's report, cut short: kept, and said why
    assert main([*args, "--overwrite"]) == 2
    assert "report.json, which does not read as an erase's" in capsys.readouterr().err
    (out / "report.json").unlink()
    assert "keeping the neighbours" not in err  # refused before the model loads
    assert main([*args, "--no-neighbours", "--neighbour", "a red square"]) == 2
    assert "give --neighbour or --no-neighbours, not both" in capsys.readouterr().err
    assert (out / "config.json").read_text() == '{"mine": 1}' and (out / "images" / "after_00_old.png").exists()
    (out / "config.json").unlink()
    (out / "notes.txt").unlink()
    # a prompt with '/' in it names its image files safely (it once lost the finished run)
    assert main([*args, "--overwrite", "--neighbour", "a red square/"]) == 0
    assert not (out / "images" / "after_00_old.png").exists() and (out / "report.json").is_file()
    assert sorted(p.name for p in (out / "images").iterdir())[0] == "after_00_a-red-circle.png"
    assert (out / "images" / "before_01_a-red-square.png").is_file()
    assert oct((out / "delta.safetensors").stat().st_mode & 0o777) == "0o644"
    err = capsys.readouterr().err
    assert "erasing 'a red circle' (anchor 'a green circle')" in err  # said before it runs
    # a bench folder that holds a bench.json is continued (--resume) or left alone, never overwritten
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(tmp_path / "bench")]) == 2
    assert "exists; add --resume to continue it" in capsys.readouterr().err
    # an erase folder is not a model, and an empty --model is not "shapes"
    assert main(["eval", "--model", str(out), "--prompts", str(prompts), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert "is an erase folder (it holds delta.safetensors), not a model: load the model it was erased from " \
           "('shapes') and apply it" in err
    with pytest.raises(SystemExit):
        main(["generate", "--model", " ", "--prompt", "x", "--out", str(tmp_path / "g")])
    assert "--model: must not be empty" in capsys.readouterr().err
    from trust.evaluation import read_prompts

    assert read_prompts(prompts) == ["a red circle"]


def test_exit_codes_say_what_happened(tmp_path, capsys, monkeypatch):
    import trust.bench
    import trust.cli

    # an erase whose loss is NaN at the first step changes nothing: it says so, and does not exit 0 (its target
    # for the UNet is made NaN here; η = 1e30 did it before η was bounded)
    import trust.harness

    out = tmp_path / "nan"
    with monkeypatch.context() as patched:
        patched.setattr(trust.harness, "negative_guidance_target", lambda anchor, target, eta: anchor * float("nan"))
        assert main(["erase", "--target", "a red circle", "--max-steps", "2", "--probe-every", "0",
                     "--num-train-images", "2", "--data-steps", "2", "--metric-samples", "1", "--no-attacks",
                     "--no-progress", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "nothing erased from 'a red circle'" in captured.out and "\nerased" not in captured.out
    assert f"error: no weight changed, so {out} holds the original model" in captured.err
    # an --overwrite erase that does not finish (Ctrl-C here) leaves the previous run as it was
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import trust.erase

    monkeypatch.setattr(trust.erase, "run_erase", lambda model, scenario, config, folder, **kwargs: (
        (folder / "report.json").write_text("{}"), (_ for _ in ()).throw(KeyboardInterrupt))[1])
    assert main(["erase", "--target", "a red circle", "--out", str(out), "--overwrite", "--no-progress"]) == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".trust-previous-*"))  # and the folder it was put aside in is gone
    assert capsys.readouterr().err.endswith("interrupted: stopped before it finished\n")
    # Ctrl-C: one line and 130, not a traceback
    monkeypatch.setattr(trust.cli, "cmd_eval", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["eval", "--prompts", str(prompts), "--out", str(tmp_path / "e.json")]) == 130
    assert capsys.readouterr().err == "interrupted: stopped before it finished\n"
    # a bench runs each method and scenario once (individual is red)
    asked = {}
    monkeypatch.setattr(trust.bench, "run_bench", lambda model, methods, scenarios, *a, **k: asked.update(
        methods=methods, scenarios=scenarios))
    assert main(["bench", "--methods", "esd-x", "esd-x", "trust", "--scenarios", "red", "individual", "red",
                 "combination", "--seeds", "1", "--out", str(tmp_path / "b")]) == 0
    assert asked == {"methods": ("esd-x", "trust"), "scenarios": ("red", "combination")}


def test_prompt_files_take_plain_lines_json_records_and_json_strings(tmp_path):
    from trust.errors import TrustError
    from trust.evaluation import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text('# held out\na red circle\n{"prompt": "a blue star", "id": 3}\n"a green square"\n""\n'
                    '"quoted" words stay as typed\n\n  # a comment too\n"# not a comment"\n')
    assert read_prompts(path) == ["a red circle", "a blue star", "a green square", "", '"quoted" words stay as typed',
                                  "# not a comment"]
    path.write_text('a red circle\n[a bracketed note] stays a prompt\n["a blue star", "a red square"]\n')
    with pytest.raises(TrustError, match='p.jsonl:3: a JSON line must be a string or an object with a "prompt"'):
        read_prompts(path)


def test_usage_errors_name_the_subcommand_and_help_gives_each_methods_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["erase", "--preset", "red", "--out", str(tmp_path), "--foo"])
    err = capsys.readouterr().err
    assert err.startswith("usage: trust erase") and "unrecognized arguments: --foo" in err
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--out", str(tmp_path), "--seed", "9" * 400])
    assert "--seed: must be within 0..4294967295, got 999999999999... (400 characters)" in capsys.readouterr().err
    assert main(["erase", "--preset", "red", "--out", str(tmp_path), "--max-steps", "9" * 400]) == 2
    err = capsys.readouterr().err
    assert "--max-steps must be a whole number within 1..10000, got 999999999999... (400 digits)" in err
    with pytest.raises(SystemExit):
        main(["erase", "--help"])
    out = capsys.readouterr().out
    assert "--max-steps 300, --lr 0.01" in out  # trust's
    assert "trust+p: as trust, but --max-steps 200, --lr 0.05, --tau 1, --lambda-pres 20" in out
    assert "salun: as trust, but --lr 3e-05, --rho 0.5, --mask-every 0, no --tau" in out


def test_the_package_exports_the_api_lazily():
    import importlib.metadata
    import subprocess
    import sys

    import trust
    from trust.artifacts import load_erased
    from trust.unlearn import UnlearnConfig

    assert trust.load_erased is load_erased and trust.UnlearnConfig is UnlearnConfig  # trust.load_erased(model, DIR)
    import types

    assert not any(isinstance(getattr(trust, name), types.ModuleType) for name in trust.__all__)  # all stay names
    assert set(trust.__all__) <= set(dir(trust)) and trust.__version__ == importlib.metadata.version("trust")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trust.nope  # noqa: B018
    # `import trust` (and so the `trust` command's start) loads no torch
    code = "import sys, trust, trust.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_an_erase_whose_final_check_still_finds_the_target_says_so(tmp_path, capsys, monkeypatch):
    import trust.erase

    report = {"targets": ["a red circle"], "anchors": ["a green circle"], "stop_reason": "erased",
              "message": "the detector no longer finds the target after 20 steps", "steps": 20, "wall_seconds": 9.0,
              "changed_fraction": 0.01, "metrics": {"UA": 0.25, "IRA": 1.0, "CRA": 1.0}}
    monkeypatch.setattr(trust.erase, "run_erase", lambda *args, **kwargs: report)
    assert main(["erase", "--target", "a red circle", "--out", str(tmp_path / "x"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "warning: the final measurement still finds the target in 75% of its samples (UA 0.25 < 0.95)" in err
    assert out.startswith("tried to erase 'a red circle' (anchor 'a green circle')")  # not "erased"
    assert "\nthe steps ended (probe: target gone): the detector no longer finds" in out  # the probe's, in words
    # a typed target without --neighbour keeps its scene with each attribute of the concept changed
    assert "keeping the neighbours 'a red square', 'a blue circle' (measured as IRA" in err
    assert "erasing 'a red circle' (anchor 'a green circle'); the detector checks the concept as color=red + " \
           "shape=circle\n" in err
    assert main(["erase", "--target", "red circles", "--out", str(tmp_path / "plural"), "--no-progress"]) == 0
    assert "the detector checks the concept as color=red (words the model never trained on are no part of it: " \
           "circles (circle?))" in capsys.readouterr().err  # all red goes, not red circles: said before it runs
    seen = []
    monkeypatch.setattr(trust.erase, "run_erase", lambda model, scenario, *a, **k: seen.append(scenario) or report)
    for extra in (["--target", "a red circle"], ["--preset", "red"]):  # none, whatever a preset has
        assert main(["erase", *extra, "--no-neighbours", "--out", str(tmp_path / extra[0]), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert seen[-1].neighbours == () and "warning: no neighbours, so IRA" in err and "keeping" not in err
    report["metrics"]["UA"] = 1.0
    assert main(["erase", "--target", "a red circle", "--out", str(tmp_path / "y"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "final measurement" not in err and "broke" not in err
    report["metrics"] |= {"IRA": 0.5, "CRA": 0.25}  # erased, and what should stay went with it (half is too much)
    assert main(["erase", "--target", "a red circle", "--out", str(tmp_path / "z"), "--no-progress"]) == 0
    assert ("warning: it broke what it should keep (IRA 0.50, CRA 0.25: half or fewer of those samples drawn right)"
            in capsys.readouterr().err)
    report["metrics"] |= {"IRA": 1.0, "CRA": 1.0}  # erased, nothing broken, but an attack brings it back
    report |= {"ASR_paraphrase": 0.0, "ASR_embedding": 0.75}
    assert main(["erase", "--target", "a red circle", "--out", str(tmp_path / "w"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "attack success: paraphrases 0.00  optimised embedding 0.75" in out
    assert ("warning: an attack brings the erased target back in half its samples or more (optimised embedding "
            "0.75)") in err


def test_the_python_api_says_what_is_wrong_with_its_arguments(shapes_model, tmp_path):
    import trust

    with pytest.raises(trust.TrustError, match="give the model the erase started from .* got 'shapes'"):
        trust.load_erased("shapes", tmp_path)
    from trust.unlearn import unlearn

    config = trust.UnlearnConfig.for_method("trust+p")
    for args, message in ((("shapes", trust.PRESETS["red"], config), "unlearn's model must be a DiffusionModel"),
                          ((shapes_model, None, config), "unlearn's scenario must be a Scenario"),
                          ((shapes_model, trust.PRESETS["red"], {"lr": 0.1}), "unlearn's config must be")):
        with pytest.raises(trust.TrustError, match=message):
            unlearn(*args)
    utf16 = tmp_path / "prompts-utf16.txt"
    utf16.write_text("a red circle\n", encoding="utf-16")
    from trust.evaluation import read_prompts

    with pytest.raises(trust.TrustError, match="is not UTF-8 text \\(byte 0\\); save it as UTF-8"):
        read_prompts(utf16)
    with pytest.raises(ValueError, match="a seed must be a whole number within 0..4294967295, got 1180591620717"):
        trust.generate(shapes_model, "a red circle", seed=2**70)
    with pytest.raises(ValueError, match="give neighbours as a list of prompts, got the string 'a blue circle'"):
        trust.scenario_from_prompts("a red circle", "a blue circle")
    [result] = trust.evaluate(shapes_model, "a red circle", num_samples=1)  # one prompt, as generate takes it
    assert result["prompt"] == "a red circle" and len(result["samples"]) == 1


def test_out_folders_that_cannot_be_made_and_bench_seeds_are_refused_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "p.txt"
    blocker.write_text("x")
    # erase checks --out before the model loads: the model named here does not exist and is never reached
    assert main(["erase", "--model", str(tmp_path / "none"), "--target", "a red circle",
                 "--out", str(blocker / "sub")]) == 2
    assert f"cannot make --out {blocker / 'sub'}: {blocker} is a file" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--out", str(blocker / "sub")]) == 2
    assert f"cannot make --out {blocker / 'sub'}:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--seeds", "9" * 30, "--out", str(tmp_path / "b")])
    assert "--seeds: must be within 1..1000" in capsys.readouterr().err


def test_a_command_that_fails_leaves_no_empty_out_behind(tmp_path, capsys):
    missing = str(tmp_path / "no-model")  # every command below fails at loading it, after --out was made
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    for args, out in ((["generate", "--prompt", "x"], "new/out"), (["bench", "--quick"], "new/out"),
                      (["eval", "--prompts", str(prompts)], "new/out/e.json"),
                      (["erase", "--target", "a red circle"], "new/out"),
                      (["export", "--erased", str(tmp_path)], "new/out")):
        assert main([*args, "--model", missing, "--out", str(tmp_path / out)]) == 2
        assert "no-model' does not exist" in capsys.readouterr().err
        assert not (tmp_path / "new").exists(), args[0]
    kept = tmp_path / "kept"  # a folder that was there before stays
    kept.mkdir()
    assert main(["generate", "--prompt", "x", "--model", missing, "--out", str(kept)]) == 2
    assert kept.is_dir()


def test_a_command_stopped_half_way_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    import trust.visualize
    from trust.artifacts import write_text_atomic

    # generate, Ctrl-C while it writes the second image's heat maps: the first image's files go, the user's stay
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "mine.png").write_bytes(b"the user's")
    written = []
    save_figure = trust.visualize.save_figure

    def interrupted(figure, path):
        written.append(sorted(p.name for p in out.iterdir()))
        if len(written) == 2:
            raise KeyboardInterrupt
        save_figure(figure, path)

    monkeypatch.setattr(trust.visualize, "save_figure", interrupted)
    assert main(["generate", "--prompt", "a red circle", "--num-images", "2", "--steps", "2",
                 "--out", str(out)]) == 130
    assert len(written[1]) == 4  # (it had written three files of its own)
    assert [p.name for p in out.iterdir()] == ["mine.png"] and (out / "mine.png").read_bytes() == b"the user's"
    # a JSON file rewritten as a command goes (bench.json, eval's --out) is whole or as it was, never cut short
    saved = tmp_path / "bench.json"
    write_text_atomic(saved, '{"runs": [1, 2]}\n')
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(saved, '{"runs": [1, 2, 3], "x": "\ud800"}\n')  # fails half-way through writing
    assert saved.read_text() == '{"runs": [1, 2]}\n' and [p.name for p in tmp_path.iterdir()].count("bench.json") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "pictures"]  # no temporary file left


def test_half_precision_models_are_refused_with_the_reason(tmp_path):
    import torch

    import trust
    from trust.unlearn import unlearn

    half = trust.load_model("shapes", dtype=torch.float16)
    with pytest.raises(trust.TrustError, match="erasing needs the model in float32, and this one is in float16"):
        unlearn(half, trust.PRESETS["red"], trust.UnlearnConfig.for_method("trust+p"))
    with pytest.raises(trust.TrustError, match="load the model in float32 to apply an erase"):
        trust.load_erased(half, tmp_path)


def test_repeated_targets_a_taken_image_name_and_termination_are_handled(tmp_path, capsys, monkeypatch):
    import os
    import signal

    import trust.erase
    from trust.erase import ERASE_FILES

    # --target twice: both prompts are erased (what they share), not the last one alone
    seen = []
    monkeypatch.setattr(trust.erase, "run_erase", lambda model, scenario, *a, **k: (
        seen.append(scenario), (_ for _ in ()).throw(KeyboardInterrupt))[1])
    assert main(["erase", "--target", "a red circle", "--target", " a red star ", "--anchor", "   ",
                 "--no-progress", "--out", str(tmp_path / "two")]) == 130
    assert seen[0].targets == ("a red circle", "a red star") and seen[0].concept.describe() == "color=red"
    assert seen[0].target_anchors == ("", "")  # a blank anchor is the empty prompt, as "" is
    assert "keeping the neighbours 'a blue circle', 'a blue star'" in capsys.readouterr().err
    assert main(["erase", "--target", "a red circle", "--target", " ", "--out", str(tmp_path / "x")]) == 2
    assert "--target must not be empty" in capsys.readouterr().err
    # --preset with a target of another concept is refused (its neighbours would not fit); of its concept, kept
    assert main(["erase", "--preset", "red", "--target", "a blue star", "--out", str(tmp_path / "x")]) == 2
    assert ("--target 'a blue star' is not the red preset's concept (color=blue + shape=star, not color=red); leave "
            "out --preset") in capsys.readouterr().err
    assert main(["erase", "--preset", "combination", "--target", "a crimson disc", "--no-progress",
                 "--out", str(tmp_path / "disc")]) == 130
    assert seen[-1].targets == ("a crimson disc",) and seen[-1].neighbours == ("a red square", "a blue circle")
    assert not (tmp_path / "x").exists()
    # SIGTERM (kill, timeout) stops an --overwrite erase as Ctrl-C does: the previous run's files come back
    previous = tmp_path / "previous"
    (previous / "images").mkdir(parents=True)
    files = {"report.json": '{"metrics": {}}', "config.json": '{"config": {}}', "masks.json": "{}",
             "delta.safetensors": "x", "images/before_0.png": "png"}
    for name, text in files.items():
        (previous / name).write_text(text)
    assert {"report.json", "config.json", "masks.json", "delta.safetensors", "images"} <= set(ERASE_FILES)
    monkeypatch.setattr(trust.erase, "run_erase", lambda model, scenario, config, folder, **k: (
        (folder / "report.json").write_text("{}"), os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))[-1])
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["erase", "--target", "a red circle", "--overwrite", "--no-progress", "--out", str(previous)]) == 143
    assert {name: (previous / name).read_text() for name in files} == files
    assert not list(tmp_path.glob(".trust-previous-*")) and signal.getsignal(signal.SIGTERM) is handler
    assert capsys.readouterr().err.endswith("terminated (SIGTERM): stopped before it finished\n")
    # generate never replaces a file of the same name without --overwrite, and says so before any work
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "000_a-red-circle_seed3.png").write_text("my notes")
    args = ["generate", "--prompt", "a red circle", "--num-images", "1", "--seed", "3", "--steps", "2",
            "--out", str(out)]
    never = ["--model", str(tmp_path / "no-model")]  # (a model that is not reached)
    assert main([*args, *never]) == 2
    assert ("already holds 000_a-red-circle_seed3.png, which these images would replace: choose a new folder, or "
            "add --overwrite") in capsys.readouterr().err
    assert (out / "000_a-red-circle_seed3.png").read_text() == "my notes"
    assert main([*args, "--overwrite"]) == 0
    assert Image.open(out / "000_a-red-circle_seed3.png").size == (128, 128)
    (out / "000_a-red-circle_seed3_heatmaps.png").unlink()
    (out / "000_a-red-circle_seed3_heatmaps.png").mkdir()  # a folder in the way is never replaced
    assert main([*args, *never, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds a folder named 000_a-red-circle_seed3_heatmaps.png, where an image would go" in err
    with pytest.raises(SystemExit):  # an empty --out is not the working folder
        main(["eval", "--prompts", str(tmp_path / "p.txt"), "--out", ""])
    assert "--out: must not be empty" in capsys.readouterr().err


def test_two_erases_into_one_folder_one_is_refused_and_a_stale_lock_is_ignored(tmp_path, capsys, monkeypatch):
    """Two `trust erase` with the same --out both used to run and mix their files in it."""
    import os

    import trust.erase
    from trust.cli import LOCK_FILE, claim

    report = {"targets": ["a red circle"], "anchors": ["a green circle"], "stop_reason": "erased", "message": "m",
              "steps": 1, "wall_seconds": 1.0, "changed_fraction": 0.01, "metrics": {"UA": 1.0, "IRA": 1.0, "CRA": 1.0}}
    out = tmp_path / "same"
    held = []

    def run(model, scenario, config, folder, **kwargs):  # the run holds the folder while it writes
        held.append((folder / LOCK_FILE).read_text())
        # another `trust erase` into the same folder now: refused at once, before loading anything
        assert main(["erase", "--target", "a blue star", "--out", str(folder), "--no-progress"]) == 2
        assert f"--out {folder} is being written by another `trust erase` (process {os.getpid()})" in \
            capsys.readouterr().err
        with pytest.raises(trust.errors.TrustError, match="is being written by another `trust erase`"):
            claim(folder)  # two started together: the lock file's O_EXCL lets one through
        return report

    monkeypatch.setattr(trust.erase, "run_erase", run)
    assert main(["erase", "--target", "a red circle", "--out", str(out), "--no-progress"]) == 0
    assert held == [str(os.getpid())] and not (out / LOCK_FILE).exists()  # released at the end
    # a lock left by a killed run (its process is gone) holds nothing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_FILE).write_text(dead.stdout.strip())
    assert main(["erase", "--target", "a red circle", "--out", str(empty), "--no-progress"]) == 0
    assert held[-1] == str(os.getpid()) and not (empty / LOCK_FILE).exists()


def test_the_summary_says_why_the_steps_ended_once(tmp_path, capsys, monkeypatch):
    import trust.erase

    report = {"targets": ["a red circle"], "anchors": ["a green circle"], "stop_reason": "max_steps",
              "message": "ran all 20 steps", "steps": 20, "wall_seconds": 9.0, "changed_fraction": 0.01,
              "metrics": {"UA": 1.0, "IRA": 1.0, "CRA": 1.0}}
    monkeypatch.setattr(trust.erase, "run_erase", lambda *args, **kwargs: report)
    assert main(["erase", "--target", "a red circle", "--out", str(tmp_path / "x"), "--no-progress"]) == 0
    assert "\nthe steps ended: ran all 20 steps\n" in capsys.readouterr().out  # not "(ran all steps): ran all …"


def test_a_second_signal_does_not_cut_the_cleanup_short():
    """A second Ctrl-C (or `timeout -s INT`, which signals a process twice) used to interrupt what the first one's
    cleanup was doing: an --overwrite erase putting the previous run back."""
    import os
    import signal

    from trust.cli import stopped_by_signals

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt), stopped_by_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)  # while cleaning up: ignored
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            cleaned.append("done")
            raise
    assert cleaned == ["done"] and (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_command_whose_reader_went_away_still_finishes_its_work(tmp_path):
    """`trust generate ... | head -0`: what it prints goes nowhere, and its files are written all the same (a print
    raised BrokenPipeError, and an erase run through `| head` could remove its finished result)."""
    proc = subprocess.Popen([sys.executable, "-m", "trust", "generate", "--prompt", "a red circle", "--num-images", "1",
                             "--steps", "2", "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads what it prints
    proc.stderr.close()
    assert proc.wait(timeout=300) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000_a-red-circle_seed0.png",
                                                          "000_a-red-circle_seed0_heatmaps.png"]


def test_the_training_scripts_refuse_bad_flags_in_one_line(capsys, tmp_path):
    for argv, said in ((["train-detector", "--steps", "0"], "argument --steps: must be 1 or more, got 0"),
                       (["train-shapes", "--single", "--batch-size", "0"], "argument --batch-size: must be 1 or more")):
        with pytest.raises(SystemExit) as exit_:  # (torch's "Expected positive integer total_steps" came first)
            main(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    # run as a module, the recipe says what is wrong as `trust train-shapes` does: one line, no traceback
    done = subprocess.run([sys.executable, "-m", "trust.shapes.train", "--text-width", "63", "--out",
                           str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: text_width must be a positive multiple of 4 (4 attention heads), got 63"
    assert not (tmp_path / "m").exists()


def test_erase_warns_of_flags_a_baseline_does_not_read(tmp_path, capsys):
    taken = tmp_path / "file"
    taken.write_text("")  # (--out a file: refused right after the flags are read, before the model loads)
    for method, flags, said in (
            ("esd-x", ["--tau", "3", "--lambda-cip", "5"], "esd-x does not read --tau, --lambda-cip"),
            ("salun", ["--hessian", "fisher"], "salun does not read --hessian"),
            ("trust", ["--tau", "3", "--lambda-cip", "5"], None)):
        assert main(["erase", "--target", "a blue star", "--method", method, *flags, "--out", str(taken)]) == 2
        err = capsys.readouterr().err
        assert (said in err) if said else "does not read" not in err
        assert err.rstrip().endswith("is a file; give a folder")
    assert main(["erase", "--target", "a blue star", "--method", "trust", "--lambda-pres", "1", "--out",
                 str(tmp_path / "out")]) == 2  # the way out as a flag, not as the config's field
    assert "use --method trust+p for --lambda-pres > 0" in capsys.readouterr().err


def test_erase_help_gives_the_ranges_the_config_checks():
    from trust.cli import UNLEARN_FLAGS
    from trust.unlearn import MAX_ETA, MAX_LAMBDA, MAX_LR, MAX_STEPS, UnlearnConfig

    said = {flag: text for flag, _, text in UNLEARN_FLAGS}
    assert f"1..{MAX_STEPS}" in said["--max-steps"] and f"at most {MAX_LR:g}" in said["--lr"]
    assert f"at most {MAX_ETA:g}" in said["--eta"] and f"0..{MAX_LAMBDA:.0e}".replace("+0", "") in said["--lambda-cip"]
    for flag, bad in (("--max-steps", MAX_STEPS + 1), ("--lr", MAX_LR * 2), ("--eta", MAX_ETA * 2),
                      ("--lambda-cip", MAX_LAMBDA * 2), ("--num-train-images", 1025), ("--data-steps", 1001),
                      ("--batch-size", 257), ("--stop-ira", 1.5), ("--tau", 10.5)):
        with pytest.raises(ValueError):  # one past the range the help gives is refused
            UnlearnConfig.for_method("trust", **{flag[2:].replace("-", "_"): bad})
