"""Exact renderer of ShapesWorld scenes, anti-aliased by supersampling."""

from __future__ import annotations

import math

import torch

from .world import BACKGROUNDS, COLORS, NONE, SHAPES, Scene

RGB = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.00),
}
assert set(RGB) == set(COLORS)

_SUPERSAMPLE = 4  # sub-pixels per pixel side
_STRIPE_PERIOD = 8 / 32  # fraction of the image side
_DOT_PERIOD = 8 / 32
_DOT_RADIUS = 1.7 / 32


def _polygon(radius: float, num_points: int, inner: float | None = None) -> torch.Tensor:
    """Vertices (V, 2) of a regular polygon or star pointing up, in image units."""
    step = math.pi / num_points if inner else 2 * math.pi / num_points
    num_vertices = 2 * num_points if inner else num_points
    vertices = []
    for k in range(num_vertices):
        r = radius * (inner if inner and k % 2 else 1.0)
        angle = -math.pi / 2 + k * step
        vertices.append((r * math.cos(angle), r * math.sin(angle)))
    return torch.tensor(vertices)


def _inside_polygon(x: torch.Tensor, y: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Even-odd rule, vectorised over points."""
    inside = torch.zeros_like(x, dtype=torch.bool)
    for (x1, y1), (x2, y2) in zip(vertices.tolist(), vertices.roll(-1, 0).tolist()):
        if y1 == y2:
            continue
        crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
        inside ^= crosses
    return inside


def shape_mask(shape: str, x: torch.Tensor, y: torch.Tensor, size: float) -> torch.Tensor:
    """Boolean mask of `shape` centred at the origin; `size` ~ circle radius."""
    if shape == "circle":
        return x**2 + y**2 <= size**2
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) <= 0.86 * size
    if shape == "triangle":
        return _inside_polygon(x, y - 0.25 * size, _polygon(1.35 * size, 3))
    if shape == "star":
        return _inside_polygon(x, y, _polygon(1.3 * size, 5, inner=0.45))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def background_image(background: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Grey level of each point for a background pattern; x, y in [0, 1)."""
    if background == "plain":
        return torch.full_like(x, 0.80)
    if background == "striped":
        return torch.where((y / _STRIPE_PERIOD) % 1.0 < 0.5, 0.92, 0.50)
    if background == "dotted":
        dx = (x / _DOT_PERIOD) % 1.0 - 0.5
        dy = (y / _DOT_PERIOD) % 1.0 - 0.5
        dot = (dx**2 + dy**2) * _DOT_PERIOD**2 <= _DOT_RADIUS**2
        return torch.where(dot, 0.40, 0.88)
    raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")


def render(scenes: list[Scene], size: int = 32, generator: torch.Generator | None = None,
           jitter: bool = True) -> torch.Tensor:
    """Render scenes to images (N, 3, size, size) in [0, 1].

    With `jitter`, each shape's position, size and hue vary a little.
    """
    n = size * _SUPERSAMPLE
    coords = (torch.arange(n) + 0.5) / n  # (n,)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (n, n) each
    images = []
    for scene in scenes:
        if jitter:
            cx, cy = 0.5 + (torch.rand(2, generator=generator) - 0.5) * 0.28
            radius = 0.22 + torch.rand((), generator=generator).item() * 0.08
            tint = (torch.rand(3, generator=generator) - 0.5) * 0.08
        else:
            cx, cy, radius, tint = torch.tensor(0.5), torch.tensor(0.5), 0.26, torch.zeros(3)
        grey = background_image(scene.background, x, y)
        image = grey.expand(3, n, n).clone()  # (3, n, n)
        if scene.shape != NONE:
            mask = shape_mask(scene.shape, x - cx, y - cy, radius)
            color = (torch.tensor(RGB[scene.color]) + tint).clamp(0, 1)
            image = torch.where(mask, color[:, None, None], image)
        images.append(image)
    batch = torch.stack(images)  # (N, 3, n, n)
    return torch.nn.functional.avg_pool2d(batch, _SUPERSAMPLE)  # (N, 3, size, size)
