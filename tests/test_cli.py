import json
import subprocess
import sys

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


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trust", *args], capture_output=True, text=True, timeout=300)


def test_bad_input_gives_one_line_errors(tmp_path):
    result = run_cli("generate", "--prompt", "a red circle", "--num-images", "0", "--out", str(tmp_path))
    assert result.returncode == 2 and "--num-images: must be 1 or more, got 0" in result.stderr
    result = run_cli("generate", "--prompt", "x", "--num-images", "-3", "--out", str(tmp_path))
    assert result.returncode == 2 and "must be 1 or more" in result.stderr
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
    assert "warning:" in result.stderr and "the end was cut" in result.stderr


def test_outputs_and_devices_are_checked_before_any_work(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\ufeffa red circle\n")  # a byte-order mark (as some editors write) is not a prompt
    assert main(["eval", "--prompts", str(prompts), "--samples", "1", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; give the JSON file to write" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a red circle", "--out", str(prompts)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    for device, message in (("tpu", "unknown device 'tpu'"), ("cuda:7", "asked for, but this machine has")):
        assert main(["generate", "--prompt", "x", "--device", device, "--out", str(tmp_path / "g")]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a seed out of range is a usage error
        main(["generate", "--prompt", "x", "--seed", "-1", "--out", str(tmp_path / "g")])
    assert "must be within 0..4294967295" in capsys.readouterr().err
    # an erase folder that holds files is not written into (two runs would mix), unless --overwrite
    out = tmp_path / "erase"
    (out / "images").mkdir(parents=True)
    (out / "images" / "after_00_old.png").write_bytes(b"old")
    args = ["erase", "--target", "a red circle", "--max-steps", "1", "--probe-every", "0", "--num-train-images", "2",
            "--data-steps", "2", "--metric-samples", "1", "--no-attacks", "--no-progress", "--out", str(out)]
    assert main(args) == 2 and "is not empty; choose a new folder, or add --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "images" / "after_00_old.png").exists() and (out / "report.json").is_file()
    assert oct((out / "delta.safetensors").stat().st_mode & 0o777) == "0o644"
    err = capsys.readouterr().err
    assert "erasing 'a red circle' (anchor 'a green circle')" in err  # said before it runs
    assert "warning: no --neighbour given, so IRA" in err
    # a bench folder that holds a bench.json is continued (--resume) or left alone, never overwritten
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(tmp_path / "bench")]) == 2
    assert "exists; add --resume to continue it" in capsys.readouterr().err
    # an erase folder is not a model, and an empty --model is not "shapes"
    assert main(["eval", "--model", str(out), "--prompts", str(prompts), "--out", str(tmp_path / "e.json")]) == 2
    assert "is an erase folder (it holds delta.safetensors), not a model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", " ", "--prompt", "x", "--out", str(tmp_path / "g")])
    assert "--model: must not be empty" in capsys.readouterr().err
    from trust.evaluation import read_prompts

    assert read_prompts(prompts) == ["a red circle"]
