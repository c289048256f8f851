"""Record cross-attention maps through diffusers' attention-processor API.

    with CrossAttentionRecorder(model.unet) as recorder:
        output = generate(model, "a red circle", recorder=recorder)
    maps = recorder.heat_maps()
    maps.token_map(image_idx=0, token_idx=2)  # (H, W) heat map of the third token

The recorder swaps the processor of every cross-attention module (`attn2`) for one
that computes attention probabilities on the classic path (`AttnProcessor2_0`
never materialises them), keeps the conditional half of the batch, averages heads,
and puts the original processors back on exit, even after an error.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from .errors import TrustError


def cross_attention_layers(unet: UNet2DConditionModel) -> dict[str, Attention]:
    """Every cross-attention module of a UNet, by its module name, in forward order (down, mid, up)."""
    found = [(name, module) for name, module in unet.named_modules()
             if isinstance(module, Attention) and name.endswith("attn2")]
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return dict(sorted(found, key=lambda item: stage.get(item[0].split(".")[0], 3)))  # stable within a stage


class RecordingAttnProcessor:
    """The classic attention computation, reporting the probabilities it uses."""

    def __init__(self, recorder: CrossAttentionRecorder, layer: str):
        self.recorder = recorder
        self.layer = layer

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, num_tokens = context.shape[:2]
        attention_mask = attn.prepare_attention_mask(attention_mask, num_tokens, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B * heads, HW, head_dim)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B * heads, T, head_dim)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, HW, T)
        self.recorder.record(self.layer, probs.unflatten(0, (-1, attn.heads)))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass(frozen=True)
class HeatMaps:
    """Per-token cross-attention maps of a batch of generated images.

    `maps[layer]` is (num_steps, num_images, h, w, num_tokens), the attention each
    pixel of the layer's grid pays to each token, averaged over heads.
    """

    maps: dict[str, torch.Tensor]
    timesteps: tuple[int, ...]  # the diffusion timestep of each recorded step

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.maps)

    @property
    def num_images(self) -> int:
        return next(iter(self.maps.values())).shape[1]

    def token_map(self, image_idx: int, token_idx: int, layers: list[str] | None = None,
                  steps: list[int] | None = None, size: int | None = None) -> torch.Tensor:
        """Heat map (size, size) of one token, averaged over the chosen layers and steps, scaled to [0, 1]."""
        return self.token_maps(image_idx, [token_idx], layers, steps, size)[0]

    def token_maps(self, image_idx: int, token_ids: list[int], layers: list[str] | None = None,
                   steps: list[int] | None = None, size: int | None = None) -> torch.Tensor:
        """Heat maps (len(token_ids), size, size), each scaled to [0, 1]."""
        layers = list(layers or self.layers)
        unknown = [name for name in layers if name not in self.maps]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; recorded layers are {list(self.layers)}")
        steps = list(range(len(self.timesteps))) if steps is None else list(steps)
        if not steps or any(not 0 <= s < len(self.timesteps) for s in steps):
            raise ValueError(f"steps must be within 0..{len(self.timesteps) - 1}, got {steps}")
        size = size or max(self.maps[name].shape[2] for name in layers)
        total = torch.zeros(len(token_ids), size, size)
        for name in layers:
            grid = self.maps[name][steps, image_idx][..., token_ids].float().mean(0)  # (h, w, K)
            grid = grid.permute(2, 0, 1)[None]  # (1, K, h, w)
            total += torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear")[0]
        low = total.amin(dim=(1, 2), keepdim=True)
        high = total.amax(dim=(1, 2), keepdim=True)
        return (total - low) / (high - low).clamp_min(1e-8)


class CrossAttentionRecorder:
    """Context manager that records per-token cross-attention maps of a UNet.

    The generation loop tells it which step runs and which batch rows hold the
    conditional prompts (`begin_step`); layers wider than `max_resolution` are
    average-pooled down to it, so memory stays small on large models.
    """

    def __init__(self, unet: UNet2DConditionModel, max_resolution: int = 16):
        self.unet = unet
        self.max_resolution = max_resolution
        self._original = None
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._chunks: dict[str, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self._timesteps: dict[int, int] = {}
        self._step = 0
        self._rows = slice(None)

    def __enter__(self) -> CrossAttentionRecorder:
        if getattr(self.unet, "_trust_recorder", None) is not None:
            raise TrustError("this UNet is already being recorded; leave the other recorder first")
        self._original = self.unet.attn_processors
        layers = cross_attention_layers(self.unet)
        processors = {key: (RecordingAttnProcessor(self, key.removesuffix(".processor"))
                            if key.removesuffix(".processor") in layers else processor)
                      for key, processor in self._original.items()}
        self.unet.set_attn_processor(processors)
        self.unet._trust_recorder = self
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(self._original)
        self.unet._trust_recorder = None
        self._original = None

    def clear(self) -> None:
        """Forget what was recorded (the processors stay in place)."""
        with self._lock:
            self._reset()

    def begin_step(self, step_idx: int, timestep: int, rows: slice = slice(None)) -> None:
        """Called by the loop before each UNet call: `rows` are the conditional batch rows."""
        self._step, self._rows = step_idx, rows
        self._timesteps[step_idx] = int(timestep)

    def record(self, layer: str, probs: torch.Tensor) -> None:
        """Keep maps from probabilities (B, heads, HW, T) of one layer."""
        probs = probs[self._rows].detach().mean(1)  # (B, HW, T)
        side = int(round(probs.shape[1] ** 0.5))
        grid = probs.unflatten(1, (side, side))  # (B, h, w, T)
        if side > self.max_resolution:
            grid = torch.nn.functional.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), self.max_resolution)
            grid = grid.permute(0, 2, 3, 1)
        with self._lock:
            self._chunks[layer][self._step].append(grid.to("cpu", torch.float16))

    def heat_maps(self) -> HeatMaps:
        """What has been recorded so far, as an immutable value."""
        with self._lock:
            if not self._chunks:
                raise TrustError("nothing was recorded: run generation inside the recorder's `with` block")
            steps = sorted(self._timesteps)
            maps = {layer: torch.stack([torch.cat(by_step[s]) for s in steps])
                    for layer, by_step in self._chunks.items()}
            return HeatMaps(maps=maps, timesteps=tuple(self._timesteps[s] for s in steps))
