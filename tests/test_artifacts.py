"""Erase folders: what `trust erase` writes, and loading a delta only onto its own model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from trust.artifacts import DELTA_FILE, export_diffusers, load_erased, save_delta
from trust.cli import main
from trust.concepts import PRESETS
from trust.errors import TrustError
from trust.unlearn import UnlearnConfig, unlearn

FAST = {"num_train_images": 2, "retain_prompts": 2,
        "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1}


@pytest.fixture(scope="module")
def erase_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("erase")
    code = main(["erase", "--model", "shapes", "--preset", "combination", "--target", "a red circle",
                 "--neighbour", "a red square", "--neighbour", "a blue circle", "--method", "trust",
                 "--seed", "0", "--max-steps", "4", "--lr", "0.05", "--probe-every", "2",
                 "--max-changed", "0.01", "--whiten", "0.1", "--schedule", "cosine", "--metric-samples", "1",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def test_erase_writes_every_artifact(erase_dir):
    assert {p.name for p in erase_dir.iterdir()} >= {DELTA_FILE, "masks.json", "config.json", "report.json",
                                                       "images"}
    report = json.loads((erase_dir / "report.json").read_text())
    for key in ("method", "target", "anchor", "neighbours", "steps", "wall_seconds", "changed_fraction", "metrics"):
        assert key in report
    assert report["method"] == "trust" and report["target"] == "a red circle"
    assert report["neighbours"] == ["a red square", "a blue circle"] and report["anchor"] == "a green circle"
    assert report["anchors"] == ["a green circle"]  # no --anchor: red changes colour
    assert 1 <= report["steps"] <= 4 and 0 < report["changed_fraction"] < 0.02
    assert set(report["metrics"]) >= {"UA", "IRA", "CRA"}
    assert all(0 <= report["metrics"][k] <= 1 for k in ("UA", "IRA", "CRA"))
    masks = json.loads((erase_dir / "masks.json").read_text())
    assert "0" in masks and all(isinstance(rows, list) for rows in masks["0"].values())
    config = json.loads((erase_dir / "config.json").read_text())
    assert config["config"]["max_steps"] == 4 and config["config"]["lr"] == 0.05
    assert config["scenario"]["anchors"] == ["a green circle"] and "anchor" not in config["scenario"]
    assert config["config"]["max_changed"] == 0.01 and report["changed_fraction"] <= 0.01
    assert config["config"]["whiten"] == 0.1 and config["config"]["schedule"] == "cosine"
    images = sorted(p.name for p in (erase_dir / "images").iterdir())
    assert len(images) == 6 and images[0] == "after_00_a-red-circle.png"


def test_trust_eval_at_the_reports_metric_seed_gives_its_figures(erase_dir, tmp_path):
    """report.json says how its metrics were drawn, so `trust eval --erased` can draw them again, sample for sample."""
    from trust.concepts import Concept, generated_right
    from trust.shapes.detector import Verdict
    from trust.shapes.world import parse_prompt

    report = json.loads((erase_dir / "report.json").read_text())
    assert report["metric_seed"] == 20_000 and report["metrics"]["num_samples"] == 1
    (tmp_path / "prompts.txt").write_text("a red circle\na red square\n")
    assert main(["eval", "--erased", str(erase_dir), "--prompts", str(tmp_path / "prompts.txt"), "--samples", "1",
                 "--seed", str(report["metric_seed"]), "--out", str(tmp_path / "eval.json")]) == 0
    target, neighbour = (Verdict(*(r["samples"][0][k] for k in ("color", "shape", "background")), 1.0, 1.0, 1.0)
                         for r in json.loads((tmp_path / "eval.json").read_text())["results"])
    shares = report["metrics"]["per_prompt"]
    assert shares["a red circle"] == (not Concept.from_prompt("a red circle").present(target))
    assert shares["a red square"] == generated_right("a red square", neighbour)
    # and every prompt the metrics counted (the target's wordings, the neighbours, the unrelated prompts), each
    # sample as the report has it: the target's wordings count the concept gone, the others their scene drawn right
    (tmp_path / "all.txt").write_text("\n".join(shares) + "\n")
    assert main(["eval", "--erased", str(erase_dir), "--prompts", str(tmp_path / "all.txt"), "--samples", "1",
                 "--seed", str(report["metric_seed"]), "--out", str(tmp_path / "all.json")]) == 0
    concept = Concept.from_prompt("a red circle")
    for result in json.loads((tmp_path / "all.json").read_text())["results"]:
        prompt, v = result["prompt"], result["samples"][0]
        verdict = Verdict(v["color"], v["shape"], v["background"], 1.0, 1.0, 1.0)
        counted = not concept.present(verdict) if concept.present(parse_prompt(prompt)) else \
            generated_right(prompt, verdict)
        assert shares[prompt] == counted, prompt
    assert len(shares) > 10


def test_load_erased_applies_the_delta_to_a_copy(shapes_model, erase_dir, tmp_path):
    erased = load_erased(shapes_model, erase_dir)
    assert erased.unet is not shapes_model.unet
    by_file = load_erased(shapes_model, erase_dir / DELTA_FILE)  # the delta itself names its folder
    assert all(torch.equal(a, b) for a, b in zip(erased.unet.parameters(), by_file.unet.parameters()))
    with pytest.raises(TrustError, match="does not exist; pass a folder written by `trust erase`"):
        load_erased(shapes_model, tmp_path / "absent")
    with pytest.raises(ValueError, match="does not exist"):  # one except clause for every refusal of the package
        load_erased(shapes_model, tmp_path / "absent")
    with pytest.raises(TrustError, match="give the erase folder as a path, got NoneType"):
        load_erased(shapes_model, None)
    changed = [n for (n, a), (_, b) in zip(shapes_model.unet.named_parameters(), erased.unet.named_parameters())
               if not torch.equal(a, b)]
    assert changed and all("attn2.to_k" in n or "attn2.to_v" in n for n in changed)


def test_eval_on_an_erased_model(erase_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--erased", str(erase_dir), "--prompts", str(prompts), "--samples", "2",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["erased"] == str(erase_dir)


def test_a_tampered_delta_is_refused(shapes_model, erase_dir, tmp_path):
    tensors = load_file(erase_dir / DELTA_FILE)
    from safetensors import safe_open

    with safe_open(erase_dir / DELTA_FILE, framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in tensors if k.endswith("::delta"))
    tensors[key] = tensors[key] * 100
    save_file(tensors, tmp_path / DELTA_FILE, metadata=metadata)
    with pytest.raises(TrustError, match="modified after it was written"):
        load_erased(shapes_model, tmp_path)
    (tmp_path / DELTA_FILE).write_bytes(b"garbage")
    with pytest.raises(TrustError, match="not a valid safetensors file"):
        load_erased(shapes_model, tmp_path)
    (tmp_path / DELTA_FILE).unlink()
    with pytest.raises(TrustError, match="holds no delta.safetensors"):
        load_erased(shapes_model, tmp_path)
    (tmp_path / "report.json").write_text("{}")  # a file of the folder, not the folder
    with pytest.raises(TrustError, match="report.json is a file; pass the folder written by `trust erase`"):
        load_erased(shapes_model, tmp_path / "report.json")


@pytest.mark.parametrize(("change", "message"), [
    (lambda t, k: t.pop(k.replace("::rows", "::delta")), "needs exactly a '::rows' and a '::delta'"),
    (lambda t, k: t.__setitem__(k, t[k][:0]), "not a list of distinct row indices"),  # no rows
    (lambda t, k: t.__setitem__(k, t[k][:-1]), "one per delta row"),  # fewer rows than delta rows
    (lambda t, k: t.__setitem__(k, t[k].float()), "not a list of distinct row indices"),
    (lambda t, k: t.__setitem__(k, -1 - t[k]), "does not fit the model"),  # negative rows would wrap around
    (lambda t, k: t.__setitem__(k.replace("::rows", "::delta"), t[k.replace("::rows", "::delta")].long()),
     "is int64, not float32"),
    (lambda t, k: t.__setitem__(k.replace("::rows", "::delta"), t[k.replace("::rows", "::delta")] != 0),
     "is bool, not float32"),
    (lambda t, k: t.pop(k), "'.*' does not have them"),  # the weight whose rows are missing is the one named
    (lambda t, k: t.__setitem__("notes", t[k].clone()), "it holds 'notes', which is neither"),
])
def test_a_well_signed_but_malformed_delta_is_refused(shapes_model, erase_dir, tmp_path, change, message):
    """A delta made by hand (its checksum recomputed, as anyone can): refused with the reason, never applied."""
    from safetensors import safe_open

    from trust.artifacts import _digest

    tensors = load_file(erase_dir / DELTA_FILE)
    with safe_open(erase_dir / DELTA_FILE, framework="pt") as f:
        metadata = f.metadata()
    rows_key = next(k for k in sorted(tensors) if k.endswith("::rows") and tensors[k].numel() > 1)
    change(tensors, rows_key)
    save_file(tensors, tmp_path / DELTA_FILE, metadata={**metadata, "payload_sha256": _digest(tensors)})
    with pytest.raises(TrustError, match=message) as refused:
        load_erased(shapes_model, tmp_path)
    if "does not have them" in message:
        assert rows_key.removesuffix("::rows") in str(refused.value)


def test_a_delta_from_another_model_is_refused(shapes_model, erase_dir, tiny_sd_dir):
    from trust.models import load_model

    with pytest.raises(TrustError, match="another architecture"):
        load_erased(load_model(tiny_sd_dir), erase_dir)
    # the erase applied already: said so, not taken for another model
    erased = load_erased(shapes_model, erase_dir)
    with pytest.raises(TrustError, match="this 'shapes' already has .*delta.safetensors's erase applied"):
        load_erased(erased, erase_dir)
    # same architecture, other weights: the fingerprint tells them apart
    with torch.no_grad():
        next(p for n, p in erased.unet.named_parameters() if "attn2.to_k" in n)[0, 0] += 1e-3
    with pytest.raises(TrustError, match="with other weights than this 'shapes'"):
        load_erased(erased, erase_dir)


def test_a_delta_that_changes_nothing_still_belongs_to_its_model(shapes_model, tiny_sd_dir, tmp_path):
    """An erase that changed no weight writes an empty delta: it loads on its own model only."""
    from trust.models import load_model

    assert save_delta(tmp_path / DELTA_FILE, shapes_model, shapes_model.unet) == 0
    same = load_erased(shapes_model, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(same.unet.parameters(), shapes_model.unet.parameters()))
    with pytest.raises(TrustError, match="with other weights than this"):
        load_erased(load_model(tiny_sd_dir), tmp_path)


def test_the_same_delta_saved_twice_is_the_same_file(shapes_model, erase_dir, tmp_path):
    """Reproducible to the byte: safetensors writes metadata keys in hash-map order, different on every call."""
    erased = load_erased(shapes_model, erase_dir)
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for f in files:
        save_delta(f, shapes_model, erased.unet, extra={"method": "trust", "seed": 0, "target": "a red circle"})
    assert len({f.read_bytes() for f in files}) == 1
    assert (files[0].stat().st_mode & 0o777) == 0o644
    header = files[0].read_bytes()
    header = json.loads(header[8:8 + int.from_bytes(header[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    (tmp_path / "again").mkdir()
    files[0].rename(tmp_path / "again" / DELTA_FILE)
    again = load_erased(shapes_model, tmp_path / "again")  # the library still reads it, checksum and all
    assert all(torch.equal(a, b) for a, b in zip(again.unet.parameters(), erased.unet.parameters()))


def test_cli_rejects_bad_erase_input(tmp_path, capsys):
    assert main(["erase", "--target", "", "--out", str(tmp_path)]) == 2
    assert "--target must not be empty" in capsys.readouterr().err
    assert main(["erase", "--target", "a red circle", "--anchor", "a red circle", "--out", str(tmp_path)]) == 2
    assert "equals the anchor" in capsys.readouterr().err
    assert main(["erase", "--target", "a red circle", "--neighbour", "a red circle", "--out", str(tmp_path)]) == 2
    assert "is also a target" in capsys.readouterr().err
    assert main(["erase", "--preset", "red", "--tau", "42", "--out", str(tmp_path)]) == 2
    assert "tau must be within" in capsys.readouterr().err
    assert main(["erase", "--preset", "red", "--eta", "0", "--out", str(tmp_path)]) == 2
    assert "eta must be > 0" in capsys.readouterr().err
    assert main(["erase", "--preset", "red", "--max-steps", "0", "--out", str(tmp_path)]) == 2
    assert "--max-steps must be a whole number within 1..10000" in capsys.readouterr().err  # the flag, not the field
    out = tmp_path / "never"
    assert main(["erase", "--target", "a zorblax", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "it names no colour" in err and "erase (" not in err  # refused before the progress bar starts
    assert not out.exists()  # and before the output folder is made


def test_stable_diffusion_delta_and_diffusers_export(tiny_sd_dir, tmp_path, capfd):
    from diffusers import StableDiffusionPipeline

    from trust.concepts import scenario_from_prompts
    from trust.models import ModelLoadError, load_model

    model = load_model(tiny_sd_dir)
    scenario = scenario_from_prompts("a photo of a nude person", [], anchor="a photo of a person")
    result = unlearn(model, scenario, UnlearnConfig(max_steps=2, lr=0.05, probe_every=0, **FAST))
    # ShapesWorld's stock unrelated prompts mean nothing to SD: its report lists none (a given anchor stays)
    assert scenario.unrelated and result.scenario.unrelated == ()
    assert result.scenario.target_anchors == ("a photo of a person",)
    assert save_delta(tmp_path / DELTA_FILE, model, result.unet) > 0
    erased = load_erased(model, tmp_path)
    for (n, a), (_, b) in zip(result.unet.named_parameters(), erased.unet.named_parameters()):
        assert torch.equal(a, b), n  # bit for bit: what the erase measured is what the delta gives back
    capfd.readouterr()
    export_diffusers(erased, tmp_path / "pipeline")
    assert "Writing model shards" not in capfd.readouterr().err  # (transformers' bar, for a folder written at once)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline", use_safetensors=True)
    exported = dict(pipe.unet.named_parameters())
    for n, p in erased.unet.named_parameters():
        assert torch.equal(exported[n], p), n
    with pytest.raises(ModelLoadError, match="is not a model folder in diffusers layout: it has no unet/"):
        load_model(tmp_path / "pipeline" / "tokenizer")  # a folder, but not a model's
    with pytest.raises(TrustError, match="only latent"):
        export_diffusers(load_model("shapes"), tmp_path / "nope")
    with pytest.raises(TrustError, match="is not an empty folder; export into a new or empty folder"):
        export_diffusers(erased, tmp_path / "pipeline")  # (written above) nothing is written over
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrustError, match="notes.txt is a file; export into a new or empty folder"):
        export_diffusers(erased, tmp_path / "notes.txt")
    assert PRESETS["combination"].targets == ("a red circle",)


def test_cli_erase_on_stable_diffusion_says_nothing_is_measured(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sd"
    assert main(["erase", "--model", str(tiny_sd_dir), "--target", "a photo of a cat", "--method", "trust",
                 "--max-steps", "2", "--lr", "0.05", "--probe-every", "0", "--num-train-images", "2",
                 "--data-steps", "2", "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "has no concept detector, so UA, IRA and CRA are not measured; steps 2" in captured.out
    assert "IRA" not in captured.err  # no warning about neighbours when nothing is measured
    assert "erasing 'a photo of a cat' (anchor: the empty prompt)" in captured.err  # SD gets the empty anchor
    assert "fine-tuned to erase 'a photo of a cat' (anchor: the empty prompt)" in captured.out  # unmeasured: no
    #                                                                                              "erased"
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] is None and report["unrelated"] == [] and report["changed_fraction"] > 0
    assert report.get("ASR_paraphrase") is None
    # trust+p with no neighbours on a model without ShapesWorld's scenes would keep nothing: it says so
    import trust.erase

    with monkeypatch.context() as patched:
        patched.setattr(trust.erase, "run_erase", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(["erase", "--model", str(tiny_sd_dir), "--target", "a photo of a cat", "--method", "trust+p",
                     "--out", str(tmp_path / "sd-p")]) == 130
    assert "trust+p preserves nothing (give --neighbour, or use --method trust)" in capsys.readouterr().err
    # `trust export`: a diffusers pipeline folder with the erased UNet
    from diffusers import StableDiffusionPipeline

    from trust.models import load_model

    assert main(["export", "--model", str(tiny_sd_dir), "--erased", str(out), "--out", str(tmp_path / "pipe")]) == 0
    assert "wrote the erased model to" in capsys.readouterr().out
    exported = dict(StableDiffusionPipeline.from_pretrained(tmp_path / "pipe").unet.named_parameters())
    erased = load_erased(load_model(tiny_sd_dir), out)
    assert all(torch.equal(exported[n], p) for n, p in erased.unet.named_parameters())
    assert main(["export", "--model", str(tiny_sd_dir), "--erased", str(out), "--out", str(tmp_path / "pipe")]) == 2
    assert "not empty" in capsys.readouterr().err  # never written over
    # stopped half-way (Ctrl-C while the UNet is written, after the VAE): no half pipeline is left, and the
    # empty folder given stays
    from diffusers import UNet2DConditionModel

    half = tmp_path / "half"
    half.mkdir()
    seen = []
    monkeypatch.setattr(UNet2DConditionModel, "save_pretrained", lambda self, *a, **k: (
        seen.extend(half.iterdir()), (_ for _ in ()).throw(KeyboardInterrupt))[1])
    assert main(["export", "--model", str(tiny_sd_dir), "--erased", str(out), "--out", str(half)]) == 130
    assert seen and half.is_dir() and not any(half.iterdir())  # (it had written some of the pipeline)
    monkeypatch.undo()
    assert main(["export", "--model", "shapes", "--erased", str(out), "--out", str(tmp_path / "p2")]) == 2
    assert "is a pixel-space model (no VAE)" in capsys.readouterr().err
    # both folders are checked before the model loads: a model that does not exist is not reached
    missing = str(tmp_path / "no-model")
    assert main(["export", "--model", missing, "--erased", str(out), "--out", str(tmp_path / "pipe")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--model", missing, "--erased", str(tmp_path / "none"), "--out", str(tmp_path / "p3")]) == 2
    assert f"--erased {tmp_path / 'none'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "p3").exists()  # refused before --out was made
