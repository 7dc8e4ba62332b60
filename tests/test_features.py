"""Pixel features: patch values, filter bank, names and settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vessel_core import features as ft
from vessel_core.cases import Case


def _line_case(size: int = 96, col: int = 48, width: int = 3) -> Case:
    """A disc FOV with one dark vertical vessel on a flat background."""
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.45 * size) ** 2
    vessel = fov & (np.abs(xx - col) <= width // 2)
    image = np.zeros((size, size, 3), np.uint8)
    image[fov] = (190, 150, 70)
    image[vessel] = (160, 100, 50)
    return Case("line", image, fov, vessel)


def test_feature_names_follow_the_settings():
    assert ft.feature_names("patch") == [
        f"green[{dr:+d},{dc:+d}]" for dr in (-1, 0, 1) for dc in (-1, 0, 1)
    ]
    assert len(ft.feature_names({"features": "patch", "patch_size": 7})) == 49
    bank = ft.bank_names()
    assert ft.feature_names("bank") == bank
    assert ft.feature_names(ft.FeatureSettings("patch+bank", 5)) == (
        ft.feature_names({"features": "patch", "patch_size": 5}) + bank
    )
    assert len(set(ft.feature_names())) == len(ft.feature_names())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="features must be one of"):
        ft.feature_settings("pixels")
    with pytest.raises(
        ValueError, match=r"patch_size must be one of \(1, 3, 5, 7\), got 4"
    ):
        ft.feature_settings({"features": "patch", "patch_size": 4})
    with pytest.raises(TypeError, match="settings must be FeatureSettings"):
        ft.feature_settings(3)


def test_settings_dicts_ignore_other_keys():
    s = ft.feature_settings({"features": "patch", "patch_size": 5, "k_max": 15})
    assert s == ft.FeatureSettings("patch", 5)


def test_patch_values_are_the_shifted_green_channel():
    case = _line_case()
    planes = ft.compute_planes(case, settings={"features": "patch", "patch_size": 3})
    maps = planes.stack()
    assert maps.shape == (96, 96, 9) and maps.dtype == np.float32
    green = planes.green
    names = ft.feature_names("patch")
    j = names.index("green[-1,+1]")
    np.testing.assert_array_equal(maps[1:, :-1, j], green[:-1, 1:])
    # mirrored at the border (reflect-101): row -1 is row 1
    np.testing.assert_array_equal(maps[0, :-1, j], green[1, 1:])


def test_features_at_agrees_with_the_stacked_maps():
    rng = np.random.default_rng(0)
    case = _line_case()
    planes = ft.compute_planes(
        case, settings={"features": "patch+bank", "patch_size": 5}
    )
    coords = np.stack([rng.integers(0, 96, 200), rng.integers(0, 96, 200)], 1)
    coords[:4] = [[0, 0], [95, 95], [0, 95], [95, 0]]  # the corners too
    from_planes = ft.features_at(planes, coords)
    from_maps = ft.features_at(planes.stack(), coords)
    np.testing.assert_array_equal(from_planes, from_maps)
    assert from_planes.shape == (200, 25 + len(ft.bank_names()))


def test_compute_feature_maps_takes_a_case_or_an_image():
    case = _line_case()
    a = ft.compute_feature_maps(case, settings="bank")
    b = ft.compute_feature_maps(case.image, case.fov_mask, "bank")
    # OpenCV's SIMD paths depend on memory alignment: equal to float32 rounding
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bank_is_standardised_over_the_fov_and_finds_the_line():
    # a 270-pixel FOV: half DRIVE's scale, the filters half their DRIVE sizes
    case = _line_case(size=300, col=150, width=3)
    bank = ft.compute_planes(case, settings="bank").bank
    fov, vessel = case.fov_mask, case.vessel_mask
    inside = bank[fov]
    np.testing.assert_allclose(inside.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(inside.std(axis=0), 1.0, atol=1e-3)
    far = np.zeros_like(fov)
    far[100:200, 60:120] = True  # background well inside the FOV
    for j, name in enumerate(ft.bank_names()):
        if name.startswith("gradient"):
            continue  # zero on the line's axis, high on its edges
        assert bank[..., j][vessel].mean() > bank[..., j][far].mean() + 1.0, name


def test_hessian_ridge_of_a_parabola_is_two_sigma_squared():
    # f = -(x - 20)^2 has d2f/dx2 = -2 everywhere: ridge strength 2 sigma^2
    x = np.arange(41, dtype=np.float32)
    image = np.tile(-((x - 20) ** 2), (41, 1)) / 10.0
    out = ft.hessian_ridge(image, 2.0)
    assert out[20, 20] == pytest.approx(2 * 4.0 / 10.0, rel=1e-3)


def test_gradient_of_a_ramp_is_sigma_times_the_slope():
    x = np.arange(41, dtype=np.float32)
    image = np.tile(0.5 * x, (41, 1))
    out = ft.gradient_magnitude(image, 1.5)
    assert out[20, 20] == pytest.approx(1.5 * 0.5, rel=1e-3)


def test_morlet_downsampling_keeps_the_response():
    case = _line_case(size=128, col=64, width=5)
    bright = -ft.compute_planes(case, settings="patch").green
    full = ft.morlet_max(bright, [4.0], downsample=1)[0]
    half = ft.morlet_max(bright, [4.0], downsample=2)[0]
    fov = case.fov_mask
    assert np.corrcoef(full[fov], half[fov])[0, 1] > 0.95


def test_coords_outside_the_image_are_refused():
    planes = ft.compute_planes(_line_case(), settings="patch")
    with pytest.raises(
        ValueError, match=r"coords must lie inside the image of shape \(96, 96\)"
    ):
        planes.at(np.array([[0, 96]]))
    with pytest.raises(ValueError, match=r"coords must be an \(N, 2\) array"):
        ft.features_at(planes, np.zeros((3, 3), int))


@pytest.mark.slow
def test_hrf_sized_planes_fit_in_modest_memory():
    size = (2336, 3504)
    yy, xx = np.mgrid[: size[0], : size[1]]
    fov = (yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 <= 1100**2
    image = np.zeros(size + (3,), np.uint8)
    image[fov] = (180, 130, 60)
    planes = ft.compute_planes(image, fov, "patch+bank")
    stored = planes.green.nbytes + planes.bank.nbytes
    assert planes.bank.dtype == np.float32
    assert stored < 0.9e9  # 10 float32 planes, not 18
    rows = planes.at(np.argwhere(fov)[:1000])
    assert rows.shape == (1000, 18) and np.isfinite(rows).all()


# -- context features -----------------------------------------------------------------


def test_line_means_follow_a_line_and_ignore_a_dot():
    size = 81
    line = np.zeros((size, size), np.float32)
    angle = math.pi * 2 / 12  # one of the 12 orientations
    for t in range(-30, 31):
        line[40 + round(t * math.tan(angle)), 40 + t] = 1.0
    short, long = ft.line_means_max(line, [7, 25])
    assert short[40, 40] == pytest.approx(1.0)
    assert long[40, 40] == pytest.approx(1.0)
    dot = np.zeros((size, size), np.float32)
    dot[40, 40] = 1.0
    short, long = ft.line_means_max(dot, [7, 25])
    assert short[40, 40] == pytest.approx(1 / 7)
    assert long[40, 40] == pytest.approx(1 / 25)
    flat = np.full((20, 30), 0.25, np.float32)
    np.testing.assert_allclose(ft.line_means_max(flat, [5])[0], 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        ft.line_means_max(flat, [4])


def test_context_planes_are_standardised_and_weighted():
    rng = np.random.default_rng(3)
    prob = rng.random((90, 100)).astype(np.float32)
    fov = np.zeros((90, 100), bool)
    fov[5:85, 10:95] = True
    planes = ft.context_planes(prob, fov, weight=2.0)
    assert planes.shape == (90, 100, len(ft.context_names()))
    assert ft.context_names()[0] == "context_prob"
    inside = planes[fov]
    np.testing.assert_allclose(inside.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(inside.std(axis=0), 2.0, rtol=1e-3)
    # the first plane is the map itself, standardised
    expected = (prob[fov] - prob[fov].mean()) / prob[fov].std() * 2.0
    np.testing.assert_allclose(planes[..., 0][fov], expected, rtol=1e-4, atol=1e-4)
