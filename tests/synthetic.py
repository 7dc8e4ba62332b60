"""Synthetic cases with known answers, shared by the model tests."""

from __future__ import annotations

from pathlib import Path

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


def write_drive_like(folder: Path) -> None:
    """A tiny dataset in DRIVE's layout: 3 training and 2 test cases."""
    from PIL import Image

    for i, (split, number) in enumerate(
        [("training", 21), ("training", 22), ("training", 23), ("test", 1), ("test", 2)]
    ):
        case = line_case(str(number), angle=0.4 * i, offset=3.0 * i, seed=i, size=96)
        name = f"{number:02d}_{split if split == 'test' else 'training'}"
        for sub in ("images", "1st_manual", "mask"):
            (folder / split / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.image).save(folder / split / "images" / f"{name}.tif")
        vessel = Image.fromarray(case.vessel_mask.astype(np.uint8) * 255)
        vessel.save(folder / split / "1st_manual" / f"{number:02d}_manual1.gif")
        fov = Image.fromarray(case.fov_mask.astype(np.uint8) * 255)
        fov.save(folder / split / "mask" / f"{name}_mask.gif")
