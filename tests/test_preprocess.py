"""Preprocessing: green channel, FOV padding, CLAHE, background normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from vessel_core import preprocess as pp


def _disc(size: int = 64, radius: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def test_green_channel_scales_uint8_and_uint16():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 1] = 255
    image[0, 0, 1] = 51
    green = pp.green_channel(image)
    assert green.dtype == np.float32
    assert green[0, 0] == pytest.approx(0.2)
    assert green[1, 1] == 1.0
    assert pp.green_channel(np.full((3, 3), 65535, np.uint16))[0, 0] == 1.0


def test_pad_keeps_fov_and_fills_outside_with_neighbour_means():
    channel = np.zeros((5, 5), np.float32)
    fov = np.zeros((5, 5), bool)
    fov[2, 1:4] = True
    channel[2, 1:4] = [1.0, 2.0, 3.0]
    out = pp.pad_outside_fov(channel, fov)
    np.testing.assert_array_equal(out[2, 1:4], [1.0, 2.0, 3.0])
    # ring 1: (1, 2) touches (2, 1), (2, 2), (2, 3) -> mean 2; (2, 0) touches (2, 1)
    assert out[1, 2] == pytest.approx(2.0)
    assert out[2, 0] == pytest.approx(1.0)
    # (1, 0) touches only (2, 1) of the FOV: ring 1 as well
    assert out[1, 0] == pytest.approx(1.0)
    assert np.isfinite(out).all()


def test_pad_of_a_constant_fov_is_constant():
    fov = _disc()
    channel = np.where(fov, 0.7, 0.0).astype(np.float32)
    out = pp.pad_outside_fov(channel, fov)
    np.testing.assert_allclose(out, 0.7, atol=1e-6)


def test_pad_width_limits_the_grown_rim():
    fov = np.zeros((9, 9), bool)
    fov[4, 4] = True
    channel = np.where(fov, 5.0, -1.0).astype(np.float32)
    out = pp.pad_outside_fov(channel, fov, width=1)
    assert (out == 5.0).all()  # one ring grown, the rest copies the nearest


def test_empty_fov_is_refused():
    with pytest.raises(ValueError, match="fov_mask is empty"):
        pp.pad_outside_fov(np.zeros((4, 4)), np.zeros((4, 4), bool))


def test_fov_of_the_wrong_shape_is_refused():
    with pytest.raises(
        ValueError, match=r"fov_mask must have the image's shape \(4, 4\)"
    ):
        pp.preprocess(np.zeros((4, 4, 3), np.uint8), np.ones((3, 3), bool))


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(0)
    low = (0.45 + 0.05 * rng.random((64, 64))).astype(np.float32)
    out = pp.clahe(low)
    assert out.dtype == np.float32
    assert out.std() > 2 * low.std()
    with pytest.raises(ValueError, match="clip_limit must be > 0"):
        pp.clahe(low, clip_limit=0)


def test_normalise_background_removes_a_ramp():
    yy, xx = np.mgrid[:64, :64]
    ramp = (0.2 + 0.6 * xx / 63).astype(np.float32)
    line = ramp.copy()
    line[:, 30:32] -= 0.1  # a dark line on an uneven background
    fov = np.ones((64, 64), bool)
    out = pp.normalise_background(line, fov, background_size=15, contrast_sigma=8)
    assert out[fov].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[fov].std() == pytest.approx(1.0, abs=1e-4)
    # the line is the darkest thing left, the ramp is gone
    assert out[:, 30:32].mean() < -2.0
    assert abs(out[:, 5:20].mean() - out[:, 45:60].mean()) < 0.3


def test_preprocess_makes_a_dark_line_negative_and_standard():
    # sizes follow the FOV: this 72-pixel FOV is 0.13 of DRIVE's, so a vessel is
    # one pixel wide and the background window 3 pixels
    fov = _disc(80, 36)
    image = np.zeros((80, 80, 3), np.uint8)
    image[fov] = (180, 140, 60)
    image[fov & (np.arange(80) == 40)[None, :]] = (150, 90, 40)
    out = pp.preprocess(image, fov)
    assert out.dtype == np.float32 and out.shape == (80, 80)
    assert out[fov].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[fov].std() == pytest.approx(1.0, abs=1e-4)
    assert out[20:60, 40].mean() < -3.0
    assert abs(out[20:60, 20:30].mean()) < 0.5
    assert np.isfinite(out).all()


def test_fov_scale_is_one_for_a_drive_sized_disc():
    yy, xx = np.mgrid[:600, :600]
    fov = (yy - 300) ** 2 + (xx - 300) ** 2 <= 270**2
    assert pp.fov_scale(fov) == pytest.approx(1.0, abs=0.01)
    assert pp.filter_scale(fov) == 1.0


def test_bad_image_shape_is_refused():
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) RGB"):
        pp.preprocess(np.zeros((4, 4, 5), np.uint8))


# ---------------------------------------------------------------------------
# Prediction at a model's training scale


def test_scale_factor_keeps_the_scale_within_the_tolerance():
    fov = _disc(200, 80)  # diameter about 160
    diameter = pp.fov_diameter(fov)
    assert pp.scale_factor(fov, diameter * 0.5) == pytest.approx(0.5)
    assert pp.scale_factor(fov, diameter * 2.0) == pytest.approx(2.0)
    assert pp.scale_factor(fov, diameter * 1.14) == 1.0
    assert pp.scale_factor(fov, diameter * 0.86) == 1.0
    assert pp.scale_factor(fov, diameter * 1.16) == pytest.approx(1.16)
    assert pp.scale_factor(fov, diameter * 1.3, tolerance=0.4) == 1.0
    assert pp.scale_factor(fov, None) == 1.0
    assert pp.scale_factor(fov, 0.0) == 1.0


@pytest.mark.parametrize(
    ("shape", "factor"),
    [((37, 53), 0.5), ((37, 53), 2.0), ((101, 67), 0.3), ((101, 67), 1.7)],
)
def test_predict_at_scale_gives_a_map_of_exactly_the_input_size(shape, factor):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.45 * min(h, w)) ** 2
    image = np.zeros((h, w, 3), np.uint8)
    image[fov] = (200, 120, 60)
    seen = []

    def predict(im, fv):
        seen.append((im.shape, im.dtype, fv.shape, fv.dtype))
        return np.where(fv, 0.8, 0.0).astype(np.float32)

    prob = pp.predict_at_scale(predict, image, fov, factor)
    small = (round(h * factor), round(w * factor))
    assert seen == [(small + (3,), np.uint8, small, np.bool_)]
    assert prob.shape == shape and prob.dtype == np.float32
    assert not prob[~fov].any()
    # well inside the FOV the constant map comes back as it was
    inner = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.3 * min(h, w)) ** 2
    np.testing.assert_allclose(prob[inner], 0.8, atol=1e-6)


def test_predict_at_scale_hands_predict_the_resized_image_and_fov():
    fov = _disc(80, 30)
    image = np.zeros((80, 80, 3), np.uint8)
    image[fov] = 200
    image[:, 40:44] = 50  # a dark band, 4 pixels wide
    got = {}

    def predict(im, fv):
        got["image"], got["fov"] = im, fv
        return fv.astype(np.float32)

    pp.predict_at_scale(predict, image, fov, 0.5)
    assert got["image"].shape == (40, 40, 3)
    # the band is 2 pixels wide at half the size, with area averaging
    np.testing.assert_array_equal(got["image"][20, 19:23, 0], [200, 50, 50, 200])
    # nearest neighbour: every other pixel of the FOV
    np.testing.assert_array_equal(got["fov"], fov[::2, ::2])

    # shrinking averages areas: a 1-pixel line at a quarter of the size is a
    # quarter as dark, not skipped between samples
    image[:] = 200
    image[:, 41] = 0
    pp.predict_at_scale(predict, image, fov, 0.25)
    assert got["image"].shape == (20, 20, 3)
    np.testing.assert_array_equal(got["image"][:, 10, 1], 150)


def test_predict_at_scale_zeroes_the_map_outside_the_fov_and_clips():
    fov = _disc(64, 20)
    image = np.full((64, 64, 3), 100, np.uint8)
    prob = pp.predict_at_scale(
        lambda im, fv: np.full(fv.shape, 1.5, np.float32), image, fov, 2.0
    )
    assert prob.shape == (64, 64)
    assert not prob[~fov].any()
    assert prob[fov].min() > 0 and prob.max() == 1.0


def test_predict_at_scale_by_one_calls_predict_as_it_is():
    fov = _disc(30, 10)
    image = np.zeros((30, 30, 3), np.uint8)
    out = np.full((30, 30), 7.0, np.float32)
    calls = []

    def predict(im, fv):
        calls.append((im is image, fv is fov))
        return out

    assert pp.predict_at_scale(predict, image, fov, 1.0) is out
    assert calls == [(True, True)]
    with pytest.raises(ValueError, match="factor must be a finite number > 0"):
        pp.predict_at_scale(predict, image, fov, 0.0)
