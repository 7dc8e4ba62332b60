"""Error overlay, vessel map, PNG/CSV/ZIP bytes, on tiny arrays."""

from __future__ import annotations

import base64
import io
import zipfile

import cv2
import numpy as np
import pytest

from vessel_core.render import (
    ERROR_COLOURS,
    data_uri,
    error_overlay,
    mask_image,
    probability_image,
    reconstruct,
    result_files,
    thumbnail,
    to_csv,
    to_png,
    to_zip,
)


def test_reconstruct_thresholds_inside_the_fov():
    prob = np.array([[0.2, 0.5], [0.9, 0.7]], np.float32)
    fov = np.array([[True, True], [True, False]])
    expected = np.array([[False, True], [True, False]])
    np.testing.assert_array_equal(reconstruct(prob, 0.5, fov), expected)
    np.testing.assert_array_equal(reconstruct(prob, 0.95), np.zeros((2, 2), bool))


def test_reconstruct_refuses_a_threshold_outside_0_1():
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 1.5"):
        reconstruct(np.zeros((2, 2)), 1.5)


def test_error_overlay_colours_each_pixel_by_its_outcome():
    y_true = np.array([[1, 1, 0, 0]], bool)
    y_pred = np.array([[1, 0, 1, 0]], bool)  # TP, FN, FP, TN
    out = error_overlay(y_true, y_pred)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == ERROR_COLOURS["tp"]
    assert tuple(out[0, 1]) == ERROR_COLOURS["fn"]
    assert tuple(out[0, 2]) == ERROR_COLOURS["fp"]
    assert tuple(out[0, 3]) == (0, 0, 0)


def test_error_overlay_leaves_outside_the_fov_black():
    y = np.ones((1, 2), bool)
    fov = np.array([[True, False]])
    out = error_overlay(y, ~y, fov)
    assert tuple(out[0, 0]) == ERROR_COLOURS["fn"]
    assert tuple(out[0, 1]) == (0, 0, 0)


def test_error_overlay_refuses_shapes_that_differ():
    with pytest.raises(
        ValueError, match=r"y_pred must have the image's shape \(2, 2\)"
    ):
        error_overlay(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_probability_image_maps_0_and_1_to_the_ends_of_viridis():
    out = probability_image(
        np.array([[0.0, 1.0, 2.0]]), fov=np.array([[1, 1, 0]], bool)
    )
    assert out.shape == (1, 3, 3)
    assert out[0, 0, 2] > out[0, 0, 1]  # viridis starts purple: blue > green
    assert out[0, 1, 1] > out[0, 1, 2]  # and ends yellow: green > blue
    assert tuple(out[0, 2]) == (0, 0, 0)


def test_png_round_trip_keeps_rgb_order_and_masks():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    back = cv2.imdecode(np.frombuffer(to_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert tuple(back[0, 0]) == (0, 0, 255)  # OpenCV reads BGR: red is last
    mask = np.array([[True, False]])
    back = cv2.imdecode(np.frombuffer(to_png(mask), np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(back, [[255, 0]])
    np.testing.assert_array_equal(mask_image(mask), [[255, 0]])


def test_png_refuses_float_images():
    with pytest.raises(ValueError, match="must be uint8 or bool, got float64"):
        to_png(np.zeros((2, 2)))


def test_thumbnail_shrinks_the_longer_side_and_never_enlarges():
    image = np.zeros((100, 50, 3), np.uint8)
    assert thumbnail(image, 20).shape == (20, 10, 3)
    assert thumbnail(image, 500) is image
    assert thumbnail(np.ones((40, 40), bool), 10).dtype == np.uint8


def test_csv_writes_nan_as_empty_and_unions_columns():
    text = to_csv([{"case": "a", "f1": 0.5}, {"case": "b", "f1": float("nan"), "n": 3}])
    assert text == "case,f1,n\na,0.5,\nb,,3\n"


def test_zip_and_result_files_hold_every_picture():
    image = np.zeros((2, 2, 3), np.uint8)
    prob = np.array([[0.9, 0.1], [0.6, 0.2]], np.float32)
    mask = np.array([[True, False], [False, False]])
    files = result_files("07", image, prob, 0.5, vessel_mask=mask, metrics={"f1": 0.5})
    assert sorted(files) == [
        "07_errors.png",
        "07_image.png",
        "07_manual.png",
        "07_metrics.csv",
        "07_probability.npy",
        "07_probability.png",
        "07_vessels.png",
    ]
    assert files["07_metrics.csv"] == "case,threshold,f1\n07,0.5,0.5\n"
    with zipfile.ZipFile(io.BytesIO(to_zip(files))) as zf:
        assert sorted(zf.namelist()) == sorted(files)
        np.testing.assert_array_equal(
            np.load(io.BytesIO(zf.read("07_probability.npy"))), prob
        )
    no_mask = result_files("r", image, prob, 0.5)
    assert "r_errors.png" not in no_mask and "r_manual.png" not in no_mask


def test_data_uri_holds_a_png_thumbnail():
    uri = data_uri(np.zeros((300, 100, 3), np.uint8), max_side=30)
    assert uri.startswith("data:image/png;base64,")
    png = base64.b64decode(uri.split(",", 1)[1])
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape == (
        30,
        10,
        3,
    )
