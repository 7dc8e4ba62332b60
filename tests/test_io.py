"""Reading images and masks by content, and discovering datasets (vessel_core.io)."""

from __future__ import annotations

import gzip
import io
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image

from vessel_core.io import (
    Discovery,
    LoadError,
    Unpaired,
    discover,
    estimate_fov,
    load_files,
    read_image,
    read_mask,
    second_observer,
)

# --------------------------------------------------------------------------------
# helpers: tiny images written in every format


def rgb_image(h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def square_mask(h: int = 12, w: int = 10, top: int = 3, left: int = 2, side: int = 4):
    mask = np.zeros((h, w), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def save(path: Path, array: np.ndarray, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def palette_gif(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """A GIF whose pixels are palette indices (0, 1...) mapped to ``colours``."""
    pil = Image.fromarray(indices.astype(np.uint8), mode="P")
    flat = [c for colour in colours for c in colour]
    pil.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    pil.save(buf, format="GIF")
    return buf.getvalue()


def png_16bit_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot)."""
    h, w, _ = array.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def fundus(h: int = 48, w: int = 44, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on black (an image with an obvious FOV) and its disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.42 * min(h, w)) ** 2
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = (180, 90, 40)
    image[disc] += rng.integers(0, 20, (int(disc.sum()), 3), dtype=np.uint8)
    return image, disc


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------------
# read_image


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "BMP", "PPM"])
def test_read_image_lossless_formats_round_trip(tmp_path, fmt):
    image = rgb_image()
    path = save(tmp_path / f"x.{fmt.lower()}", image, fmt)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    assert_array_equal(out, image)


def test_read_image_ignores_the_extension(tmp_path):
    image = rgb_image()
    path = save(tmp_path / "really_a_png.jpg", image, "PNG")
    assert_array_equal(read_image(path), image)


def test_read_image_jpeg_is_close(tmp_path):
    image = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    path = save(tmp_path / "x.jpg", image, "JPEG", quality=95)
    out = read_image(path)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - image).max() <= 3


def test_read_image_grey_gives_three_equal_channels(tmp_path):
    grey = np.arange(120, dtype=np.uint8).reshape(12, 10)
    path = save(tmp_path / "g.pgm", grey, "PPM")
    out = read_image(path)
    assert out.shape == (12, 10, 3)
    for c in range(3):
        assert_array_equal(out[..., c], grey)


def test_read_image_16bit_tiff_rescaled_by_real_range(tmp_path):
    # real range 1000..5000: 1000 -> 0, 1800 -> 51 (= 800 / 4000 * 255), 5000 -> 255
    values = np.array([[1000, 1800], [5000, 1000]], np.uint16)
    path = save(tmp_path / "x16.tif", values, "TIFF")
    assert Image.open(path).mode.startswith("I;16")
    out = read_image(path)
    assert_array_equal(out[..., 0], [[0, 51], [255, 0]])
    assert_array_equal(out[..., 1], out[..., 2])


def test_read_image_constant_16bit_gives_zeros(tmp_path):
    path = save(tmp_path / "flat.tif", np.full((3, 4), 700, np.uint16), "TIFF")
    assert_array_equal(read_image(path), np.zeros((3, 4, 3), np.uint8))


def test_read_image_16bit_colour_png_is_rescaled_by_its_real_range():
    # a dark 12-bit camera image: top 8 bits would leave it at 0..15
    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 0] = (4095, 2048, 0)
    values[1, 2] = (1024, 0, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(png_16bit_rgb(values), name="wide.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert_array_equal(out[0, 0], (255, 128, 0))  # one range for all channels
    assert_array_equal(out[1, 2], (64, 0, 6))


def test_read_image_16bit_colour_tiff_is_rescaled_by_its_real_range(tmp_path):
    import cv2

    values = np.zeros((4, 5, 3), np.uint16)
    values[1, 1] = (3000, 1500, 0)  # RGB
    path = tmp_path / "wide.tif"
    assert cv2.imwrite(str(path), values[..., ::-1])  # OpenCV writes BGR
    out = read_image(path)
    assert_array_equal(out[1, 1], (255, 128, 0))
    assert out[0, 0].tolist() == [0, 0, 0]


def test_read_image_16bit_colour_opencv_cannot_read_warns_and_keeps_top_bits(
    monkeypatch,
):
    from vessel_core import io as io_module

    monkeypatch.setattr(io_module, "_decode_16bit_colour", lambda data, size: None)
    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 0] = (0x1234, 0xFF00, 0x00FF)
    with pytest.warns(UserWarning, match="16-bit colour"):
        out = read_image(png_16bit_rgb(values), name="wide.png")
    assert_array_equal(out[0, 0], (0x12, 0xFF, 0x00))


def test_read_image_palette_gif_goes_through_the_palette():
    indices = np.array([[0, 1], [2, 1]])
    data = palette_gif(indices, [(0, 0, 0), (200, 30, 10), (5, 250, 90)])
    out = read_image(data, name="p.gif")
    assert_array_equal(out[0, 1], (200, 30, 10))
    assert_array_equal(out[1, 0], (5, 250, 90))


def test_read_image_rgba_png_drops_alpha():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 120
    rgba[..., 3] = 0
    out = read_image(encode(rgba, "PNG"), name="a.png")
    assert out.shape == (4, 5, 3)
    assert (out[..., 0] == 120).all() and (out[..., 1:] == 0).all()


def test_read_image_gzip_ppm(tmp_path):
    image = rgb_image()
    path = tmp_path / "im0001.ppm.gz"
    path.write_bytes(gzip.compress(encode(image, "PPM")))
    assert_array_equal(read_image(path), image)


def test_read_image_gzip_detected_by_content_not_name(tmp_path):
    image = rgb_image()
    path = tmp_path / "no_gz_suffix.ppm"
    path.write_bytes(gzip.compress(encode(image, "PPM")))
    assert_array_equal(read_image(path), image)


def test_text_renamed_png_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not an image\n")
    with pytest.raises(LoadError, match=r"notes\.png.*not an image"):
        read_image(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(LoadError, match=r"empty\.tif.*empty"):
        read_mask(path)


def test_truncated_png_is_refused(tmp_path):
    data = encode(rgb_image(40, 40), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"cut\.png.*truncated or corrupt PNG"):
        read_image(path)


def test_truncated_gzip_is_refused():
    data = gzip.compress(encode(rgb_image(), "PPM"))
    with pytest.raises(LoadError, match=r"up\.ppm\.gz.*gzip"):
        read_image(data[:-12], name="up.ppm.gz")


def test_unknown_binary_format_is_refused():
    with pytest.raises(LoadError, match=r"blob\.bin.*unknown format.*expected TIFF"):
        read_image(bytes(range(200, 256)) * 3, name="blob.bin")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        read_image(tmp_path / "nowhere.png")


def test_load_error_is_a_value_error():
    assert issubclass(LoadError, ValueError)


def test_bytes_without_name_are_called_bytes():
    with pytest.raises(LoadError, match="<bytes>"):
        read_image(b"hello")


def test_wrong_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="path or bytes"):
        read_image(12)


# --------------------------------------------------------------------------------
# read_mask


def test_mask_palette_index_one_painted_white_is_true():
    indices = np.array([[0, 1, 1], [0, 0, 1]])
    data = palette_gif(indices, [(0, 0, 0), (255, 255, 255)])
    assert_array_equal(read_mask(data, name="m.gif"), indices == 1)


def test_mask_inverted_palette_goes_through_the_palette():
    indices = np.array([[0, 1, 1], [0, 0, 1]])
    data = palette_gif(indices, [(255, 255, 255), (0, 0, 0)])
    assert_array_equal(read_mask(data, name="inv.gif"), indices == 0)


def test_mask_palette_with_dark_colour_for_index_one_is_false():
    # raw index 1 is not "on": its colour (1, 1, 1) is black
    indices = np.array([[0, 1], [1, 0]])
    data = palette_gif(indices, [(0, 0, 0), (1, 1, 1)])
    assert not read_mask(data, name="dark.gif").any()


def test_mask_grey_gif_0_255():
    mask = square_mask()
    assert_array_equal(read_mask(encode(mask, "GIF"), name="m.gif"), mask)


def test_mask_jpeg_lossy_gives_clean_binary():
    mask = np.zeros((64, 64), bool)
    mask[10:50, 20:28] = True
    mask[30:36, 5:60] = True
    out = read_mask(encode(mask, "JPEG", quality=60), name="m.jpg")
    assert out.dtype == bool
    decoded = np.asarray(Image.open(io.BytesIO(encode(mask, "JPEG", quality=60))))
    assert len(np.unique(decoded)) > 2  # the file really is lossy
    assert (out == mask).mean() > 0.99


def test_mask_colour_takes_the_max_over_channels():
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # red drawing
    rgb[1, 1] = (0, 200, 0)  # green drawing
    rgb[2, 2] = (100, 100, 100)  # grey below half
    out = read_mask(encode(rgb, "PNG"), name="c.png")
    expected = np.zeros((3, 4), bool)
    expected[0, 0] = expected[1, 1] = True
    assert_array_equal(out, expected)


def test_mask_rgba_opaque_uses_the_colour():
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1, :, :3] = 255
    out = read_mask(encode(rgba, "PNG"), name="o.png")
    assert_array_equal(out, [[0, 0, 0], [1, 1, 1], [0, 0, 0]])


def test_mask_rgba_alpha_only_drawing_uses_alpha():
    rgba = np.zeros((3, 3, 4), np.uint8)  # black everywhere
    rgba[:, 2, 3] = 255  # drawn only through opacity
    out = read_mask(encode(rgba, "PNG"), name="alpha.png")
    assert_array_equal(out, [[0, 0, 1]] * 3)


def test_mask_rgba_transparent_pixels_are_background():
    rgba = np.full((2, 3, 4), 255, np.uint8)
    rgba[0, 0, :3] = 0  # black, opaque
    rgba[1, 2, 3] = 0  # white but transparent
    out = read_mask(encode(rgba, "PNG"), name="t.png")
    assert_array_equal(out, [[0, 1, 1], [1, 1, 0]])


def test_mask_label_image_0_1_png():
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    assert_array_equal(read_mask(encode(labels, "PNG"), name="l.png"), labels == 1)


def test_mask_16bit_tiff_thresholds_at_half_range(tmp_path):
    values = np.array([[0, 65535], [40000, 30000]], np.uint16)
    path = save(tmp_path / "m16.tif", values, "TIFF")
    assert_array_equal(read_mask(path), [[0, 1], [1, 0]])


def test_mask_16bit_tiff_holding_0_255_is_read_as_8bit(tmp_path):
    values = np.array([[0, 255], [255, 0]], np.uint16)
    path = save(tmp_path / "m16.tif", values, "TIFF")
    assert_array_equal(read_mask(path), [[0, 1], [1, 0]])


def test_mask_bmp_and_pgm(tmp_path):
    mask = square_mask()
    assert_array_equal(read_mask(save(tmp_path / "m.bmp", mask, "BMP")), mask)
    assert_array_equal(read_mask(save(tmp_path / "m.pgm", mask, "PPM")), mask)


def test_mask_gzip_ppm(tmp_path):
    mask = square_mask()
    rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    path = tmp_path / "im0001.ah.ppm.gz"
    path.write_bytes(gzip.compress(encode(rgb, "PPM")))
    assert_array_equal(read_mask(path), mask)


# --------------------------------------------------------------------------------
# estimate_fov


def test_estimate_fov_finds_the_disc():
    image, disc = fundus(80, 90)
    assert iou(estimate_fov(image), disc) > 0.95


def test_estimate_fov_fills_holes_and_drops_specks():
    image, disc = fundus(80, 90)
    image[36:44, 40:48] = 0  # a dark lesion inside the fundus
    image[1:3, 1:3] = 250  # a bright speck in the border
    fov = estimate_fov(image)
    assert fov[36:44, 40:48].all()
    assert not fov[1:3, 1:3].any()
    assert iou(fov, disc) > 0.95


def test_estimate_fov_erodes_the_rim():
    image, disc = fundus(80, 90)
    fov = estimate_fov(image, erosion=3)
    assert fov.sum() < estimate_fov(image, erosion=0).sum()
    assert not (fov & ~disc).any()


def test_estimate_fov_black_image_warns_and_is_empty():
    with pytest.warns(UserWarning, match="no field of view"):
        fov = estimate_fov(np.zeros((10, 10, 3), np.uint8))
    assert fov.shape == (10, 10) and not fov.any()


def test_estimate_fov_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 2\)"):
        estimate_fov(np.zeros((4, 4, 2)))


# --------------------------------------------------------------------------------
# layouts built small in tmp_path


def write_drive(root: Path, ext_case: str = "lower") -> dict[str, np.ndarray]:
    """Two training and two test cases in DRIVE's layout; returns vessel masks."""

    def ext(e: str) -> str:
        return {"lower": e, "upper": e.upper(), "title": e.title()}[ext_case]

    masks = {}
    for i, (cid, split) in enumerate(
        [("21", "training"), ("22", "training"), ("01", "test"), ("02", "test")]
    ):
        image, fov = fundus(30, 28, seed=i)
        mask = square_mask(30, 28, top=5 + i, left=6, side=5) & fov
        masks[cid] = mask
        base = root / split
        save(base / "images" / f"{cid}_{split}.{ext('tif')}", image, "TIFF")
        save(base / "1st_manual" / f"{cid}_manual1.{ext('gif')}", mask, "GIF")
        save(base / "mask" / f"{cid}_{split}_mask.{ext('gif')}", fov, "GIF")
        if split == "test":
            second = palette_gif(mask.astype(int), [(0, 0, 0), (255, 255, 255)])
            path = base / "2nd_manual" / f"{cid}_manual2.{ext('gif')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(second)
    return masks


def test_discover_drive_layout(tmp_path):
    masks = write_drive(tmp_path)
    (tmp_path / "README.txt").write_text("DRIVE, tiny")
    found = discover(tmp_path)
    assert isinstance(found, Discovery)
    assert found.layout == "DRIVE"
    assert [c.id for c in found.cases] == ["01", "02", "21", "22"]
    assert [c.split for c in found.cases] == ["test", "test", "train", "train"]
    for case in found.cases:
        assert_array_equal(case.vessel_mask, masks[case.id])
        assert not case.fov_estimated and case.dataset == "DRIVE"
        assert case.sources["image"].endswith(
            f"{case.id}_{'test' if case.split == 'test' else 'training'}.tif"
        )
    assert sorted(found.extra["second_observer"]) == ["01", "02"]
    assert_array_equal(found.extra["second_observer"]["01"], masks["01"])
    assert [u.role for u in found.unpaired] == ["other"]
    assert found.unpaired[0].path.endswith("README.txt")


def test_second_observer_function(tmp_path):
    masks = write_drive(tmp_path)
    second = second_observer(tmp_path)
    assert sorted(second) == ["01", "02"]
    assert_array_equal(second["02"], masks["02"])


@pytest.mark.parametrize("ext_case", ["upper", "title"])
def test_discover_mixed_case_extensions(tmp_path, ext_case):
    write_drive(tmp_path, ext_case=ext_case)
    found = discover(tmp_path)
    assert found.layout == "DRIVE" and len(found.cases) == 4
    assert all(c.has_mask and not c.fov_estimated for c in found.cases)


def test_discover_stare_layout(tmp_path):
    image1, disc1 = fundus(30, 32, seed=1)
    image2, disc2 = fundus(30, 32, seed=2)
    ah = square_mask(30, 32) & disc1
    vk = square_mask(30, 32, top=8) & disc1
    vk2 = square_mask(30, 32, left=9) & disc2

    def ppm(array):
        if array.dtype == bool:
            array = np.repeat(array[..., None].astype(np.uint8) * 255, 3, axis=2)
        return encode(array, "PPM")

    (tmp_path / "stare-images").mkdir()
    (tmp_path / "labels-ah").mkdir()
    (tmp_path / "labels-vk").mkdir()
    (tmp_path / "stare-images" / "im0001.ppm.gz").write_bytes(
        gzip.compress(ppm(image1))
    )
    (tmp_path / "stare-images" / "im0002.ppm").write_bytes(ppm(image2))
    (tmp_path / "labels-ah" / "im0001.ah.ppm.gz").write_bytes(gzip.compress(ppm(ah)))
    (tmp_path / "labels-vk" / "im0001.vk.ppm").write_bytes(ppm(vk))
    (tmp_path / "labels-vk" / "im0002.vk.ppm").write_bytes(ppm(vk2))

    with pytest.warns(UserWarning, match="im0002.*no first observer") as record:
        found = discover(tmp_path)
    assert record[0].filename == __file__  # the warning points at the caller
    assert found.layout == "STARE"
    assert [c.id for c in found.cases] == ["im0001", "im0002"]
    first, second = found.cases
    assert_array_equal(first.vessel_mask, ah)  # .ah is the vessel mask
    assert_array_equal(second.vessel_mask, vk2)  # only .vk: used instead
    assert_array_equal(found.extra["second_observer"]["im0001"], vk)
    assert all(c.fov_estimated and c.split == "train" for c in found.cases)
    assert iou(first.fov_mask, disc1) > 0.9
    assert first.sources["fov_mask"] == "estimated"


def test_discover_chase_layout(tmp_path):
    for i, cid in enumerate(["01L", "01R", "02L"]):
        image, disc = fundus(30, 32, seed=i)
        save(tmp_path / f"Image_{cid}.jpg", image, "JPEG", quality=95)
        save(tmp_path / f"Image_{cid}_1stHO.png", square_mask(30, 32, top=i), "PNG")
        save(tmp_path / f"Image_{cid}_2ndHO.png", square_mask(30, 32, left=i), "PNG")
    found = discover(tmp_path)
    assert found.layout == "CHASE_DB1"
    assert [c.id for c in found.cases] == ["01L", "01R", "02L"]
    assert_array_equal(found.cases[1].vessel_mask, square_mask(30, 32, top=1))
    assert_array_equal(
        found.extra["second_observer"]["02L"], square_mask(30, 32, left=2)
    )
    assert all(c.fov_estimated for c in found.cases)


def test_discover_hrf_layout(tmp_path):
    for i, cid in enumerate(["01_dr", "01_g", "02_h"]):
        image, disc = fundus(30, 32, seed=i)
        save(tmp_path / "images" / f"{cid}.JPG", image, "JPEG", quality=95)
        save(tmp_path / "manual1" / f"{cid}.tif", square_mask(30, 32, top=i), "TIFF")
        save(tmp_path / "mask" / f"{cid}_mask.tif", disc, "TIFF")
    found = discover(tmp_path)
    assert found.layout == "HRF"
    assert [c.id for c in found.cases] == ["01_dr", "01_g", "02_h"]
    for i, case in enumerate(found.cases):
        assert_array_equal(case.vessel_mask, square_mask(30, 32, top=i))
        assert not case.fov_estimated
        assert case.sources["fov_mask"].endswith(f"{case.id}_mask.tif")
    assert found.unpaired == []


def test_discover_generic_layout_with_fov_folder(tmp_path):
    image, disc = fundus(20, 24)
    save(tmp_path / "images" / "a.png", image, "PNG")
    save(tmp_path / "masks" / "a.png", square_mask(20, 24), "PNG")
    save(tmp_path / "fov" / "a.png", disc, "PNG")
    save(tmp_path / "images" / "Case-3.png", image, "PNG")
    save(tmp_path / "masks" / "case_3_mask.PNG", square_mask(20, 24, top=1), "PNG")
    save(tmp_path / "images" / "lonely.png", image, "PNG")  # no vessel mask
    save(tmp_path / "masks" / "orphan.png", square_mask(20, 24), "PNG")  # no image
    found = discover(tmp_path)
    assert found.layout == "generic"
    by_id = {c.id: c for c in found.cases}
    assert set(by_id) == {"a", "Case-3", "lonely"}
    assert not by_id["a"].fov_estimated and by_id["Case-3"].fov_estimated
    assert_array_equal(by_id["Case-3"].vessel_mask, square_mask(20, 24, top=1))
    assert by_id["lonely"].vessel_mask is None
    unpaired = {Path(u.path).name: u for u in found.unpaired}
    assert set(unpaired) == {"lonely.png", "orphan.png"}
    assert unpaired["orphan.png"].role == "vessel_mask"
    assert "no image" in unpaired["orphan.png"].reason
    assert unpaired["lonely.png"].role == "image"


def test_generic_masks_folder_is_fov_beside_a_labels_folder(tmp_path):
    image, disc = fundus(20, 24)
    save(tmp_path / "images" / "x1.png", image, "PNG")
    save(tmp_path / "labels" / "x1.png", square_mask(20, 24), "PNG")
    save(tmp_path / "masks" / "x1.png", disc, "PNG")
    case = discover(tmp_path).cases[0]
    assert_array_equal(case.vessel_mask, square_mask(20, 24))
    assert_array_equal(case.fov_mask, disc)
    assert not case.fov_estimated


def test_generic_masks_folder_is_vessel_under_a_vessel_named_root(tmp_path):
    # a vessel word in a parent folder does not make masks/ the FOV
    root = tmp_path / "vessel_segmentation"
    save(root / "images" / "x1.png", fundus(20, 24)[0], "PNG")
    save(root / "masks" / "x1_mask.png", square_mask(20, 24), "PNG")
    case = discover(tmp_path).cases[0]
    assert_array_equal(case.vessel_mask, square_mask(20, 24))
    assert case.fov_estimated


def test_generic_flat_folder_by_name_words(tmp_path):
    image, disc = fundus(20, 24)
    save(tmp_path / "eye7.png", image, "PNG")
    save(tmp_path / "eye7_vessels.png", square_mask(20, 24), "PNG")
    save(tmp_path / "eye7_fov.png", disc, "PNG")
    (case,) = discover(tmp_path).cases
    assert case.id == "eye7"
    assert_array_equal(case.vessel_mask, square_mask(20, 24))
    assert_array_equal(case.fov_mask, disc)


def test_generic_split_folders_and_repeated_ids(tmp_path):
    image, _ = fundus(20, 24)
    for split in ("train", "test"):
        top = 0 if split == "train" else 6
        save(tmp_path / split / "images" / "01.png", image, "PNG")
        save(tmp_path / split / "masks" / "01.png", square_mask(20, 24, top=top), "PNG")
    found = discover(tmp_path)
    by_id = {c.id: c for c in found.cases}
    assert sorted(by_id) == ["test-01", "train-01"]
    assert by_id["train-01"].split == "train" and by_id["test-01"].split == "test"
    assert_array_equal(by_id["test-01"].vessel_mask, square_mask(20, 24, top=6))


def test_pairing_is_by_id_never_by_order(tmp_path):
    # images a, b, c and masks b, c, d: pairing by position would pair a with b
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    for name in names:
        save(tmp_path / "images" / f"{name}.png", fundus(20, 24)[0], "PNG")
    for i, name in enumerate(["b", "c", "d"]):
        save(tmp_path / "labels" / f"{name}_gt.png", square_mask(20, 24, top=i), "PNG")
    found = discover(tmp_path)
    by_id = {c.id: c for c in found.cases}
    assert by_id["a"].vessel_mask is None
    assert_array_equal(by_id["b"].vessel_mask, square_mask(20, 24, top=0))
    assert_array_equal(by_id["c"].vessel_mask, square_mask(20, 24, top=1))
    assert {Path(u.path).name for u in found.unpaired} == {"a.png", "d_gt.png"}

    # uploads in a shuffled order give the same pairs
    files = [
        (p.relative_to(tmp_path).as_posix(), p.read_bytes())
        for p in sorted(tmp_path.rglob("*.png"))
    ]
    for _ in range(3):
        order = rng.permutation(len(files))
        again = load_files([files[i] for i in order])
        assert [c.id for c in again.cases] == ["a", "b", "c"]
        for case in again.cases:
            if case.has_mask:
                assert_array_equal(case.vessel_mask, by_id[case.id].vessel_mask)


def test_mismatched_sizes_name_both_files_and_sizes(tmp_path):
    save(tmp_path / "images" / "a.png", fundus(20, 24)[0], "PNG")
    save(tmp_path / "masks" / "a.png", square_mask(21, 24), "PNG")
    with pytest.raises(LoadError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "images/a.png" in message and "masks/a.png" in message
    assert "24x20" in message and "24x21" in message


def test_unreadable_member_is_reported_with_its_name(tmp_path):
    save(tmp_path / "images" / "a.png", fundus(20, 24)[0], "PNG")
    data = encode(square_mask(20, 24), "PNG")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(data[:40])
    with pytest.raises(LoadError, match=r"masks/a\.png.*truncated"):
        discover(tmp_path)


def test_non_images_are_listed_not_read(tmp_path):
    save(tmp_path / "images" / "a.png", fundus(20, 24)[0], "PNG")
    (tmp_path / "images" / "notes.txt").write_text("text")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["a"]
    assert [(Path(u.path).name, u.role) for u in found.unpaired] == [
        ("notes.txt", "other")
    ]
    # named like an image: broken, so the load stops and says which
    (tmp_path / "images" / "notes.png").write_text("text named like an image")
    with pytest.raises(LoadError, match="notes.png': not an image: the content is"):
        discover(tmp_path)


def test_several_images_for_one_id_are_all_unpaired(tmp_path):
    image = fundus(20, 24)[0]
    save(tmp_path / "images" / "a.png", image, "PNG")
    save(tmp_path / "images" / "A.tif", image, "TIFF")
    save(tmp_path / "images" / "b.png", image, "PNG")
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["b"]
    assert all("several images" in u.reason for u in found.unpaired)
    assert len(found.unpaired) == 2


def test_discover_refuses_missing_and_empty(tmp_path):
    with pytest.raises(LoadError, match="no such folder"):
        discover(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no files"):
        discover(tmp_path / "empty")
    (tmp_path / "only").mkdir()
    save(tmp_path / "only" / "masks" / "z.png", square_mask(), "PNG")
    with pytest.raises(LoadError, match="no case could be built.*no image"):
        discover(tmp_path / "only")


# --------------------------------------------------------------------------------
# ZIP archives and uploads


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return target


def test_zip_dataset_is_discovered(tmp_path):
    masks = write_drive(tmp_path / "DRIVE")
    archive = zip_folder(tmp_path / "DRIVE", tmp_path / "drive.zip", prefix="DRIVE/")
    found = discover(archive)
    assert found.layout == "DRIVE" and len(found.cases) == 4
    case = found.cases[0]
    assert case.sources["image"].startswith("zip:")
    assert case.sources["image"].endswith("DRIVE/test/images/01_test.tif")
    assert_array_equal(case.vessel_mask, masks["01"])


@pytest.mark.parametrize("member", ["../evil.png", "a/../../evil.png", "/abs/evil.png"])
def test_zip_with_escaping_member_is_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/a.png", encode(fundus(20, 24)[0], "PNG"))
        zf.writestr(member, encode(square_mask(), "PNG"))
    with pytest.raises(LoadError, match=r"bad\.zip.*member"):
        discover(archive)


def test_discover_refuses_a_file_that_is_not_a_zip(tmp_path):
    path = save(tmp_path / "x.png", rgb_image(), "PNG")
    with pytest.raises(LoadError, match="not a ZIP"):
        discover(path)


def test_load_files_pairs_uploads_by_name():
    image, disc = fundus(20, 24)
    files = [
        ("21_manual1.gif", encode(square_mask(20, 24), "GIF")),
        ("21_training.tif", encode(image, "TIFF")),
        ("21_training_mask.gif", encode(disc, "GIF")),
    ]
    found = load_files(files)
    assert found.layout == "DRIVE"
    (case,) = found.cases
    assert case.id == "21" and case.split == "train" and not case.fov_estimated
    assert case.sources["image"] == "upload:21_training.tif"
    assert_array_equal(case.vessel_mask, square_mask(20, 24))


def test_load_files_lists_hidden_uploads_unread():
    image, disc = fundus(20, 24)
    files = [
        ("21_training.tif", encode(image, "TIFF")),
        ("._21_training.tif", b"\x00\x05\x16\x07 AppleDouble, not a TIFF"),
        ("21_manual1.gif", encode(square_mask(20, 24), "GIF")),
        ("Thumbs.db", b"thumbnails"),
    ]
    found = load_files(files)
    (case,) = found.cases
    assert case.sources["image"] == "upload:21_training.tif"
    hidden = [u for u in found.unpaired if "hidden or system file" in u.reason]
    assert [u.path for u in hidden] == ["upload:._21_training.tif", "upload:Thumbs.db"]
    with pytest.raises(LoadError, match=r"only hidden or system files \('\._a\.tif'"):
        load_files([("._a.tif", b"junk")])


def test_load_files_opens_an_uploaded_zip(tmp_path):
    write_drive(tmp_path / "d")
    archive = zip_folder(tmp_path / "d", tmp_path / "d.zip")
    found = load_files([("d.zip", archive.read_bytes())])
    assert found.layout == "DRIVE" and len(found.cases) == 4
    assert found.cases[0].sources["image"] == "zip:d.zip/test/images/01_test.tif"


def test_load_files_hrf_image_and_mask_with_one_name():
    image, disc = fundus(20, 24)
    files = [
        ("01_dr.JPG", encode(image, "JPEG", quality=95)),
        ("01_dr.tif", encode(square_mask(20, 24), "TIFF")),
        ("01_dr_mask.tif", encode(disc, "TIFF")),
    ]
    found = load_files(files)
    (case,) = found.cases
    assert found.layout == "HRF"
    assert case.sources["image"] == "upload:01_dr.JPG"
    assert case.sources["vessel_mask"] == "upload:01_dr.tif"
    assert_array_equal(case.vessel_mask, square_mask(20, 24))


def test_load_files_refuses_nothing_and_duplicates():
    with pytest.raises(LoadError, match="no files"):
        load_files([])
    data = encode(rgb_image(), "PNG")
    with pytest.raises(LoadError, match="twice"):
        load_files([("a.png", data), ("a.png", data)])
    with pytest.raises(
        LoadError, match=r"(?s)e\.png.*: nothing was loaded.*\n  - empty file"
    ):
        load_files([("e.png", b"")])


def test_unpaired_record():
    u = Unpaired("x.png", "image", "why")
    assert (u.path, u.role, u.reason) == ("x.png", "image", "why")


# --------------------------------------------------------------------------------
# the real DRIVE


@pytest.fixture(scope="module")
def drive_found(drive_root) -> tuple[Discovery, float]:
    start = time.perf_counter()
    found = discover(drive_root)
    return found, time.perf_counter() - start


@pytest.mark.drive
def test_drive_real_dataset(drive_found):
    found, elapsed = drive_found
    assert found.layout == "DRIVE"
    assert [c.id for c in found.cases] == [f"{i:02d}" for i in range(1, 41)]
    assert all(c.has_mask and not c.fov_estimated for c in found.cases)
    assert all(c.shape == (584, 565) for c in found.cases)
    assert all(
        c.vessel_mask.shape == c.fov_mask.shape == (584, 565) for c in found.cases
    )
    splits = [c.split for c in found.cases]
    assert splits.count("train") == 20 and splits.count("test") == 20
    assert all(c.split == ("test" if int(c.id) <= 20 else "train") for c in found.cases)
    assert sorted(found.extra["second_observer"]) == [f"{i:02d}" for i in range(1, 21)]
    assert found.unpaired == []
    # vessels cover roughly 12% of the FOV in both observers (palette GIFs read right)
    for case in found.cases[:20]:
        second = found.extra["second_observer"][case.id]
        for mask in (case.vessel_mask, second):
            assert 0.07 < mask[case.fov_mask].mean() < 0.2
    assert elapsed < 15.0, f"discovering DRIVE took {elapsed:.1f} s"


@pytest.mark.drive
@pytest.mark.slow
def test_drive_estimated_fov_agrees_with_given(drive_found):
    found, _ = drive_found
    scores = [iou(estimate_fov(c.image), c.fov_mask) for c in found.cases]
    assert min(scores) > 0.95, f"worst IoU {min(scores):.3f}"


def test_a_photograph_given_as_a_mask_is_refused_naming_the_file(drive_root):
    photo = (drive_root / "training/images/23_training.tif").read_bytes()
    with pytest.raises(LoadError, match=r"'23_manual1.tif' looks like a photograph"):
        read_mask(photo, name="23_manual1.tif")


def test_masks_with_soft_edges_or_colour_are_not_taken_for_photographs():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, :] = 255
    mask[19, :] = mask[44, :] = 128  # anti-aliased edges
    grey = Image.fromarray(mask)
    buf = io.BytesIO()
    grey.save(buf, format="JPEG", quality=60)
    assert read_mask(buf.getvalue(), name="soft.jpg")[30, 30]
    red = np.zeros((64, 64, 3), np.uint8)
    red[rng.random((64, 64)) < 0.3] = (200, 0, 0)  # a red drawing on black
    buf = io.BytesIO()
    Image.fromarray(red).save(buf, format="PNG")
    assert read_mask(buf.getvalue(), name="red.png").mean() == pytest.approx(0.3, 0.1)
