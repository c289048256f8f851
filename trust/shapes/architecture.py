"""Architecture of the embedded ShapesWorld model: diffusers and transformers parts, small."""

from __future__ import annotations

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

IMAGE_SIZE = 32  # pixels per side; the model works in pixel space (no VAE)
MAX_TOKENS = 24  # tokenizer length, start and end tokens included
TEXT_DIM = 64  # width of the text encoder = cross-attention dimension
VOCAB_SIZE = 49408  # CLIP's byte-level BPE vocabulary


def build_unet(text_width: int = TEXT_DIM) -> UNet2DConditionModel:
    # Cross-attention at 16x16 and 8x8 (and the 8x8 mid block): 7 attn2 layers. Narrow at
    # high resolution: at 32x32 pixels the cost is per-pixel work, and 16/32/64 channels
    # generate 8 images x 25 steps in under 4 s on 2 CPU cores (benchmarks/generation.py).
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=4,  # diffusers reads this as the number of heads
        norm_num_groups=8,
    )


def build_text_encoder(text_width: int = TEXT_DIM) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    # Pixel space in [-1, 1]: a cosine schedule and clipping suit it.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
    )
