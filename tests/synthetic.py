"""Synthetic cases with known answers, shared by the model tests."""

from __future__ import annotations

import numpy as np

from vessel_core.cases import Case


def line_case(
    cid: str, angle: float, offset: float, seed: int, size: int = 160
) -> Case:
    """A noisy disc FOV with one dark straight vessel, 3 pixels wide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    c = size / 2
    fov = (yy - c) ** 2 + (xx - c) ** 2 <= (0.45 * size) ** 2
    distance = np.abs((xx - c) * np.cos(angle) + (yy - c) * np.sin(angle) - offset)
    vessel = fov & (distance <= 1.5)
    green = (
        150 + 8 * rng.standard_normal((size, size)) - 45 * np.exp(-(distance**2) / 2.5)
    )
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 200
    image[..., 1] = np.clip(green, 0, 255)
    image[..., 2] = 60
    image[~fov] = 0
    return Case(cid, image, fov, vessel)
