import pytest
import torch

from trust.attention import CrossAttentionRecorder, RecordingAttnProcessor, cross_attention_layers
from trust.errors import TrustError
from trust.generation import generate


def test_recording_changes_nothing_and_restores_processors(shapes_model):
    before = shapes_model.unet.attn_processors
    plain = generate(shapes_model, "a red circle", num_images_per_prompt=2, num_inference_steps=5)
    with CrossAttentionRecorder(shapes_model.unet) as recorder:
        inside = shapes_model.unet.attn_processors
        recorded = generate(shapes_model, "a red circle", num_images_per_prompt=2, num_inference_steps=5,
                            recorder=recorder)
    assert sum(isinstance(p, RecordingAttnProcessor) for p in inside.values()) == 7
    assert shapes_model.unet.attn_processors == before
    torch.testing.assert_close(recorded.images, plain.images, atol=1e-4, rtol=0)


def test_processors_come_back_after_an_error(shapes_model):
    before = shapes_model.unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"), CrossAttentionRecorder(shapes_model.unet):
        raise RuntimeError("boom")
    assert shapes_model.unet.attn_processors == before
    assert shapes_model.unet._trust_recorder is None


def test_refuses_to_hook_twice(shapes_model):
    with CrossAttentionRecorder(shapes_model.unet), pytest.raises(TrustError, match="already being recorded"):
        with CrossAttentionRecorder(shapes_model.unet):
            pass


def test_heat_maps_by_layer_and_step(shapes_model):
    layers = list(cross_attention_layers(shapes_model.unet))
    with CrossAttentionRecorder(shapes_model.unet) as recorder:
        generate(shapes_model, ["a red circle", "a blue star"], num_images_per_prompt=2, num_inference_steps=4,
                 batch_size=3, recorder=recorder)
    maps = recorder.heat_maps()
    assert maps.layers == tuple(layers)
    assert len(maps.timesteps) == 4 and maps.num_images == 4
    assert maps.maps[layers[0]].shape == (4, 4, 16, 16, 24)  # (steps, images, h, w, tokens)
    assert maps.maps["mid_block.attentions.0.transformer_blocks.0.attn2"].shape[2:4] == (8, 8)
    # attention over tokens sums to one at every pixel
    torch.testing.assert_close(maps.maps[layers[0]].float().sum(-1), torch.ones(4, 4, 16, 16), atol=2e-2, rtol=0)
    full = maps.token_map(0, 3)
    one = maps.token_map(0, 3, layers=layers[:1], steps=[0], size=32)
    assert full.shape == (16, 16) and one.shape == (32, 32)
    assert full.min() == 0 and full.max() == 1
    assert not torch.allclose(torch.nn.functional.interpolate(full[None, None], size=32)[0, 0], one)
    with pytest.raises(ValueError, match="unknown layers"):
        maps.token_map(0, 3, layers=["nope"])
    with pytest.raises(ValueError, match="steps must be within"):
        maps.token_map(0, 3, steps=[9])


def test_shape_token_attends_to_the_shape(shapes_model):
    # The heat map of "circle" should sit on the circle the model drew: compare the
    # attention inside the drawn shape's pixels with the attention outside them.
    prompt = "a red circle on a striped background"
    with CrossAttentionRecorder(shapes_model.unet) as recorder:
        out = generate(shapes_model, prompt, num_images_per_prompt=4, seed=0, recorder=recorder)
    tokens = shapes_model.tokens(prompt)
    maps = recorder.heat_maps()
    late = list(range(len(maps.timesteps) // 2, len(maps.timesteps)))
    ratios = []
    for image_idx, image in enumerate(out.images):
        red = (image[0] > 0.6) & (image[1] < 0.35) & (image[2] < 0.35)  # (32, 32) pixels of the shape
        heat = maps.token_map(image_idx, tokens.index("circle"), steps=late, size=32)
        ratios.append(heat[red].mean() / heat[~red].mean())
    assert red.any()
    assert torch.tensor(ratios).median() > 1.5, ratios
