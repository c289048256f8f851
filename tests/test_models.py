import json
import logging
import re
import shutil
import time

import pytest
import torch

from trust.errors import ModelLoadError
from trust.generation import generate
from trust.models import load_model


def test_shapes_model_parts(shapes_model):
    assert shapes_model.name == "shapes"
    assert shapes_model.vae is None and shapes_model.detector is not None
    assert shapes_model.image_size == 32 and shapes_model.latent_channels == 3
    assert shapes_model.unet.dtype == torch.float32
    assert shapes_model.tokens("an amber star")[1:4] == ["an", "amber", "star"]
    assert not any(p.requires_grad for p in shapes_model.unet.parameters())


def test_token_labels_are_text_not_the_byte_level_spelling(shapes_model):
    tokens = shapes_model.tokens("a 🔴 circle 赤")
    assert tokens[1:4] == ["a", "🔴", "circle"]  # (one token: "ðŁĶ´" before)
    assert tokens[4:-1] == ["赤 (1/3)", "赤 (2/3)", "赤 (3/3)"]  # one character in three tokens: each says so
    assert len(tokens) == shapes_model.num_tokens("a 🔴 circle 赤")  # a label per token: the heat maps line up


def test_stable_diffusion_folder_loads_and_generates(tiny_sd_dir):
    model = load_model(tiny_sd_dir)
    assert model.vae is not None and model.detector is None
    assert model.latent_size == 16 and model.image_size == 32 and model.max_tokens == 77
    out = generate(model, ["a photo of a cat", ""], num_images_per_prompt=2, seed=3, num_inference_steps=3)
    assert out.images.shape == (4, 3, 32, 32)
    assert out.seeds == (3, 4, 3, 4)
    assert torch.isfinite(out.images).all()
    again = generate(model, "a photo of a cat", num_images_per_prompt=2, seed=3, num_inference_steps=3)
    torch.testing.assert_close(again.images, out.images[:2])


def test_loading_draws_no_progress_bar_and_leaves_the_callers_setting(capfd):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    load_model("shapes")
    assert "Loading weights" not in capfd.readouterr().err  # transformers draws one for the text encoder
    assert transformers_logging.is_progress_bar_enabled()  # (the bars of the caller's own loads stay on)


def test_unknown_model_name_says_what_is_accepted():
    with pytest.raises(ModelLoadError, match="unknown model 'not a model!'.*'shapes'"):
        load_model("not a model!")


def test_an_empty_model_name_is_refused():
    with pytest.raises(ModelLoadError, match="no model given: use 'shapes'.*a local folder"):
        load_model("  ")
    with pytest.raises(ModelLoadError, match=r"no model given: use 'shapes' \(the embedded model\) or a Hugging Face"):
        load_model("", local_folders=False)  # a server's box offers no local folder


def test_missing_local_folder():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/folder")


def test_hub_id_fails_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without a network
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="could not fetch 'someone/some-model'.*local folder"):
        load_model("someone/some-model")
    assert time.perf_counter() - start < 30


@pytest.fixture
def assets_copy(tmp_path, monkeypatch):
    from trust.models import shapes_dir

    shutil.copytree(shapes_dir(), tmp_path / "shapes")
    monkeypatch.setenv("TRUST_ASSETS", str(tmp_path))
    return tmp_path / "shapes"


def test_corrupted_weights_name_the_file_and_the_fix(assets_copy):
    weights = assets_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"unet.*python -m trust\.shapes\.train"):
        load_model("shapes")


def test_weights_that_are_not_numbers_are_refused_at_load(assets_copy):
    from safetensors.torch import load_file, save_file

    weights = assets_copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if n.endswith("attn2.to_k.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))  # a well-formed file of broken numbers
    save_file(tensors, weights)
    with pytest.raises(ModelLoadError, match=rf"unet holds weights that are not finite numbers \(NaN or inf, in "
                                             rf"{re.escape(name)}\): the file is corrupted. .*trust\.shapes\.train"):
        load_model("shapes")


def test_a_missing_unet_file_is_said_once_by_the_message(tiny_sd_dir, tmp_path):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    logged = logging.Handler()
    logged.emit = lambda record: seen.append(record.getMessage())
    seen = []
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(logged)
    try:
        with pytest.raises(ModelLoadError, match=r"could not load the unet from .*sd/unet: it holds no "
                                                 r"diffusion_pytorch_model\.safetensors\. Re-download or re-save"):
            load_model(folder)
    finally:
        logger.removeHandler(logged)
    assert not any("An error occurred" in m for m in seen)  # (diffusers' own line came before the message)


def test_missing_detector_weights(assets_copy):
    (assets_copy / "detector" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"detector.*trust\.shapes\.train_detector` \(about 3 minutes") as err:
        load_model("shapes")
    assert "trust.shapes.train &&" not in str(err.value)  # the hour-long retrain of the whole model is not needed


def test_missing_assets_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUST_ASSETS", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"missing.*python -m trust\.shapes\.train"):
        load_model("shapes")


def test_tokenizing_from_two_threads_at_once_keeps_each_calls_padding(shapes_model):
    """A job's thread and a page request share one tokenizer, whose padding settings live in one Rust object:
    an empty prompt once came back 2 tokens long instead of 24, and the job failed at step 0."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that a race shows within the test
    stop, errors, shapes = threading.Event(), [], set()

    def page():
        while not stop.is_set():
            try:
                shapes_model.num_tokens("a red circle")
                shapes_model.tokens("a red circle")
            except Exception as err:  # (an unguarded tokenizer raises "Already borrowed" here)
                errors.append(repr(err))

    threads = [threading.Thread(target=page) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(1500):
            try:
                shapes.add(tuple(shapes_model.tokenize(["", "a red circle"]).shape))
            except Exception as err:
                errors.append(repr(err))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert shapes == {(2, shapes_model.max_tokens)} and not errors, (shapes, errors[:3])


def test_a_folder_whose_parts_do_not_fit_together_is_refused_in_one_line(tiny_sd_dir, tmp_path, capfd):
    no_vocab = shutil.copytree(tiny_sd_dir, tmp_path / "no-vocab")
    for f in (no_vocab / "tokenizer").iterdir():  # an empty tokenizer/ loads, with no words in it
        f.unlink()
    with pytest.raises(ModelLoadError, match="its tokenizer .* holds no vocabulary"):
        load_model(no_vocab)
    wrong_width = shutil.copytree(tiny_sd_dir, tmp_path / "wrong-width")  # a config that does not fit its weights
    config = json.loads((wrong_width / "text_encoder" / "config.json").read_text())
    (wrong_width / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ModelLoadError, match="the shapes of its weights differ from what its config.json says"):
        load_model(wrong_width)
    assert "LOAD REPORT" not in capfd.readouterr().err  # (transformers' 25-line table before it: dropped)
    config_only = shutil.copytree(tiny_sd_dir, tmp_path / "config-only")
    (config_only / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # its config alone: the special tokens,
    for name in ("vocab.json", "merges.txt"):                               # no words
        (config_only / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="its tokenizer .* holds no vocabulary"):
        load_model(config_only)
    no_vae = shutil.copytree(tiny_sd_dir, tmp_path / "no-vae")
    shutil.rmtree(no_vae / "vae")  # a latent UNet without its VAE is no pixel-space model
    with pytest.raises(ModelLoadError, match="its UNet takes 4 channels and without a vae/ folder it would draw 3"):
        load_model(no_vae)
