import json

import pytest
import torch

from trust.generation import generate
from trust.models import load_model
from trust.shapes.train import TrainConfig, train
from trust.shapes.train_detector import train_detector


def test_training_script_writes_a_loadable_model(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    result = train(TrainConfig(steps=3, batch_size=4, save_every=3), out, progress=False)
    assert len(result["losses"]) == 3 and all(loss > 0 for loss in result["losses"])
    meta = json.loads((out / "trust.json").read_text())
    assert meta["trained_steps"] == 3 and meta["train_config"]["seed"] == 0
    train_detector(out / "detector", steps=2, batch_size=8, pool_size=16, progress=False)
    monkeypatch.setenv("TRUST_ASSETS", str(tmp_path))
    model = load_model("shapes")
    assert model.detector is not None
    images = generate(model, "a red circle", num_inference_steps=2).images
    assert images.shape == (1, 3, 32, 32)


def test_training_goes_on_from_a_model_folder(tmp_path):
    train(TrainConfig(steps=2, batch_size=2, save_every=2), tmp_path / "a", progress=False)
    result = train(TrainConfig(steps=2, batch_size=2, save_every=2, lr=1e-4), tmp_path / "b", progress=False,
                   resume=tmp_path / "a")
    meta = json.loads((tmp_path / "b" / "trust.json").read_text())
    assert meta["history"][0]["trained_steps"] == 2 and meta["train_config"]["lr"] == 1e-4
    assert len(result["losses"]) == 2


def test_min_snr_weighting_and_stop_after(tmp_path):
    result = train(TrainConfig(steps=10, stop_after=2, batch_size=2, save_every=5, min_snr_gamma=5.0),
                   tmp_path / "m", progress=False)
    assert len(result["losses"]) == 2
    meta = json.loads((tmp_path / "m" / "trust.json").read_text())
    assert meta["trained_steps"] == 2 and meta["train_config"]["min_snr_gamma"] == 5.0


def test_training_is_reproducible_from_the_seed(tmp_path):
    first = train(TrainConfig(steps=2, batch_size=2, save_every=2), tmp_path / "a", progress=False)
    second = train(TrainConfig(steps=2, batch_size=2, save_every=2), tmp_path / "b", progress=False)
    assert first["losses"] == second["losses"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_v_prediction_goes_on_from_an_epsilon_model(tmp_path):
    train(TrainConfig(steps=2, batch_size=2, save_every=2), tmp_path / "eps", progress=False)
    train(TrainConfig(steps=2, batch_size=2, save_every=2, prediction_type="v_prediction"), tmp_path / "v",
          progress=False, resume=tmp_path / "eps")
    config = json.loads((tmp_path / "v" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    model = load_model(tmp_path / "v")
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert generate(model, "a red circle", num_inference_steps=2).images.shape == (1, 3, 32, 32)


def test_prediction_target_matches_diffusers():
    from diffusers import DDIMScheduler

    from trust.models import prediction_target

    x0, noise = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 500, 999])
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    v = prediction_target(scheduler, x0, noise, t)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, noise, t))
    epsilon = DDIMScheduler.from_config(scheduler.config, prediction_type="epsilon")
    assert torch.equal(prediction_target(epsilon, x0, noise, t), noise)
    # v recovers x_0 from x_t the way the scheduler's step does: x_0 = √ᾱ x_t − √(1−ᾱ) v
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        TrainConfig(prediction_type="sample")


def test_text_width_sets_encoder_and_cross_attention(tmp_path):
    train(TrainConfig(steps=2, batch_size=2, save_every=2, text_width=32), tmp_path / "w", progress=False)
    model = load_model(tmp_path / "w")
    assert model.text_encoder.config.hidden_size == 32 and model.unet.config.cross_attention_dim == 32
    assert generate(model, "a red circle", num_inference_steps=2).images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="width 32; pass text_width=32"):
        train(TrainConfig(steps=2, batch_size=2, save_every=2), tmp_path / "x", progress=False, resume=tmp_path / "w")
    with pytest.raises(ValueError, match="text_width"):
        TrainConfig(text_width=30)


def test_a_frozen_text_encoder_keeps_its_initial_weights(tmp_path):
    from safetensors.torch import load_file

    from trust.shapes.architecture import build_text_encoder, build_unet

    # at the full rate from the first step (no warm-up), a trained encoder's every weight moves, even in float16
    train(TrainConfig(steps=2, batch_size=2, save_every=2, warmup_steps=1, freeze_text_encoder=True), tmp_path / "f",
          progress=False)
    torch.manual_seed(0)  # as train() builds its parts from the seed
    build_unet()
    initial = build_text_encoder().half().state_dict()
    saved = load_file(tmp_path / "f" / "text_encoder" / "model.safetensors")
    assert saved.keys() <= initial.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)
    unet = load_file(tmp_path / "f" / "unet" / "diffusion_pytorch_model.safetensors")
    torch.manual_seed(0)
    assert any(not torch.equal(unet[k], v) for k, v in build_unet().half().state_dict().items())  # the UNet trained
