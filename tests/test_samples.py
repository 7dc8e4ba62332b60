"""The built-in sample: synthetic cases and the bundled photo (vessel_core.samples)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy import ndimage as ndi

from vessel_core.samples import builtin_sample, retina_case, synthetic_cases


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases()


def test_synthetic_ids_splits_and_shapes(cases):
    assert [c.id for c in cases] == ["synth-01", "synth-02", "synth-03", "synth-04"]
    assert [c.split for c in cases] == ["train", "train", "train", "test"]
    for case in cases:
        assert case.image.shape == (384, 384, 3) and case.image.dtype == np.uint8
        assert case.vessel_mask.shape == case.fov_mask.shape == (384, 384)
        assert case.vessel_mask.dtype == case.fov_mask.dtype == np.bool_
        assert not case.fov_estimated and case.dataset == "synthetic"
        assert case.sources["image"].startswith("builtin:synthetic")


def test_synthetic_is_deterministic():
    first = synthetic_cases(2, seed=7, size=(160, 200))
    again = synthetic_cases(2, seed=7, size=(160, 200))
    for a, b in zip(first, again, strict=True):
        assert_array_equal(a.image, b.image)
        assert_array_equal(a.vessel_mask, b.vessel_mask)
        assert_array_equal(a.fov_mask, b.fov_mask)
    other = synthetic_cases(1, seed=8, size=(160, 200))[0]
    assert not np.array_equal(other.image, first[0].image)


def test_synthetic_case_does_not_depend_on_n():
    assert_array_equal(
        synthetic_cases(1, seed=3)[0].image, synthetic_cases(3, seed=3)[0].image
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_vessel_fraction_in_range(seed):
    for case in synthetic_cases(4, seed=seed):
        fraction = case.vessel_mask[case.fov_mask].mean()
        assert 0.08 <= fraction <= 0.14, f"{case.id}: {fraction:.3f}"


@pytest.mark.parametrize("size", [(128, 128), (200, 300), (512, 480)])
def test_synthetic_other_sizes(size):
    (case,) = synthetic_cases(1, size=size)
    assert case.image.shape == (*size, 3)
    assert 0.08 <= case.vessel_mask[case.fov_mask].mean() <= 0.14


def test_synthetic_fov_is_a_centred_disc_dark_outside(cases):
    for case in cases:
        fov = case.fov_mask
        assert fov[192, 192] and not fov[0, 0] and not fov[383, 383]
        assert 0.6 < fov.mean() < 0.7  # a disc of radius 0.46 * 384: pi * 0.46**2
        assert case.image[~fov].mean() < 10
        assert not (case.vessel_mask & ~fov).any()


def test_synthetic_looks_like_a_fundus(cases):
    for case in cases:
        background = case.fov_mask & ~case.vessel_mask
        red, green, blue = (case.image[..., c][background].mean() for c in range(3))
        assert red > green > blue  # reddish orange


def test_synthetic_mask_is_exact_vessels_darker_in_green(cases):
    # every vessel pixel against the ring of background pixels 1-3 pixels away
    for case in cases:
        vessel, fov = case.vessel_mask, case.fov_mask
        ring = ndi.binary_dilation(vessel, iterations=3) & ~vessel & fov
        green = case.image[..., 1].astype(float)
        red = case.image[..., 0].astype(float)
        green_contrast = green[ring].mean() - green[vessel].mean()
        red_contrast = red[ring].mean() - red[vessel].mean()
        assert green_contrast > 15, f"{case.id}: {green_contrast:.1f}"
        assert green_contrast / green[ring].mean() > red_contrast / red[ring].mean()


def test_synthetic_mask_edge_is_where_the_darkening_ends(cases):
    # the 1-pixel ring just outside the mask is nearly background: its contrast to
    # the vessel is > 80% of the background's (a mask shifted by 1 pixel: ~60%)
    for case in cases:
        vessel, fov = case.vessel_mask, case.fov_mask
        green = case.image[..., 1].astype(float)
        ring = ndi.binary_dilation(vessel) & ~vessel & fov
        near = ndi.binary_dilation(vessel, iterations=2)
        far = ndi.binary_dilation(vessel, iterations=4) & ~near & fov
        v = green[vessel].mean()
        ratio = (green[ring].mean() - v) / (green[far].mean() - v)
        assert ratio > 0.8, f"{case.id}: {ratio:.2f}"


def test_synthetic_has_a_bright_optic_disc(cases):
    for case in cases:
        grey = case.image.astype(float).mean(axis=2)
        brightest = np.unravel_index(
            np.argmax(ndi.uniform_filter(grey, 15)), grey.shape
        )
        assert case.fov_mask[brightest]
        assert grey[brightest] > np.percentile(grey[case.fov_mask], 99)


def test_synthetic_is_fast():
    start = time.perf_counter()
    synthetic_cases()
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, f"4 synthetic cases took {elapsed:.2f} s"


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        synthetic_cases(-1)
    with pytest.raises(ValueError, match=r"size must be at least \(64, 64\)"):
        synthetic_cases(1, size=(32, 200))
    assert synthetic_cases(0) == []
    assert [c.split for c in synthetic_cases(1)] == ["train"]
    assert [c.split for c in synthetic_cases(2)] == ["train", "test"]


def test_retina_case():
    case = retina_case()
    assert case.id == "retina" and case.split == "test"
    assert case.image.shape == (1411, 1411, 3) and case.image.dtype == np.uint8
    assert case.vessel_mask is None and case.fov_estimated
    fov = case.fov_mask
    assert fov.shape == (1411, 1411)
    assert fov[705, 705] and not fov[0, 0] and not fov[0, 1410] and not fov[1410, 0]
    assert 0.65 < fov.mean() < 0.85
    assert case.image[~fov].mean() < 15
    # a fresh, writable copy each time: writing into one leaves the next intact
    before = case.image[0, 0].copy()
    case.image[0, 0] = 255
    assert_array_equal(retina_case().image[0, 0], before)


def test_builtin_sample():
    sample = builtin_sample()
    assert [c.id for c in sample] == [
        "synth-01",
        "synth-02",
        "synth-03",
        "synth-04",
        "retina",
    ]
    assert sum(c.has_mask for c in sample) == 4
