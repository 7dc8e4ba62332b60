"""Bad files and bad model folders: each refused or reported, naming the file.

Every input is built here, in ``tmp_path`` or in memory: text named like an
image, cut files, headers claiming huge images, masks that are blank, of the
wrong size or given where an image belongs, archives that climb out of
themselves or unpack to far more than their size, names holding HTML; model
folders that are half-written, killed, claimed twice, or hold pickled code.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image

from vessel_core import io as vio
from vessel_core import store
from vessel_core.io import LoadError, discover, display_name, load_files, read_image

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------
# helpers


def encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fundus(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    """A coloured disc on black, with noise: an image that is no mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.45 * min(h, w)) ** 2
    image = np.zeros((h, w, 3), np.uint8)
    noise = np.random.default_rng(seed).integers(0, 30, (int(disc.sum()), 3))
    image[disc] = (170, 80, 40) + noise
    return image


def vessel(h: int = 20, w: int = 24) -> np.ndarray:
    """A cross through the middle of the disc: 1 row + 1 column of vessel."""
    mask = np.zeros((h, w), bool)
    mask[h // 2, 4 : w - 4] = True
    mask[4 : h - 4, w // 2] = True
    return mask


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` RGB pixels, with almost no pixel data.

    Decoding it would fail (or need gigabytes); only a size check on the header
    can refuse it as too large.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame claim ``width x height`` pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def ends_with_fix(message: str, kind: str) -> bool:
    return message.endswith(vio._WHAT_TO_DO[kind])


# --------------------------------------------------------------------------------
# bad files: each LoadError names the file, what is wrong and what to do


@pytest.mark.parametrize(
    ("name", "content", "problem", "kind"),
    [
        ("notes.png", b"these are my notes, not an image\n", "not an image", "format"),
        ("empty.tif", b"", r"empty file \(0 bytes\)", "empty"),
        ("blob.jpg", bytes(range(200, 256)) * 3, "unknown format", "format"),
        ("photos.png", b"7z\xbc\xaf\x27\x1c" + bytes(40), "a 7z archive", "format"),
        (
            "cut.png",
            encode(fundus(40, 40))[:300],
            "truncated or corrupt PNG",
            "corrupt",
        ),
    ],
)
def test_unreadable_file_names_it_says_why_and_what_to_do(
    tmp_path, name, content, problem, kind
):
    path = write(tmp_path / name, content)
    with pytest.raises(LoadError, match=problem) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(repr(str(path)))
    assert ends_with_fix(message, kind), message


def test_cut_gzip_says_truncated():
    import gzip

    data = gzip.compress(encode(fundus(), "PPM"))
    with pytest.raises(LoadError, match=r"'im0001\.ppm\.gz'.*truncated") as info:
        read_image(data[: len(data) // 2], name="im0001.ppm.gz")
    assert ends_with_fix(str(info.value), "corrupt")


def test_unreadable_member_of_a_dataset_is_named_in_the_one_error(tmp_path):
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "images" / "b.png", encode(fundus())[:60])
    write(tmp_path / "masks" / "a.png", encode(vessel()))
    with pytest.raises(
        LoadError, match=r"nothing was loaded, because of 1 problem:"
    ) as info:
        discover(tmp_path)
    assert "images/b.png" in str(info.value)
    assert "copy or export it again" in str(info.value)


# --------------------------------------------------------------------------------
# images too large in pixels: refused from the header, the limit in the message


def test_pixel_limit_is_a_stated_constant():
    assert vio.MAX_PIXELS == 40_000_000
    assert 3504 * 2336 < vio.MAX_PIXELS  # HRF, the largest public fundus images


def test_huge_png_is_refused_from_its_header():
    data = png_header_only(8000, 6000)  # 48 MP, and no real pixel data
    with pytest.raises(LoadError) as info:
        read_image(data, name="huge.png")
    message = str(info.value)
    assert message.startswith("'huge.png': the PNG image has 48.0 megapixels")
    assert "(8000x6000, width x height)" in message
    assert "more than the 40 megapixels allowed (HRF's photographs" in message
    assert "not decoded" in message  # a decoded file would be "truncated"
    assert ends_with_fix(message, "too_large")


def test_huge_gif_past_pillows_own_limit_gets_the_same_message():
    # 65535 x 65535 = 4.3 gigapixels: Pillow raises DecompressionBombError itself
    with pytest.raises(LoadError, match="more than the 40 megapixels allowed"):
        vio.read_mask(gif_header_only(65535, 65535), name="bomb.gif")


def test_between_pillows_warning_and_error_it_is_refused_too():
    # 100 MP: above Pillow's warning level (89 MP), below its error (179 MP)
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(LoadError, match=r"100\.0 megapixels"):
            read_image(png_header_only(10_000, 10_000), name="big.png")


def test_pixel_limit_applies_at_the_constant(monkeypatch):
    monkeypatch.setattr(vio, "MAX_PIXELS", 100)
    assert read_image(encode(fundus(10, 10)), name="ok.png").shape == (10, 10, 3)
    with pytest.raises(LoadError, match=r"'no\.png'.*\(11x10, width x height\)"):
        read_image(encode(fundus(10, 11)), name="no.png")


def test_huge_image_in_a_dataset_is_listed_by_name(tmp_path):
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "images" / "b.png", png_header_only(9000, 9000))
    with pytest.raises(LoadError, match=r"images/b\.png.*81\.0 megapixels"):
        discover(tmp_path)


# --------------------------------------------------------------------------------
# masks: blank, all vessel, wrong size, grey levels, several channels


def dataset(root: Path, mask: np.ndarray, fov: np.ndarray | None = None) -> Path:
    write(root / "images" / "a.png", encode(fundus()))
    write(root / "labels" / "a.png", encode(mask))
    if fov is not None:
        write(root / "fov" / "a.png", encode(fov))
    return root


def test_blank_vessel_mask_warns_naming_it_and_keeps_the_case(tmp_path):
    dataset(tmp_path, np.zeros((20, 24), bool))
    with pytest.warns(UserWarning, match=r"labels/a\.png' has no vessel pixel at all"):
        found = discover(tmp_path)
    (case,) = found.cases
    assert case.vessel_mask is not None and not case.vessel_mask.any()


def test_all_vessel_mask_warns_naming_it(tmp_path):
    dataset(tmp_path, np.ones((20, 24), bool))
    with pytest.warns(UserWarning, match=r"labels/a\.png' marks every pixel of the"):
        (case,) = discover(tmp_path).cases
    assert case.vessel_mask.all()


def test_vessels_only_outside_the_fov_warn(tmp_path):
    mask = np.zeros((20, 24), bool)
    mask[0, :] = True  # the top row: outside the disc
    fov = np.zeros((20, 24), bool)
    fov[5:15, 5:19] = True
    dataset(tmp_path, mask, fov)
    with pytest.warns(UserWarning, match="all lie outside it; is the FOV right"):
        discover(tmp_path)


def test_a_plausible_mask_gives_no_warning(tmp_path, recwarn):
    dataset(tmp_path, vessel())
    (case,) = discover(tmp_path).cases
    assert_array_equal(case.vessel_mask, vessel())
    about_masks = [
        w
        for w in recwarn
        if issubclass(w.category, UserWarning) and "pixels a side" not in str(w.message)
    ]
    assert not about_masks  # (the 24x20 image is warned of for its size alone)


def test_images_too_small_for_a_fundus_photograph_are_warned_of_once(tmp_path):
    dataset(tmp_path, vessel())  # one 24x20 image
    with pytest.warns(UserWarning) as caught:
        (case,) = discover(tmp_path).cases
    (size,) = [w for w in caught if "pixels a side" in str(w.message)]
    assert "1 image(s) smaller than 32 pixels a side" in str(size.message)
    assert "a.png (24x20)" in str(size.message)


def test_empty_fov_mask_warns_and_is_estimated(tmp_path):
    dataset(tmp_path, vessel(), fov=np.zeros((20, 24), bool))
    with pytest.warns(UserWarning, match=r"FOV mask '.*fov/a\.png' is empty"):
        (case,) = discover(tmp_path).cases
    assert case.fov_estimated and case.sources["fov_mask"] == "estimated"
    assert case.fov_mask.any()


def test_mask_of_another_size_names_both_files_and_sizes(tmp_path):
    dataset(tmp_path, vessel(21, 24))
    with pytest.raises(LoadError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "images/a.png' is 24x20 (width x height)" in message
    assert "vessel mask" in message and "labels/a.png' is 24x21" in message
    assert ends_with_fix(message, "size")


def test_grey_level_mask_is_thresholded_at_half_range(tmp_path):
    grey = np.zeros((20, 24), np.uint8)
    grey[10, 4:10] = (100, 127, 128, 129, 200, 255)  # anti-aliased levels
    dataset(tmp_path, grey)
    (case,) = discover(tmp_path).cases
    assert_array_equal(case.vessel_mask[10, 4:10], [0, 0, 1, 1, 1, 1])
    assert case.vessel_mask.sum() == 4


def test_colour_and_alpha_masks_take_the_rule(tmp_path):
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[10, 6:18, 0] = 255  # a red line
    rgba[5:15, 12, 1] = 200  # a green line
    rgba[3, 3] = (255, 255, 255, 0)  # white but transparent: background
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "labels" / "a.png", encode(rgba))
    (case,) = discover(tmp_path).cases
    expected = np.zeros((20, 24), bool)
    expected[10, 6:18] = expected[5:15, 12] = True
    assert_array_equal(case.vessel_mask, expected)


# --------------------------------------------------------------------------------
# a mask given where an image belongs


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_mask_given_as_an_image_is_reported_not_used(tmp_path, fmt):
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "labels" / "a.png", encode(vessel()))
    big_mask = np.zeros((64, 64), bool)
    big_mask[20:44, 30:34] = True
    write(tmp_path / "images" / f"b.{fmt.lower()}", encode(big_mask, fmt))
    write(tmp_path / "labels" / "b.png", encode(big_mask))
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["a"]
    reasons = {"/".join(Path(u.path).parts[-2:]): u.reason for u in found.unpaired}
    assert reasons[f"images/b.{fmt.lower()}"].startswith("looks like a mask")
    assert "looks like a mask; not used" in reasons["labels/b.png"]


def test_only_masks_uploaded_say_why_no_case_was_built():
    files = [("a.png", encode(vessel())), ("b.png", encode(~vessel()))]
    with pytest.raises(LoadError, match="no case could be built.*looks like a mask"):
        load_files(files)


def test_real_photographs_do_not_look_like_masks():
    from vessel_core import samples

    assert not vio._looks_like_mask(fundus(200, 220))
    assert not vio._looks_like_mask(samples.retina_case().image)
    for case in samples.synthetic_cases(n=2, size=(96, 96)):
        assert not vio._looks_like_mask(case.image)
    grey = np.repeat(samples.retina_case().image[..., 1:2], 3, axis=2)
    assert not vio._looks_like_mask(grey)  # a green-channel export is no mask


# --------------------------------------------------------------------------------
# pairing: one id claimed twice, files without a partner


def test_two_images_with_one_id_are_reported_naming_both(tmp_path):
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "images" / "A.tif", encode(fundus(seed=1), "TIFF"))
    write(tmp_path / "images" / "b.png", encode(fundus()))
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["b"]
    assert len(found.unpaired) == 2
    for u in found.unpaired:
        assert "several images share case id" in u.reason
        assert "images/A.tif" in u.reason and "images/a.png" in u.reason


def test_two_vessel_masks_with_one_id_are_reported_naming_both(tmp_path):
    write(tmp_path / "eye1.png", encode(fundus()))
    write(tmp_path / "eye1_gt.png", encode(vessel()))
    write(tmp_path / "eye1_manual.png", encode(vessel()))
    found = discover(tmp_path)
    (case,) = found.cases
    assert case.vessel_mask is None
    masks = [u for u in found.unpaired if u.role == "vessel_mask"]
    assert len(masks) == 2
    for u in masks:
        assert "several vessel masks for case 'eye1'" in u.reason
        assert "eye1_gt.png" in u.reason and "eye1_manual.png" in u.reason


def test_images_without_masks_and_masks_without_images_are_reported(tmp_path):
    write(tmp_path / "images" / "a.png", encode(fundus()))
    write(tmp_path / "labels" / "a.png", encode(vessel()))
    write(tmp_path / "images" / "lonely.png", encode(fundus()))
    write(tmp_path / "labels" / "orphan.png", encode(vessel()))
    found = discover(tmp_path)
    assert sorted(c.id for c in found.cases) == ["a", "lonely"]
    by_name = {Path(u.path).name: u for u in found.unpaired}
    assert set(by_name) == {"lonely.png", "orphan.png"}
    assert by_name["lonely.png"].role == "image"
    assert "no vessel mask with case id 'lonely'" in by_name["lonely.png"].reason
    assert by_name["orphan.png"].role == "vessel_mask"
    assert "no image with case id 'orphan'" in by_name["orphan.png"].reason


# --------------------------------------------------------------------------------
# ZIP archives: climbing out, nested, bombs


def make_zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_members() -> dict[str, bytes]:
    return {"images/a.png": encode(fundus()), "labels/a.png": encode(vessel())}


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.png", "points outside the archive"),
        ("images/../../evil.png", "points outside the archive"),
        ("..\\evil.png", "points outside the archive"),
        ("/etc/evil.png", "has an absolute path"),
        ("C:/evil.png", "has an absolute path"),
    ],
)
def test_zip_members_that_climb_out_refuse_the_archive(tmp_path, member, problem):
    archive = write(
        tmp_path / "bad.zip", make_zip({**good_members(), member: encode(vessel())})
    )
    with pytest.raises(LoadError, match=problem) as info:
        discover(archive)
    assert str(info.value).startswith(repr(str(archive)))
    assert ends_with_fix(str(info.value), "archive")
    with pytest.raises(LoadError, match=problem):
        load_files([("bad.zip", archive.read_bytes())])


def test_a_refused_archive_is_told_with_the_other_uploads_problems():
    bad = make_zip({**good_members(), "../evil.png": encode(vessel())})
    worse = make_zip({"/etc/evil.png": encode(vessel())})
    small = encode(vessel()[:20, :20])  # a vessel mask the wrong size for b.png
    files = [
        ("bad.zip", bad),
        ("images/b.png", encode(fundus())),
        ("labels/b.png", small),
        ("notes.txt", b"hello"),
    ]
    with pytest.raises(LoadError) as info:
        load_files(files)
    text = str(info.value)
    assert "nothing was loaded, because of 2 problems:" in text
    assert "'bad.zip': member '../evil.png' points outside the archive" in text
    assert "b.png" in text.split("\n  - ")[2]  # the size mismatch, its own bullet
    assert "Also not used" in text and "notes.txt" in text

    # two archives refused and nothing else: both are told
    with pytest.raises(LoadError, match="because of 2 problems") as info:
        load_files([("bad.zip", bad), ("worse.zip", worse)])
    assert "worse.zip" in str(info.value) and "bad.zip" in str(info.value)
    # one alone: its own message, as before
    with pytest.raises(LoadError, match=r"^'bad\.zip': member"):
        load_files([("bad.zip", bad)])


def test_nested_archives_are_reported_not_opened(tmp_path):
    inner = make_zip({"images/x.png": encode(fundus()), "labels/x.png": b"?"})
    outer = make_zip(
        {
            **good_members(),
            "more/inner.zip": inner,
            "more/old.7z": b"7z\xbc\xaf\x27\x1c",
        }
    )
    for found in (
        discover(write(tmp_path / "outer.zip", outer)),
        load_files([("outer.zip", outer)]),
    ):
        assert [c.id for c in found.cases] == ["a"]
        by_name = {Path(u.path).name: u for u in found.unpaired}
        assert set(by_name) == {"inner.zip", "old.7z"}
        assert (
            "ZIP archive inside the dataset: not opened" in by_name["inner.zip"].reason
        )
        assert "a 7z archive" in by_name["old.7z"].reason
        assert all(u.role == "other" for u in found.unpaired)


def test_ratio_limits_are_stated_constants():
    assert vio.MAX_UNPACK_RATIO == 100
    assert vio.MAX_UNPACKED_BYTES == 2 << 30
    assert vio.UNPACK_RATIO_FLOOR == 64 << 20


def test_zip_member_unpacking_far_past_its_size_is_refused(tmp_path):
    zeros = bytes(vio.UNPACK_RATIO_FLOOR + (1 << 20))  # 65 MiB packs to ~65 KiB
    archive = write(tmp_path / "bomb.zip", make_zip({**good_members(), "z.bmp": zeros}))
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(LoadError) as info:
        discover(archive)
    message = str(info.value)
    assert message.startswith(f"'{archive}/z.bmp': unpacks to 65 MiB")
    assert "past the 100x allowed above 64 MiB (io.MAX_UNPACK_RATIO)" in message
    assert "decompression bomb" in message and ends_with_fix(message, "bomb")


def test_zip_whose_members_together_unpack_past_the_ratio_is_refused(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(vio, "UNPACK_RATIO_FLOOR", 1 << 20)
    members = {f"pad/{i}.bmp": bytes(600 << 10) for i in range(3)}  # each < floor
    archive = write(tmp_path / "many.zip", make_zip({**good_members(), **members}))
    with pytest.raises(LoadError, match=r"many\.zip': unpacks to 1\.76 MiB, \d+ times"):
        discover(archive)


def test_zip_past_the_total_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(vio, "MAX_UNPACKED_BYTES", 1 << 20)
    noise = np.random.default_rng(0).bytes(700 << 10)  # does not pack: ratio 1
    members = {**good_members(), "n1.bin": noise, "n2.bin": noise}
    archive = write(tmp_path / "big.zip", make_zip(members))
    with pytest.raises(LoadError, match=r"big\.zip': unpacks to 1\.37 MiB, over"):
        discover(archive)
    with pytest.raises(LoadError, match=r"io\.MAX_UNPACKED_BYTES"):
        load_files([("big.zip", archive.read_bytes())])


def test_small_members_that_pack_very_well_are_accepted(tmp_path):
    # an uncompressed BMP mask, mostly black, packs ~100x: no threat while small
    h, w = 400, 480
    mask = np.zeros((h, w), bool)
    mask[h // 2, 100:380] = True
    image = np.zeros((h, w, 3), np.uint8)
    image[50:350, 60:420] = (170, 80, 40)
    image[50:350, 60:420] += np.random.default_rng(0).integers(
        0, 30, (300, 360, 3), dtype=np.uint8
    )
    members = {
        "images/a.bmp": encode(image, "BMP"),
        "labels/a.bmp": encode(mask, "BMP"),
    }
    data = make_zip(members)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("labels/a.bmp")
    assert info.file_size > 50 * info.compress_size  # it really packs well
    (case,) = load_files([("d.zip", data)]).cases
    assert_array_equal(case.vessel_mask, mask)


def test_gzip_bomb_is_refused_before_it_is_unpacked_whole():
    import tracemalloc

    # 256 MiB of zeros behind a PGM header pack to ~250 KiB
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunks = [pack.compress(b"P5 16384 16384 255\n")]
    chunks += [pack.compress(bytes(1 << 20)) for _ in range(256)]
    data = b"".join(chunks) + pack.flush()
    assert len(data) < 1 << 20

    tracemalloc.start()
    try:
        with pytest.raises(LoadError) as info:
            read_image(data, name="im0001.ppm.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith("'im0001.ppm.gz': unpacks to more than 64 MiB")
    assert "io.MAX_UNPACK_RATIO" in message
    # zlib's output blocks plus the bytes made of them: twice the 64 MiB limit
    # (unbounded, it would be twice 256 MiB)
    assert peak < 160 << 20, f"{peak / 2**20:.0f} MiB held while refusing"


# --------------------------------------------------------------------------------
# names holding HTML, script or control characters stay plain text

HTML_NAME = "<img src=x onerror=alert(1)>.png"


def test_display_name_strips_folders_prefixes_and_control_characters():
    assert display_name("zip:data.zip/images/21_training.tif") == "21_training.tif"
    assert display_name("upload:training/images/a.png") == "a.png"
    assert display_name("C:\\Users\\me\\eye.png") == "eye.png"
    assert display_name("/tmp/x/" + HTML_NAME) == HTML_NAME
    assert display_name("bad\x1b[31mname\n.png") == "bad[31mname.png"
    assert display_name("photo\u202egnp.exe") == "photognp.exe"  # bidi override
    assert display_name("a\u200bb.png") == "ab.png"  # zero-width space
    assert display_name("dir/") == "dir"
    assert display_name("") == display_name("\x00\x01") == "(no name)"
    long = "x" * 300 + ".png"
    shown = display_name(long)
    assert len(shown) == 120 and shown.endswith("x.png") and "\u2026" in shown


def test_source_name_drops_only_the_prefix():
    assert vio.source_name("upload:training/images/a.png") == "training/images/a.png"
    assert (
        vio.source_name("zip:DRIVE.zip/test/mask/01.gif")
        == "DRIVE.zip/test/mask/01.gif"
    )
    assert vio.source_name("builtin:skimage.data.retina()") == "skimage.data.retina()"
    assert vio.source_name("/data/upload:x.png") == "/data/upload:x.png"


def test_html_name_survives_as_text_through_discovery(tmp_path):
    write(tmp_path / "images" / HTML_NAME, encode(fundus()))
    write(tmp_path / "labels" / HTML_NAME.replace(".png", "_gt.png"), encode(vessel()))
    write(tmp_path / "images" / ("lonely " + HTML_NAME), encode(fundus()))
    found = discover(tmp_path)
    case = next(c for c in found.cases if c.has_mask)
    assert case.id == "<img src=x onerror=alert(1)>"
    assert display_name(case.sources["image"]) == HTML_NAME
    assert_array_equal(case.vessel_mask, vessel())
    (lonely,) = found.unpaired
    assert display_name(lonely.path) == "lonely " + HTML_NAME
    assert "lonely <img src=x onerror=alert(1)>" in lonely.reason

    uploads = load_files([(HTML_NAME, encode(fundus()))])
    assert uploads.cases[0].sources["image"] == "upload:" + HTML_NAME


def test_html_and_control_names_survive_in_error_messages(tmp_path):
    with pytest.raises(LoadError) as info:
        load_files([(HTML_NAME, b"<script>alert(1)</script>")])
    assert HTML_NAME in str(info.value)
    assert "<script>alert(1)</script" in str(info.value)  # quoted, as text

    path = write(tmp_path / "bad\x1bname.png", b"")
    with pytest.raises(LoadError) as info:
        read_image(path)
    assert "\x1b" not in str(info.value) and "bad\\x1bname.png" in str(info.value)


# ================================================================================
# model folders


class TinyModel:
    """A model kind with one float vector, checked on load with load_arrays."""

    kind = "tiny"

    def __init__(self, values=(1.0, 2.0), fail=None, barrier=None):
        self.values = np.asarray(values, np.float32)
        self.threshold = 0.25
        self.meta = {"settings": {"n": len(self.values)}}
        self.fail = fail
        self.barrier = barrier

    def save_files(self, folder: Path) -> None:
        with open(folder / "arrays.npz", "wb") as f:
            np.savez(f, values=self.values)
            if self.fail is not None:
                f.write(b"\0" * 4096)  # half-written, then the disk is full
                raise self.fail
        if self.barrier is not None:
            self.barrier.wait(timeout=20)

    @classmethod
    def load_files(cls, folder: Path, meta: dict):
        arrays = store.load_arrays(folder, {"values": (("n",), "f")})
        model = cls(arrays["values"])
        model.threshold = meta["threshold"]
        return model


@pytest.fixture(autouse=True)
def _tiny_kind():
    store.register_kind("tiny", lambda: TinyModel)
    yield
    store._KINDS.pop("tiny", None)


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_full_disk_keeps_the_previous_model_and_lists_no_half_one(tmp_path):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    full = OSError(errno.ENOSPC, "No space left on device")
    for target, overwrite in (("m", True), ("new", False)):
        with pytest.raises(OSError) as info:
            store.save_model(TinyModel([9.0], fail=full), tmp_path / target, overwrite)
        assert info.value.errno == errno.ENOSPC
    assert names(tmp_path) == ["m"]
    assert [e.name for e in store.list_models(tmp_path)] == ["m"]
    assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])


KILLED_SAVER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from vessel_core import store

class Endless:
    kind, threshold, meta = "tiny", 0.5, {}

    def save_files(self, folder):
        with open(folder / "arrays.npz", "wb") as f:
            for i in range(100_000):
                f.write(bytes(1 << 20))
                f.flush()
                if i == 3:
                    print("writing", flush=True)
                time.sleep(0.005)

store.save_model(Endless(), Path(sys.argv[2]), overwrite=True)
"""


@pytest.mark.parametrize("target", ["m", "new"])
def test_save_killed_midway_lists_only_whole_models(tmp_path, target):
    root = tmp_path / "models"
    store.save_model(TinyModel([1.0]), root / "m")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER, str(ROOT), str(root / target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    leftovers = [n for n in names(root) if n.startswith(".tmp-")]
    assert len(leftovers) == 1  # the killed save, with its partial file
    assert (root / leftovers[0] / "arrays.npz").stat().st_size >= 4 << 20
    assert [e.name for e in store.list_models(root)] == ["m"]
    assert_array_equal(store.load_model(root / "m").values, [1.0])
    assert leftovers[0] in names(root)  # young: may be a save in progress
    assert store.clean_stale(root, max_age=0) == [root / leftovers[0]]
    assert names(root) == ["m"]


def test_stale_leftovers_older_than_an_hour_are_cleaned_by_listing(tmp_path):
    store.save_model(TinyModel(), tmp_path / "m")
    old, young = tmp_path / ".tmp-m-0badc0de", tmp_path / ".tmp-m-5eed5eed"
    for folder in (old, young):
        folder.mkdir()
        (folder / "arrays.npz").write_bytes(b"partial")
    hour_ago = time.time() - store.STALE_SECONDS - 60
    os.utime(old / "arrays.npz", (hour_ago, hour_ago))
    os.utime(old, (hour_ago, hour_ago))
    assert [e.name for e in store.list_models(tmp_path)] == ["m"]
    assert names(tmp_path) == [".tmp-m-5eed5eed", "m"]


def test_a_save_killed_between_its_renames_gets_the_old_model_back(tmp_path):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    trash = tmp_path / ".trash-m-0123abcd"
    os.rename(tmp_path / "m", trash)  # as _swap_in leaves it when killed there
    assert store.list_models(tmp_path) == []  # young: might still be in flight
    store.clean_stale(tmp_path, max_age=0)
    assert names(tmp_path) == ["m"]
    assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])


def test_a_taken_name_is_never_replaced_silently(tmp_path):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    with pytest.raises(store.ModelExistsError, match=r"/m: a model of that name") as e:
        store.save_model(TinyModel([2.0]), tmp_path / "m")
    assert isinstance(e.value, FileExistsError) and e.value.folder == tmp_path / "m"
    assert "overwrite=True" in str(e.value)
    assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])
    store.save_model(TinyModel([2.0]), tmp_path / "m", overwrite=True)
    assert_array_equal(store.load_model(tmp_path / "m").values, [2.0])
    assert names(tmp_path) == ["m"]


def test_folders_that_are_not_models_are_never_replaced(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"mine")
    (tmp_path / "notes").write_text("mine")
    for name in ("photos", "notes"):
        with pytest.raises(store.ModelExistsError, match="never replaced"):
            store.save_model(TinyModel(), tmp_path / name, overwrite=True)
    assert (tmp_path / "photos" / "keep.jpg").read_bytes() == b"mine"
    (tmp_path / "empty").mkdir()  # an empty folder is no model: it is used
    store.save_model(TinyModel(), tmp_path / "empty")
    assert names(tmp_path) == ["empty", "notes", "photos"]
    with pytest.raises(ValueError, match="must not be empty or start with '.'"):
        store.save_model(TinyModel(), tmp_path / ".hidden")


def test_two_savers_racing_for_one_name_one_wins_one_is_told(tmp_path):
    barrier = threading.Barrier(2)  # both have written their files: now claim
    outcome: dict[float, object] = {}

    def save(value: float) -> None:
        try:
            outcome[value] = store.save_model(
                TinyModel([value], barrier=barrier), tmp_path / "m"
            )
        except store.ModelExistsError as exc:
            outcome[value] = exc

    threads = [threading.Thread(target=save, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    won = [v for v, r in outcome.items() if isinstance(r, Path)]
    lost = [v for v, r in outcome.items() if isinstance(r, store.ModelExistsError)]
    assert len(won) == 1 and len(lost) == 1, outcome
    assert_array_equal(store.load_model(tmp_path / "m").values, won)
    assert names(tmp_path) == ["m"]  # the loser's temporary folder is gone


def test_free_name_and_save_new(tmp_path):
    assert store.free_name(tmp_path, "m") == "m"
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    (tmp_path / "m-2").write_text("a file takes the name too")
    assert store.free_name(tmp_path, "m") == "m-3"
    assert store.free_name(tmp_path, "m", taken=["m-3"]) == "m-4"
    assert store.save_new(TinyModel([3.0]), tmp_path, "m") == tmp_path / "m-3"
    assert store.save_new(TinyModel([4.0]), tmp_path, "m") == tmp_path / "m-4"
    assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])
    assert [e.name for e in store.list_models(tmp_path)] == ["m", "m-3", "m-4"]


def test_save_new_moves_on_when_the_free_name_is_taken_meanwhile(tmp_path, monkeypatch):
    real = store.free_name

    def stale_free_name(root, name, taken=()):
        # another session takes "m" right after we looked
        candidate = real(root, name, taken)
        if candidate == "m":
            store.save_model(TinyModel([7.0]), tmp_path / "m")
        return candidate

    monkeypatch.setattr(store, "free_name", stale_free_name)
    assert store.save_new(TinyModel([8.0]), tmp_path, "m") == tmp_path / "m-2"
    assert_array_equal(store.load_model(tmp_path / "m").values, [7.0])
    assert_array_equal(store.load_model(tmp_path / "m-2").values, [8.0])


# --------------------------------------------------------------------------------
# loading broken or hostile model folders


def model_folder(root: Path, meta: dict | str, arrays: dict | None = None) -> Path:
    folder = root / "bad"
    folder.mkdir()
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (folder / "model.json").write_text(text)
    if arrays is not None:
        np.savez(folder / "arrays.npz", **arrays)
    return folder


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ("{broken", r"model\.json: not valid JSON"),
        ("[1, 2]", "has no 'kind' field"),
        ({"kind": {"module": "os", "name": "system"}}, "'kind' must be the name"),
        ({"kind": "os.system"}, r"unknown model kind 'os\.system'; known kinds"),
        ({"kind": "vessel_core.store.ModelEntry"}, "unknown model kind 'vessel_core"),
        ({"kind": "__import__"}, "unknown model kind '__import__'"),
    ],
)
def test_model_json_can_only_name_a_registered_kind(tmp_path, meta, match):
    folder = model_folder(tmp_path, meta)
    with pytest.raises(store.ModelFolderError, match=match):
        store.load_model(folder)


def test_missing_array_file_is_named(tmp_path):
    folder = model_folder(tmp_path, {"kind": "tiny", "threshold": 0.5})
    with pytest.raises(store.ModelFolderError, match=r"bad/arrays\.npz: missing"):
        store.load_model(folder)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"other": np.zeros(3, np.float32)}, r"array 'values' is missing.*'other'"),
        ({"values": np.zeros((2, 3), np.float32)}, r"shape \(2, 3\), expected 1 axes"),
        ({"values": np.zeros(3, np.int64)}, "dtype int64, expected float"),
    ],
)
def test_arrays_of_the_wrong_shape_or_dtype_are_named(tmp_path, arrays, match):
    folder = model_folder(tmp_path, {"kind": "tiny", "threshold": 0.5}, arrays)
    with pytest.raises(store.ModelFolderError, match=r"arrays\.npz: array ") as info:
        store.load_model(folder)
    assert info.match(match)


def test_load_arrays_checks_named_lengths_across_arrays(tmp_path):
    np.savez(
        tmp_path / "arrays.npz",
        X=np.zeros((5, 4), np.float32),
        y=np.zeros(6, bool),
        k=np.array(3),
    )
    spec = {"X": (("n", 4), "f"), "y": (("n",), "b"), "k": ((), "iu")}
    with pytest.raises(store.ModelFolderError, match=r"'y' has shape \(6,\): its len"):
        store.load_arrays(tmp_path, spec)
    assert store.load_arrays(tmp_path, {"X": ((None, 4), "f"), "k": ((), "iu")})[
        "X"
    ].shape == (5, 4)
    with pytest.raises(
        store.ModelFolderError, match=r"shape \(5, 4\), expected \(\*, 3"
    ):
        store.load_arrays(tmp_path, {"X": ((None, 3), "f")})


def test_load_arrays_refuses_files_that_are_no_npz(tmp_path):
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.zeros(3))  # a single .npy under an npz name
    with pytest.raises(store.ModelFolderError, match="holds a single array"):
        store.load_arrays(tmp_path, {"a": ((3,), "f")}, filename="one.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(store.ModelFolderError, match=r"junk\.npz: not a readable"):
        store.load_arrays(tmp_path, {"a": ((3,), "f")}, filename="junk.npz")


class _Payload:
    """Unpickling this creates the folder ``path``: proof that loading ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_payload_really_runs_when_unpickled(tmp_path):
    # the control for the two tests below: this payload is live
    pickle.loads(pickle.dumps(_Payload(tmp_path / "ran")))
    assert (tmp_path / "ran").is_dir()


def test_npz_holding_an_object_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    payload = np.array([_Payload(marker)], dtype=object)
    folder = model_folder(
        tmp_path, {"kind": "tiny", "threshold": 0.5}, {"values": payload}
    )
    with pytest.raises(store.ModelFolderError) as info:
        store.load_model(folder)
    assert "array 'values' holds Python objects" in str(info.value)
    assert "never runs code" in str(info.value)
    assert not marker.exists()


def test_weights_holding_pickled_code_are_refused_without_running_it(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "weights.pt")
    with pytest.raises(store.ModelFolderError, match=r"weights\.pt: holds more than"):
        store.load_weights(tmp_path)
    assert not marker.exists()

    torch.save({"w": torch.arange(3.0)}, tmp_path / "good.pt")
    state = store.load_weights(tmp_path, "good.pt")
    assert state["w"].tolist() == [0.0, 1.0, 2.0]
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:50])
    with pytest.raises(store.ModelFolderError, match=r"cut\.pt: not a readable"):
        store.load_weights(tmp_path, "cut.pt")
    with pytest.raises(store.ModelFolderError, match=r"none\.pt: missing"):
        store.load_weights(tmp_path, "none.pt")


def test_one_bad_upload_does_not_hide_the_others():
    """Every refused file of a batch is told at once, the empty one included."""
    image = np.full((64, 64, 3), 120, np.uint8)
    files = [
        ("empty.png", b""),
        ("case1.png", encode(image)),
        ("case1_manual.png", encode(np.zeros((32, 48), np.uint8))),
        ("trunc.png", encode(image)[:60]),
    ]
    with pytest.raises(vio.LoadError) as err:
        vio.load_files(files)
    message = str(err.value)
    # three problems (the mismatch names an image and its mask), four files
    assert "nothing was loaded, because of 3 problems:" in message
    assert "case1_manual.png" in message and "trunc.png" in message
    assert "'empty.png': empty file (0 bytes)" in message
    assert "Also not used" not in message
    assert "upload:" not in message  # named as the user named them


def test_an_empty_zip_upload_is_named():
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()
    with pytest.raises(vio.LoadError, match="^'empty.zip': no files found"):
        vio.load_files([("empty.zip", buffer.getvalue())])

    # one holding only macOS's leftovers says why they do not count
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("._a.tif", b"AppleDouble")
        archive.writestr("__MACOSX/._a.tif", b"AppleDouble")
    with pytest.raises(vio.LoadError, match=r"no files found.*macOS's \._ copies"):
        vio.load_files([("mac.zip", buffer.getvalue())])


def test_an_empty_file_and_broken_gzip_are_told_apart():
    image = np.full((64, 64, 3), 120, np.uint8)
    broken = b"\x1f\x8b" + b"\x00" * 40  # gzip's magic, then nothing that unpacks
    files = [("a.png", encode(image)), ("empty.png", b""), ("b.ppm.gz", broken)]
    with pytest.raises(vio.LoadError) as err:  # named as images: they stop it
        vio.load_files(files)
    message = str(err.value)
    assert "'empty.png': empty file (0 bytes)" in message
    assert "'b.ppm.gz': truncated or corrupt gzip data" in message
    assert "damaged or incomplete" in message


def test_a_file_named_as_an_image_stops_the_load_like_a_damaged_one():
    """One rule: a file whose name says image and that cannot be read as one
    stops the load (what was loaded stays); anything else is listed, not used."""
    image = np.full((64, 64, 3), 120, np.uint8)
    good = [("01_test.tif", encode(image, "TIFF"))]
    text = b"this is not an image, this is text"
    with pytest.raises(vio.LoadError) as err:
        vio.load_files([*good, ("03_test.tif", text)])
    message = str(err.value)
    assert "nothing was loaded" in message
    assert "'03_test.tif': not an image: the content is text" in message
    assert "expected TIFF" in message  # what to do about it
    with pytest.raises(vio.LoadError, match="'02_test.tif': truncated or corrupt"):
        vio.load_files([*good, ("02_test.tif", encode(image, "TIFF")[:60])])

    # not named as images (a .gz of something else too): listed, the load goes on
    gz = b"\x1f\x8b" + b"\x00" * 40
    others = [("notes.txt", text), ("download.tar.gz", gz), ("sums.gz", gz)]
    found = vio.load_files([*good, *others])
    assert [c.id for c in found.cases] == ["01"]
    why = {vio.source_name(u.path): u.reason for u in found.unpaired}
    assert why["notes.txt"] == (
        "not an image: the content is text (starting 'this is not an image, th'); "
        "not read"
    )
    assert set(why) == {"notes.txt", "download.tar.gz", "sums.gz"}
    # named as an image but used by no case: listed unread, like a cut-short one
    found = vio.load_files([*good, ("stray name.tif", text)])
    assert [c.id for c in found.cases] == ["01"]


def test_a_text_file_is_named_as_text_with_a_one_line_preview():
    with pytest.raises(LoadError) as err:
        read_image(b"line one\nline two\n", name="notes.png")
    assert "the content is text (starting 'line one line two')" in str(err.value)


def test_a_reader_error_shows_no_python_object():
    """PIL's "cannot identify image file <_io.BytesIO object at 0x...>" is cut."""
    image = np.full((64, 64, 3), 120, np.uint8)
    data = encode(image, "TIFF")
    with pytest.raises(LoadError) as err:
        read_image(data[:40], name="eye.tif")
    message = str(err.value)
    assert "'eye.tif'" in message and "object at 0x" not in message, message
    assert (
        vio._reason(
            OSError("cannot identify image file <_io.BytesIO object at 0x7f7c1a3bad40>")
        )
        == "cannot identify image file"
    )
