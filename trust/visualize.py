"""Pictures for people: images enlarged, heat maps overlaid, token grids (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .attention import HeatMaps  # noqa: E402


def to_uint8(image: torch.Tensor, size: int | None = None) -> np.ndarray:
    """(3, H, W) in [0, 1] to an (S, S, 3) uint8 array, enlarged with nearest neighbours."""
    if size and size != image.shape[-1]:
        image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="nearest")[0]
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def overlay(image: torch.Tensor, heat: torch.Tensor, size: int = 256, alpha: float = 0.55,
            cmap: str = "jet") -> np.ndarray:
    """An image (3, H, W) with a heat map (h, w) in [0, 1] blended on top, as (size, size, 3) uint8."""
    base = to_uint8(image, size).astype(np.float32) / 255
    heat = torch.nn.functional.interpolate(heat[None, None].float(), size=(size, size), mode="bilinear")[0, 0]
    colored = matplotlib.colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3]
    return (((1 - alpha) * base + alpha * colored) * 255).round().astype(np.uint8)


def token_figure(image: torch.Tensor, heat_maps: HeatMaps, image_idx: int, tokens: list[str],
                 layers: list[str] | None = None, steps: list[int] | None = None) -> plt.Figure:
    """The image, then one overlay per prompt token (start and end tokens left out)."""
    word_idx = list(range(1, len(tokens) - 1))
    maps = heat_maps.token_maps(image_idx, word_idx, layers, steps) if word_idx else []
    fig, axes = plt.subplots(1, 1 + len(word_idx), figsize=(1.8 * (1 + len(word_idx)), 2.1), squeeze=False)
    axes[0, 0].imshow(to_uint8(image, 128))
    axes[0, 0].set_title("image", fontsize=9)
    for ax, token_idx, heat in zip(axes[0, 1:], word_idx, maps):
        ax.imshow(overlay(image, heat, 128))
        ax.set_title(tokens[token_idx], fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
