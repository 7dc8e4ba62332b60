"""Reading fundus images and masks by content, and finding the cases of a dataset.

Files are recognised by their first bytes (TIFF, GIF, PNG, JPEG, BMP, PPM/PGM/PBM,
any of them gzip-compressed), never by their extension. A dataset is a folder, a
ZIP archive or a list of uploaded files; `discover` and `load_files` find its
layout (DRIVE, STARE, CHASE_DB1, HRF or generic), pair every image with its vessel
mask and FOV mask by the case id in the file names, check that the sizes agree and
report every file that found no partner.

Every `LoadError` names the file, says what is wrong and what to do. Limits
(module constants): `MAX_PIXELS` per image, checked from the header before
decoding; `MAX_UNPACKED_BYTES` and `MAX_UNPACK_RATIO` for ZIP and gzip data.
File names are kept as plain strings; `display_name` gives one fit to show.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi

from vessel_core.cases import Case
from vessel_core.progress import warn

Source = str | os.PathLike | bytes | bytearray | memoryview

FORMATS = "TIFF, GIF, PNG, JPEG, BMP or PPM/PGM"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_IMAGE_EXTENSIONS = (
    ".tif", ".tiff", ".gif", ".png", ".jpg", ".jpeg", ".jpe", ".bmp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip
_BMP_HEADER_SIZES = {n.to_bytes(4, "little") for n in (12, 40, 52, 56, 64, 108, 124)}
_OTHER_ARCHIVES = {
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "RAR",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}

ROLES = ("image", "vessel_mask", "fov_mask", "second_observer")

#: The most pixels (width x height) an image or mask may have; larger files are
#: refused from their header, before any decoding. HRF, the largest public fundus
#: dataset, has 3504 x 2336 = 8.2 megapixels.
MAX_PIXELS = 40_000_000

#: An image with a side shorter than this (pixels) is loaded with a warning.
SMALL_IMAGE = 32

#: The most bytes a ZIP archive (all its members together) or a gzip file may
#: unpack to.
MAX_UNPACKED_BYTES = 2 << 30

#: The most a ZIP member, a whole ZIP archive or a gzip file may grow when
#: unpacked, as unpacked size over packed size; checked once the unpacked size
#: passes `UNPACK_RATIO_FLOOR` (an uncompressed mask, mostly black, packs very
#: well and is no threat while small).
MAX_UNPACK_RATIO = 100

#: Unpacked sizes up to this many bytes are never refused for their ratio.
UNPACK_RATIO_FLOOR = 64 << 20


class LoadError(ValueError):
    """A file or dataset that cannot be read; the message names the file(s)."""


# What to do about each kind of problem: every LoadError ends with one of these.
_WHAT_TO_DO = {
    "missing": "check the name and the folder",
    "unreadable": "check that the file can be read (permissions, a mounted disk)",
    "empty": "the copy or upload did not finish; give the file again",
    "format": f"expected {FORMATS}; save or export the file in one of these",
    "corrupt": "the file is damaged or incomplete; copy or export it again",
    "too_large": "downscale it, or crop it to the field of view",
    "size": "give the mask drawn on this very image; masks are never resized",
    "archive": "rebuild the archive with relative member names (no '..')",
    "unpack": "rebuild the archive without a password, with plain deflate",
    "bomb": "if the data is genuine, unpack it yourself and give the folder",
    "nothing": "give fundus images, with vessel masks for training",
    "not_a_mask": "a mask is white (or coloured) on black, drawn on its image",
}


def _load_error(message: str, kind: str) -> LoadError:
    """``message`` (naming the file and what is wrong) plus what to do about it."""
    return LoadError(f"{message}; {_WHAT_TO_DO[kind]}")


def display_name(name: str, max_length: int = 120) -> str:
    """A file name fit to show: no folders, no control characters.

    Parameters
    ----------
    name : str
        A path, an upload name or a ``Case.sources`` entry (``"upload:..."``,
        ``"zip:archive.zip/member"``).
    max_length : int, default=120
        Longer names keep their start and their end (the extension) around an
        ellipsis.

    Returns
    -------
    str
        The last part of the path, without control, format (bidirectional
        overrides, zero-width) or line-separator characters; ``"(no name)"`` when
        nothing is left.

    Notes
    -----
    The result is still plain text: HTML or Markdown in it (``<img src=x>``) is
    kept as it is. Show it with ``st.text``, or escape it, never as HTML.
    """
    text = source_name(str(name))
    parts = [part for part in re.split(r"[\\/]", text) if part]
    text = parts[-1] if parts else ""
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE)
    text = text.strip()
    if len(text) > max_length:
        head = (max_length - 1) // 2
        text = text[:head] + "\u2026" + text[len(text) - (max_length - 1 - head) :]
    return text or "(no name)"


def source_name(source: str) -> str:
    """A ``Case.sources`` entry as messages name it: its path, without the prefix.

    ``"upload:training/images/21_training.tif"`` becomes
    ``"training/images/21_training.tif"``, ``"zip:DRIVE.zip/test/mask/01.gif"``
    becomes ``"DRIVE.zip/test/mask/01.gif"``; a server path stays as it is.
    """
    for prefix in _SOURCE_PREFIXES:
        if source.startswith(prefix):
            return source[len(prefix) :]
    return source


_SOURCE_PREFIXES = ("upload:", "zip:", "builtin:")

# control, format (bidi overrides, zero-width), line and paragraph separators,
# private use and lone surrogates
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs"}


@dataclass(frozen=True)
class Unpaired:
    """A file that is not part of any case, and why.

    Attributes
    ----------
    path : str
        The file, as it appears in ``Case.sources`` (a path, ``zip:...`` or
        ``upload:...``).
    role : str
        What its name says it is: ``"image"``, ``"vessel_mask"``, ``"fov_mask"``,
        ``"second_observer"``, or ``"other"`` when it is not an image at all.
    reason : str
        One sentence for the user.
    """

    path: str
    role: str
    reason: str


@dataclass
class Discovery:
    """What `discover` or `load_files` found.

    Attributes
    ----------
    cases : list of Case
        One per image, sorted by case id (natural order: ``"2"`` before ``"10"``).
    unpaired : list of Unpaired
        Files that found no partner: masks without an image, images without a
        vessel mask (they are still cases, with ``vessel_mask=None``), ambiguous
        or unreadable names, files that are not images.
    layout : str
        ``"DRIVE"``, ``"STARE"``, ``"CHASE_DB1"``, ``"HRF"`` or ``"generic"``.
    extra : dict
        ``extra["second_observer"]`` maps case id to the second observer's
        ``(H, W) bool`` vessel mask (DRIVE ``2nd_manual``, STARE ``.vk``,
        CHASE_DB1 ``_2ndHO``); ``extra["second_observer_sources"]`` maps case id
        to its file.
    """

    cases: list[Case]
    unpaired: list[Unpaired] = field(default_factory=list)
    layout: str = "generic"
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------
# Reading one file


def read_image(source: Source, name: str | None = None) -> NDArray[np.uint8]:
    """Read a fundus photograph as RGB.

    Parameters
    ----------
    source : str, path-like or bytes
        A file path, or the file's bytes (an upload).
    name : str, optional
        The name used in messages; defaults to the path (``"<bytes>"`` for bytes).

    Returns
    -------
    (H, W, 3) uint8 ndarray
        Grey images give three identical channels; palette images go through their
        palette; an alpha channel is dropped.

    Raises
    ------
    LoadError
        The file is missing, empty, truncated, not in a known format, or larger
        than `MAX_PIXELS` (refused from its header, before decoding).

    Notes
    -----
    The format comes from the content, never from the extension: TIFF, GIF, PNG,
    JPEG, BMP and PPM/PGM/PBM, each possibly gzip-compressed (STARE's
    ``.ppm.gz``). Single-channel images of more than 8 bits (16-bit TIFF or PNG,
    32-bit integer or float TIFF) are rescaled to 0..255 by their real min..max
    range; a constant one gives zeros. 16-bit *colour* TIFF and PNG are decoded
    by OpenCV and rescaled the same way, over all three channels at once (their
    balance kept); where OpenCV cannot read one, Pillow's top 8 bits are kept
    and a warning says so. Only
    the first frame of a multi-frame file is read, and EXIF orientation is not
    applied (masks carry none, and must stay aligned with their image).

    Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels,
    left as it is) is above `MAX_PIXELS`: between it and twice it, Pillow warns
    (``DecompressionBombWarning``) while reading the header, just before this
    refusal; past twice it, its error becomes the same `LoadError`.
    """
    pil, label, fmt, wide_colour = _open(source, name)
    with pil:
        if getattr(pil, "n_frames", 1) > 1:
            warn(
                f"{label!r} holds {pil.n_frames} frames; only the first is read",
                stacklevel=2,
            )
        if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return np.repeat(_rescale_by_range(np.asarray(pil))[..., None], 3, axis=2)
        if wide_colour is not None:
            wide = _decode_16bit_colour(wide_colour, pil.size)
            if wide is not None:
                return _rescale_by_range(wide)
            warn(
                f"{label!r} is a 16-bit colour {fmt} that OpenCV could not read; "
                "Pillow reduced it to its top 8 bits (a fixed range), so a dark "
                "image stays dark",
                stacklevel=2,
            )
        if pil.mode in ("1", "L", "LA", "La"):
            grey = np.asarray(pil.convert("L"))
            return np.repeat(grey[..., None], 3, axis=2)
        return np.array(pil.convert("RGB"))


def read_mask(source: Source, name: str | None = None) -> NDArray[np.bool_]:
    """Read a vessel mask or a FOV mask as booleans.

    Parameters
    ----------
    source : str, path-like or bytes
        A file path, or the file's bytes (an upload).
    name : str, optional
        The name used in messages; defaults to the path (``"<bytes>"`` for bytes).

    Returns
    -------
    (H, W) bool ndarray
        True on the vessel (or inside the FOV).

    Raises
    ------
    LoadError
        The file is missing, empty, truncated, not in a known format, or larger
        than `MAX_PIXELS` (refused from its header, before decoding).

    Notes
    -----
    The rule, in order:

    1. Palette images are converted through their palette (and its transparency),
       never read as raw indices: index 1 painted white is True, an inverted
       palette gives the right answer.
    2. Colour images become grey by the *maximum* over R, G and B, so a red or
       green drawing on black counts.
    3. Alpha: when the colour is one constant over the image but the alpha is not
       (a drawing made only of opacity), the alpha channel is the mask. Otherwise
       a pixel is True only if both its grey and its alpha pass the threshold
       (transparent pixels are background; an all-opaque alpha changes nothing).
    4. Threshold at half the nominal range: ``>= 128`` for 8-bit data, so that a
       JPEG-compressed mask still gives a clean binary mask; ``>= 32768`` for
       16-bit data whose maximum is above 255 (otherwise as 8-bit); ``>= 0.5``
       for floats whose maximum is at most 1.
    5. A single-channel (grey, not palette or colour) lossless image whose only
       values are 0 and 1 is a label image: 1 is True (not for JPEG, where 0/1
       is noise).

    6. An 8-bit file more than half of whose pixels hold a mid-tone (grey, or any
       colour channel, strictly between 32 and 223) is a photograph, not a mask,
       and is refused (`LoadError`); a mask is black and white (or one colour on
       black) but for its edges.

    Inverted masks (black vessels on white) cannot be told from the file; masks
    are never resized.
    """
    pil, label, fmt, _ = _open(source, name)
    with pil:
        if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _threshold(np.asarray(pil), lossless=True, label=label)

        if pil.mode == "1":
            return np.asarray(pil.convert("L")) >= 128
        if pil.mode == "L":
            grey = np.asarray(pil)
            _refuse_photograph(grey, label)
            return _threshold(grey, lossless=fmt != "JPEG", label=label)

        if pil.mode in ("P", "PA"):
            has_alpha = pil.mode == "PA" or "transparency" in pil.info
            rgba = np.asarray(pil.convert("RGBA" if has_alpha else "RGB"))
        elif pil.mode in ("LA", "La"):
            la = np.asarray(pil.convert("LA"))
            rgba = np.concatenate([np.repeat(la[..., :1], 3, axis=2), la[..., 1:]], 2)
        elif pil.mode in ("RGBA", "RGBa"):
            rgba = np.asarray(pil.convert("RGBA"))
        else:
            rgba = np.asarray(pil.convert("RGB"))

    _refuse_photograph(rgba[..., :3], label)
    grey = rgba[..., :3].max(axis=2)
    if rgba.shape[2] == 4:
        alpha = rgba[..., 3]
        colour_constant = bool(np.all(rgba[..., :3] == rgba[0, 0, :3]))
        alpha_constant = bool(np.all(alpha == alpha.flat[0]))
        if colour_constant and not alpha_constant:
            return alpha >= 128
        return (grey >= 128) & (alpha >= 128)

    return _threshold(grey, lossless=False, label=label)


#: Share of mid-grey pixels above which a "mask" is a photograph (read_mask rule 6).
PHOTO_MID_GREY = 0.5


def _refuse_photograph(pixels: NDArray[np.uint8], label: str) -> None:
    """Raise `LoadError` when most of an 8-bit mask's pixels hold a mid-tone.

    ``pixels`` is (H, W) grey or (H, W, 3) colour; a colour pixel is mid-toned
    when any channel is (a fundus photograph's red often saturates, its green
    does not).
    """
    step = max(1, int(np.ceil(np.sqrt(pixels.shape[0] * pixels.shape[1] / 1e6))))
    small = pixels[::step, ::step]
    mid = (small > 32) & (small < 223)
    share = float(np.mean(mid if mid.ndim == 2 else mid.any(axis=2)))
    if share > PHOTO_MID_GREY:
        raise _load_error(
            f"{label!r} looks like a photograph, not a mask: {share:.0%} of its "
            "pixels are mid-grey, where a mask is black and white but for its "
            "edges; give the vessel or FOV mask file in its place",
            "not_a_mask",
        )


def sniff(head: bytes) -> str | None:
    """The format named by a file's first bytes, or None.

    Returns one of ``"TIFF"``, ``"GIF"``, ``"PNG"``, ``"JPEG"``, ``"BMP"``,
    ``"PPM"`` (PPM/PGM/PBM), ``"GZIP"``, ``"ZIP"``.
    """
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:2] == b"BM" and head[14:18] in _BMP_HEADER_SIZES:
        return "BMP"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456":
        if head[2:3] in b" \t\r\n#":
            return "PPM"
    if head[:2] == _GZIP_MAGIC:
        return "GZIP"
    if head[:4] in _ZIP_MAGICS:
        return "ZIP"
    return None


def _label(source: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")


def _read_bytes(source: Source, label: str) -> bytes:
    """The file's bytes (from a path or as given), gzip-decompressed if need be."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise _load_error(f"{label!r}: no such file", "missing") from None
        except IsADirectoryError:
            raise LoadError(
                f"{label!r}: is a folder, expected an image file; give one file, "
                "or the folder to discover()"
            ) from None
        except OSError as exc:
            raise _load_error(
                f"{label!r}: cannot be read ({exc.strerror})", "unreadable"
            ) from None
    else:
        raise TypeError(
            f"source must be a path or bytes, got {type(source).__name__} for {label!r}"
        )

    if not data:
        raise _load_error(
            f"{label!r}: empty file (0 bytes), expected an image", "empty"
        )
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, label)
        if not data:
            raise _load_error(
                f"{label!r}: gzip file holds no data, expected an image", "empty"
            )
    return data


def _unpack_limit(packed: int) -> int:
    """The most bytes ``packed`` bytes of ZIP or gzip data may unpack to."""
    return min(MAX_UNPACKED_BYTES, max(UNPACK_RATIO_FLOOR, MAX_UNPACK_RATIO * packed))


def _check_unpacked(label: str, packed: int, unpacked: int, more: bool = False) -> None:
    """LoadError when ``unpacked`` bytes (at least, if ``more``) exceed the limit."""
    if unpacked <= _unpack_limit(packed):
        return
    size = ("more than " if more else "") + _size_text(unpacked)
    if unpacked > MAX_UNPACKED_BYTES:
        why = (
            f"over the {_size_text(MAX_UNPACKED_BYTES)} allowed (io.MAX_UNPACKED_BYTES)"
        )
    else:
        ratio = unpacked / max(packed, 1)
        why = (
            f"{'over ' if more else ''}{ratio:.0f} times its packed size "
            f"({_size_text(packed)}), past the {MAX_UNPACK_RATIO}x allowed above "
            f"{_size_text(UNPACK_RATIO_FLOOR)} (io.MAX_UNPACK_RATIO)"
        )
    raise _load_error(
        f"{label!r}: unpacks to {size}, {why}: refused as a possible "
        "decompression bomb",
        "bomb",
    )


def _size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def _gunzip(data: bytes, label: str) -> bytes:
    """Decompress gzip data (every member), never past `_unpack_limit`."""
    limit = _unpack_limit(len(data))
    parts: list[bytes] = []
    size = 0
    rest = data
    while rest[:2] == _GZIP_MAGIC:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflate.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise _load_error(
                f"{label!r}: truncated or corrupt gzip data ({_reason(exc)})", "corrupt"
            ) from None
        size += len(part)
        _check_unpacked(label, len(data), size, more=True)
        if not inflate.eof:
            raise _load_error(
                f"{label!r}: truncated or corrupt gzip data (the stream ends early)",
                "corrupt",
            )
        parts.append(part)
        rest = inflate.unused_data
    return b"".join(parts)


def _describe_unknown(head: bytes) -> str:
    """A few words on content (its first bytes) that is no known image format."""
    head = head[:64]
    if not head:
        return "not an image: the file is empty"
    if head[:2] == _GZIP_MAGIC:
        return "not an image: gzip data that does not unpack (damaged or cut short)"
    text = None
    for cut in range(4):  # the 64 bytes may end inside a UTF-8 character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text and (text.isprintable() or "\n" in text or "\t" in text):
        preview = " ".join(text.split())[:24]  # line breaks shown as spaces
        return f"not an image: the content is text (starting '{preview}')"
    if head[:4] in _ZIP_MAGICS:
        return (
            "a ZIP archive, not an image: give it to discover() or load_files(), "
            "which open archives (only at the top, never inside another archive)"
        )
    for magic, kind in _OTHER_ARCHIVES.items():
        if head.startswith(magic):
            return (
                f"not an image: a {kind} archive (only ZIP archives are opened); "
                "unpack it and give its files"
            )
    return f"not an image: unknown format (first bytes {head[:8].hex(' ')})"


def _open(
    source: Source, name: str | None
) -> tuple[Image.Image, str, str, bytes | None]:
    """Decode the file with Pillow: (image, label, format, 16-bit colour file).

    The last item is the file's bytes when it is a 16-bit-per-channel colour TIFF
    or PNG (which Pillow reduces to 8 bits), else None.

    The size is checked against `MAX_PIXELS` from the header, before decoding.
    """
    label = _label(source, name)
    data = _read_bytes(source, label)
    fmt = sniff(data[:32])
    if fmt is None or fmt in ("GZIP", "ZIP"):
        raise _load_error(f"{label!r}: {_describe_unknown(data)}", "format")

    pil_formats = {"PPM": ["PPM"], "TIFF": ["TIFF"]}.get(fmt, [fmt])
    try:
        pil = Image.open(io.BytesIO(data), formats=pil_formats)  # the header only
    except Image.DecompressionBombError as exc:
        # past twice Pillow's own limit (Image.MAX_IMAGE_PIXELS): no size given back
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        raise _too_large(label, fmt, pixels, None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(label, fmt, exc) from None

    width, height = pil.size
    if width * height > MAX_PIXELS:
        pil.close()
        raise _too_large(label, fmt, width * height, (width, height))
    if width == 0 or height == 0:
        pil.close()
        raise _load_error(f"{label!r}: the {fmt} image has no pixels", "corrupt")
    try:
        pil.load()
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        pil.close()
        raise _corrupt(label, fmt, exc) from None
    return pil, label, fmt, data if _is_16bit_colour(pil, fmt, data) else None


def _reason(exc: BaseException) -> str:
    """A reader's error in words, without object reprs (``<_io.BytesIO ...>``)."""
    text = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return text or type(exc).__name__


def _corrupt(label: str, fmt: str, exc: BaseException) -> LoadError:
    return _load_error(
        f"{label!r}: truncated or corrupt {fmt} file ({_reason(exc)})", "corrupt"
    )


def _too_large(
    label: str, fmt: str, pixels: int | None, size: tuple[int, int] | None
) -> LoadError:
    """The refusal of an image with more than `MAX_PIXELS` pixels."""
    what = f"{pixels / 1e6:.1f} megapixels" if pixels else "too many pixels"
    if size is not None:
        what += f" ({size[0]}x{size[1]}, width x height)"
    return _load_error(
        f"{label!r}: the {fmt} image has {what}, more than the "
        f"{MAX_PIXELS / 1e6:g} megapixels allowed (HRF's photographs, the largest "
        "fundus images, have 8.2); it was not decoded",
        "too_large",
    )


def _is_16bit_colour(pil: Image.Image, fmt: str, data: bytes) -> bool:
    """Whether Pillow read a 16-bit-per-channel colour file (TIFF or PNG)."""
    if pil.mode not in ("RGB", "RGBA"):
        return False
    if fmt == "TIFF":
        bits = getattr(pil, "tag_v2", {}).get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    if fmt == "PNG":
        return len(data) > 24 and data[24] > 8  # IHDR bit depth
    return False


def _decode_16bit_colour(data: bytes, size: tuple[int, int]) -> NDArray | None:
    """The (H, W, 3) uint16 RGB pixels of a 16-bit colour file (OpenCV), or None.

    None when OpenCV cannot decode it, or reads another size than Pillow did.
    """
    import cv2

    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    width, height = size
    if (
        pixels is None
        or pixels.dtype != np.uint16
        or pixels.ndim != 3
        or pixels.shape[:2] != (height, width)
        or pixels.shape[2] not in (3, 4)
    ):
        return None
    return np.ascontiguousarray(pixels[..., 2::-1])  # BGR(A) -> RGB


def _rescale_by_range(values: NDArray) -> NDArray[np.uint8]:
    """Map the real min..max range of ``values`` onto 0..255."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.where(finite, values, low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _threshold(values: NDArray, lossless: bool, label: str) -> NDArray[np.bool_]:
    """Half the nominal range; {0, 1} label images in lossless files (read_mask)."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise _load_error(
            f"{label!r}: expected a single-channel mask, got shape {values.shape}",
            "format",
        )
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    top = values[finite].max() if finite is not None and finite.any() else values.max()
    if lossless and values.dtype.kind in "ui" and top <= 1 and values.min() >= 0:
        return values == 1
    if values.dtype.kind == "f" and top <= 1:
        return values >= 0.5
    if top > 255:
        return values >= 32768
    return values >= 128


# --------------------------------------------------------------------------------
# FOV estimation


def estimate_fov(image: NDArray, *, erosion: int | None = None) -> NDArray[np.bool_]:
    """Estimate the field of view: the fundus, against its dark border.

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray
        The fundus photograph (uint8 or any numeric dtype).
    erosion : int, optional
        Pixels taken off the edge of the found disc, to drop the dim rim; by default
        ``max(1, round(min(H, W) / 600))``.

    Returns
    -------
    (H, W) bool ndarray
        True inside the fundus.

    Notes
    -----
    The brightest channel (the red one on a fundus) is smoothed over 5x5 pixels and
    thresholded at ``max(10, 0.4 * Otsu)`` on the 0..255 scale: well below the
    fundus, above JPEG noise in the black border. The largest connected
    component is kept, its holes filled, and its edge eroded. On DRIVE this
    agrees with the distributed FOV masks at IoU >= 0.99 on every image. A
    photograph without a dark border gives (nearly) the whole image; an image
    whose fundus is darker than 10 gives an empty mask and a warning.

    References
    ----------
    Otsu, N. (1979). A threshold selection method from gray-level histograms.
    IEEE Trans. Syst. Man Cybern. 9(1), 62-66. :DOI:`10.1109/TSMC.1979.4310076`
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        bright = image[..., :3].max(axis=2)
    elif image.ndim == 2:
        bright = image
    else:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {image.shape}")
    if bright.dtype != np.uint8:
        bright = _rescale_by_range(bright)

    smooth = ndi.uniform_filter(bright.astype(np.float32), size=5)
    if np.ptp(smooth) == 0:
        level = 10.0
    else:
        level = max(10.0, 0.4 * float(threshold_otsu(smooth)))
    fov = smooth > level

    labels, n = ndi.label(fov)
    if n == 0:
        warn(
            f"no field of view found: the image is darker than {level:.0f} everywhere",
            stacklevel=2,
        )
        return fov
    sizes = np.bincount(labels.ravel())[1:]
    fov = ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))

    if erosion is None:
        erosion = max(1, round(min(fov.shape) / 600))
    if erosion > 0:
        fov = ndi.binary_erosion(fov, iterations=erosion, border_value=0)
    return fov


# --------------------------------------------------------------------------------
# Files of a dataset


@dataclass
class _Entry:
    """One file of a folder, archive or upload: where it is and how to read it."""

    relpath: str  # posix path inside the folder/archive ("training/images/x.tif")
    label: str  # as shown to the user and kept in Case.sources
    read: Callable[[], bytes]
    head: bytes = b""  # the first bytes, gzip-decompressed

    @property
    def shown(self) -> str:
        """The label as messages name the file (`source_name`)."""
        return source_name(self.label)


def _head_of(data: bytes) -> bytes:
    """The first bytes of the (gzip-decompressed) content."""
    if data[:2] == _GZIP_MAGIC:
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:4096], 64)
        except zlib.error:
            return data[:64]  # still gzip: told as gzip that does not unpack
    return data[:64]


def _is_hidden(relpath: str) -> bool:
    parts = PurePosixPath(relpath).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1] in (
        "Thumbs.db",
        "desktop.ini",
    )


def _folder_entries(root: Path) -> list[_Entry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relpath = path.relative_to(root).as_posix()
            if _is_hidden(relpath) or not path.is_file():
                continue
            with open(path, "rb") as fh:
                head = _head_of(fh.read(4096))
            entries.append(_Entry(relpath, str(path), path.read_bytes, head))
    return entries


def _check_member_name(member: str, archive: str) -> str:
    """The member's posix path; LoadError for absolute paths or ``..`` parts."""
    posix = member.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise _load_error(
            f"{archive!r}: member {member!r} has an absolute path; refusing to read "
            "the archive",
            "archive",
        )
    if ".." in posix.split("/"):
        raise _load_error(
            f"{archive!r}: member {member!r} points outside the archive ('..'); "
            "refusing to read the archive",
            "archive",
        )
    return posix


def _zip_entries(data: bytes | Path, archive: str, prefix: str = "") -> list[_Entry]:
    """The files of a ZIP archive, read into memory.

    Refused whole, before anything is unpacked: a member with an absolute path
    or ``..``; a member, or the whole archive, unpacking past `_unpack_limit`
    (sizes from the archive's directory, which zipfile also holds each member
    to).
    """
    try:
        zf = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
        packed_total = data.stat().st_size if isinstance(data, Path) else len(data)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _load_error(
            f"{archive!r}: not a readable ZIP archive ({_reason(exc)})", "corrupt"
        ) from None

    with zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        names = [_check_member_name(info.filename, archive) for info in infos]
        for info, posix in zip(infos, names, strict=True):
            _check_unpacked(f"{archive}/{posix}", info.compress_size, info.file_size)
        _check_unpacked(archive, packed_total, sum(i.file_size for i in infos))

        entries = []
        for info, posix in zip(infos, names, strict=True):
            if _is_hidden(posix):
                continue
            try:
                content = zf.read(info)
            except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
                raise _load_error(
                    f"{archive!r}: member {posix!r} is corrupt ({_reason(exc)})",
                    "corrupt",
                ) from None
            except (RuntimeError, NotImplementedError) as exc:
                # encrypted, or a compression method zipfile lacks (deflate64...)
                raise _load_error(
                    f"{archive!r}: member {posix!r} cannot be unpacked "
                    f"({_reason(exc)})",
                    "unpack",
                ) from None
            entries.append(
                _Entry(
                    prefix + posix,
                    f"zip:{archive}/{posix}",
                    lambda content=content: content,
                    _head_of(content),
                )
            )
    return entries


# --------------------------------------------------------------------------------
# Roles and case ids from names


@dataclass(frozen=True)
class _Named:
    """What a file's path says: its role, case id and split folder (if any)."""

    role: str
    case_id: str  # as spelled in the name
    split: str | None

    @property
    def key(self) -> str:
        return self.case_id.lower()


def _stem(name: str) -> str:
    """The name without ``.gz`` and a known image extension (any case)."""
    if name.lower().endswith(".gz"):
        name = name[:-3]
    lower = name.lower()
    for ext in _IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def _named_as_image(path: str) -> bool:
    """Whether a name ends in an image extension (``.tif``, ``.ppm.gz``...): such a
    file joins its case like any image, and if it cannot be read, it is damaged
    like a cut-short one, whatever its content."""
    name = PurePosixPath(path).name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(_IMAGE_EXTENSIONS)


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", text.lower()) if t]


_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
}


def _split_of(relpath: str) -> str | None:
    """The split named by the nearest folder with a train/test word, if any."""
    for folder in reversed(PurePosixPath(relpath).parts[:-1]):
        for token in _tokens(folder):
            if token in _SPLIT_WORDS:
                return _SPLIT_WORDS[token]
    return None


# The DRIVE/STARE/CHASE_DB1/HRF layouts: the image names that identify each one.
_LAYOUT_IMAGES = {
    "DRIVE": re.compile(r"^\d+_(training|test)$", re.IGNORECASE),
    "STARE": re.compile(r"^im\d{4}$", re.IGNORECASE),
    "CHASE_DB1": re.compile(r"^image_\d+[lr]$", re.IGNORECASE),
    "HRF": re.compile(r"^\d+_(dr|g|h)$", re.IGNORECASE),
}

_IMAGE_FOLDER_WORDS = {
    "image", "images", "img", "imgs", "photo", "photos", "fundus", "raw", "input",
    "inputs", "original", "originals",
}  # fmt: skip
_VESSEL_WORDS = {
    "manual", "manual1", "label", "labels", "gt", "groundtruth", "truth", "vessel",
    "vessels", "seg", "segmentation", "segmentations", "annotation", "annotations",
    "target", "targets",
}  # fmt: skip
_MASK_WORDS = {"mask", "masks"}
_FOV_WORDS = {"fov", "fovs", "fovmask", "roi"}
_SECOND_WORDS = {"manual2", "2nd"}


def _classify_drive(relpath: str) -> _Named | None:
    """DRIVE: ``21_training.tif``, ``21_manual1.gif``, ``21_training_mask.gif``,
    ``01_manual2.gif``; the split comes from the image's name."""
    stem = _stem(PurePosixPath(relpath).name)
    m = re.match(r"^(\d+)_(training|test)(_mask)?$", stem, re.IGNORECASE)
    if m:
        split = "train" if m.group(2).lower() == "training" else "test"
        role = "fov_mask" if m.group(3) else "image"
        return _Named(role, m.group(1), split)
    m = re.match(r"^(\d+)_manual([12])$", stem, re.IGNORECASE)
    if m:
        role = "vessel_mask" if m.group(2) == "1" else "second_observer"
        return _Named(role, m.group(1), None)
    return None


def _classify_stare(relpath: str) -> _Named | None:
    """STARE: ``im0001.ppm(.gz)``, ``im0001.ah.ppm`` (Hoover), ``im0001.vk.ppm``."""
    stem = _stem(PurePosixPath(relpath).name)
    m = re.match(r"^(im\d{4})(?:[._-](ah|vk))?$", stem, re.IGNORECASE)
    if not m:
        return None
    role = {None: "image", "ah": "vessel_mask", "vk": "second_observer"}[
        m.group(2) and m.group(2).lower()
    ]
    return _Named(role, m.group(1), _split_of(relpath))


def _classify_chase(relpath: str) -> _Named | None:
    """CHASE_DB1: ``Image_01L.jpg``, ``Image_01L_1stHO.png``, ``_2ndHO.png``."""
    stem = _stem(PurePosixPath(relpath).name)
    m = re.match(r"^image_(\d+[lr])(?:_(1stho|2ndho))?$", stem, re.IGNORECASE)
    if not m:
        return None
    which = m.group(2) and m.group(2).lower()
    role = {None: "image", "1stho": "vessel_mask", "2ndho": "second_observer"}[which]
    return _Named(role, m.group(1).upper(), _split_of(relpath))


def _generic_classifier(
    relpaths: Sequence[str], mask_is_fov: bool | None = None
) -> Callable[[str], _Named | None]:
    """The generic (and HRF) rule: role from the file's words, else its folders'.

    A file's role comes from the words of its name (split on anything that is not
    a letter or digit): a FOV word (``fov``, ``roi``) makes it a FOV mask, a
    vessel word (``manual``, ``label(s)``, ``gt``, ``vessel(s)``,
    ``seg(mentation)``, ``annotation(s)``, ``target(s)``...) a vessel mask,
    ``manual2``/``2nd`` a second observer's mask. A name with none of them takes
    the role of its nearest folder whose name has one (plus image words:
    ``images``, ``img``, ``fundus``, ``raw``...); no such folder: an image.
    ``mask``/``masks`` means the FOV mask when other files are vessel masks by a
    vessel word and none is a FOV mask by a FOV word (DRIVE's and HRF's
    convention); otherwise the vessel mask. The case id is the name without its
    role words.
    """
    role_words = _SECOND_WORDS | _FOV_WORDS | _VESSEL_WORDS | _MASK_WORDS

    def role_of(tokens: Iterable[str], folder: bool) -> str | None:
        tokens = set(tokens)
        if tokens & _SECOND_WORDS:
            return "second_observer"
        if tokens & _FOV_WORDS:
            return "fov_mask"
        if tokens & _VESSEL_WORDS:
            return "vessel_mask"
        if tokens & _MASK_WORDS:
            return "mask"  # decided below, from the whole dataset
        if folder and tokens & _IMAGE_FOLDER_WORDS:
            return "image"
        return None

    def raw_role(path: PurePosixPath) -> str:
        role = role_of(_tokens(_stem(path.name)), folder=False)
        for folder in reversed(path.parts[:-1]):
            if role is not None:
                break
            role = role_of(_tokens(folder), folder=True)
        return role or "image"

    if mask_is_fov is None:
        roles = {raw_role(PurePosixPath(p)) for p in relpaths}
        mask_is_fov = "vessel_mask" in roles and "fov_mask" not in roles
    mask_role = "fov_mask" if mask_is_fov else "vessel_mask"

    def classify(relpath: str) -> _Named | None:
        path = PurePosixPath(relpath)
        stem = _stem(path.name)
        role = raw_role(path)
        role = mask_role if role == "mask" else role

        kept = [t for t in re.split(r"[^0-9A-Za-z]+", stem) if t]
        kept = [t for t in kept if t.lower() not in role_words] or kept
        case_id = "_".join(kept) if role != "image" else stem
        return _Named(role, case_id, _split_of(relpath))

    return classify


def _classifier_for(layout: str, relpaths: Sequence[str]) -> Callable:
    if layout == "DRIVE":
        return _classify_drive
    if layout == "STARE":
        return _classify_stare
    if layout == "CHASE_DB1":
        return _classify_chase
    if layout == "HRF":
        return _generic_classifier(relpaths, mask_is_fov=True)
    return _generic_classifier(relpaths)


def _detect_layout(relpaths: Sequence[str]) -> str:
    """The named layout whose image names match most files; else ``"generic"``."""
    counts = {
        layout: sum(bool(rx.match(_stem(PurePosixPath(p).name))) for p in relpaths)
        for layout, rx in _LAYOUT_IMAGES.items()
    }
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] > 0 else "generic"


# --------------------------------------------------------------------------------
# Pairing and building cases


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _generic_id(case_id: str) -> str:
    """A generic case id as the key used for pairing (``Case_3`` == ``case-3``)."""
    return "_".join(_tokens(case_id))


def _looks_like_mask(rgb: NDArray[np.uint8]) -> bool:
    """Grey and (nearly) only black and white: a mask saved like an image.

    True when at most 1% of the pixels have channels more than 8 apart and at
    most 10% lie strictly between 32 and 223 (JPEG leaves grey pixels along the
    edges of a mask); a blank image counts too. A fundus photograph is coloured
    (its channels differ) and, even as a grey export, mostly mid-grey. Looked
    at on at most about a million pixels (a regular subsample).
    """
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6))))
    small = rgb[::step, ::step, :3]
    high, low = small.max(axis=2), small.min(axis=2)
    if np.mean(high - low > 8) > 0.01:
        return False
    return bool(np.mean((high > 32) & (high < 223)) <= 0.10)


class _Problems:
    """Errors gathered while building cases, raised together at the end."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, exc: LoadError) -> None:
        self.messages.append(str(exc))

    def raise_if_any(self, where: str, unpaired: list[Unpaired] = ()) -> None:
        if self.messages:
            # one upload: its name is said once, not again before its problem
            messages = [m.removeprefix(f"{where}: ") for m in self.messages]
            shown = "\n  - ".join(messages[:20])
            if len(self.messages) > 20:
                shown += f"\n  ... and {len(self.messages) - 20} more"
            # problems, not files: a size mismatch names an image and its mask
            n = len(self.messages)
            message = (
                f"{where}: nothing was loaded, because of {n} problem"
                f"{'s' if n > 1 else ''}:\n  - {shown}"
            )
            # the files left out for other reasons are told at the same time
            refused = [
                f"{source_name(u.path)}: {u.reason}"
                for u in unpaired
                if u.role == "other"
            ]
            if refused:
                message += "\nAlso not used (these alone would not stop a load):"
                message += "".join(f"\n  - {line}" for line in refused[:10])
                if len(refused) > 10:
                    message += f"\n  ... and {len(refused) - 10} more"
            raise LoadError(message)


def _build(
    entries: list[_Entry], where: str, refused: Sequence[LoadError] = ()
) -> Discovery:
    """Classify, pair and read the files of one folder/archive/upload.

    ``refused`` holds the errors of uploads refused before any of their files
    could be listed (a ZIP archive with a member outside it, say); they stop
    the load like the problems found here, and are told with them.
    """
    unpaired: list[Unpaired] = []
    images_like = []
    for entry in entries:
        fmt = sniff(entry.head[:32])
        if fmt == "ZIP":
            reason = (
                "a ZIP archive inside the dataset: not opened (archives inside "
                "archives or folders are never unpacked); unpack it and give its "
                "files, or give it on its own"
            )
            unpaired.append(Unpaired(entry.label, "other", reason))
        elif (fmt is None or fmt == "GZIP") and not _named_as_image(entry.relpath):
            reason = f"{_describe_unknown(entry.head)}; not read"
            unpaired.append(Unpaired(entry.label, "other", reason))
        else:
            images_like.append(entry)

    relpaths = [e.relpath for e in images_like]
    layout = _detect_layout(relpaths)
    classify = _classifier_for(layout, relpaths)

    # group by (split folder, case id); DRIVE's ids are unique across its splits
    groups: dict[tuple[str, str], dict[str, list[tuple[_Entry, _Named]]]] = {}
    for entry in images_like:
        named = classify(entry.relpath)
        if named is None:
            reason = f"the name does not fit the {layout} layout"
            unpaired.append(Unpaired(entry.label, "other", reason))
            continue
        split_key = "" if layout == "DRIVE" else (named.split or "")
        key = named.key if layout != "generic" else _generic_id(named.case_id)
        slot = groups.setdefault((split_key, key), {})
        slot.setdefault(named.role, []).append((entry, named))

    problems = _Problems()
    for exc in refused:
        problems.add(exc)
    built = []
    any_vessel = any(
        "vessel_mask" in g or "second_observer" in g for g in groups.values()
    )
    for _, group in sorted(groups.items(), key=lambda kv: kv[0]):
        one = _build_case(group, layout, any_vessel, unpaired, problems)
        if one is not None:
            built.append(one)
    problems.raise_if_any(where, unpaired)
    small = [case for case, _, _ in built if min(case.shape) < SMALL_IMAGE]
    if small:
        named = ", ".join(
            f"{source_name(c.sources['image'])} ({c.shape[1]}x{c.shape[0]})"
            for c in small[:5]
        ) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        warn(
            f"{len(small)} image(s) smaller than {SMALL_IMAGE} pixels a side, far "
            f"smaller than a fundus photograph (DRIVE's are 565x584): {named}; kept, "
            "but the ResNet needs 32 pixels a side, and so few pixels say little "
            "about vessels",
            stacklevel=4,  # _build, _discover_entries, discover
        )

    # an id found in both splits (train/01.png and test/01.png) gets its split
    counts: dict[str, int] = {}
    for case, _, _ in built:
        counts[case.id] = counts.get(case.id, 0) + 1
    for case, _, _ in built:
        if counts[case.id] > 1:
            case.id = f"{case.split}-{case.id}"

    built.sort(key=lambda one: _natural_key(one[0].id))
    cases = [case for case, _, _ in built]
    extra: dict[str, Any] = {}
    second = {case.id: mask for case, mask, _ in built if mask is not None}
    if second:
        extra["second_observer"] = second
        extra["second_observer_sources"] = {
            case.id: source for case, mask, source in built if mask is not None
        }
    unpaired.sort(key=lambda u: _natural_key(u.path))
    return Discovery(cases, unpaired, layout, extra)


def _build_case(
    group: dict[str, list[tuple[_Entry, _Named]]],
    layout: str,
    any_vessel: bool,
    unpaired: list[Unpaired],
    problems: _Problems,
) -> tuple[Case, NDArray[np.bool_] | None, str] | None:
    """One case from the files that share a case id, or None (all unpaired)."""
    images = group.get("image", [])
    read_cache: dict[str, NDArray[np.uint8]] = {}

    # Two "images" with one case id: a binary one is the vessel mask (HRF uploads,
    # where the image and its manual mask share a name).
    if len(images) > 1 and "vessel_mask" not in group:
        binary = []
        for i, (entry, _) in enumerate(images):
            try:
                rgb = read_image(entry.read(), entry.shown)
            except LoadError as exc:
                problems.add(exc)
                return None
            read_cache[entry.label] = rgb
            if _looks_like_mask(rgb):
                binary.append(i)
        if len(binary) == 1 and len(images) == 2:
            mask_item = images[binary[0]]
            images = [images[1 - binary[0]]]
            group = {**group, "image": images, "vessel_mask": [mask_item]}

    everything = [item for items in group.values() for item in items]
    labels = ", ".join(sorted(e.shown for e, _ in images))
    if not images:
        for entry, named in everything:
            reason = f"no image with case id {named.case_id!r}"
            unpaired.append(Unpaired(entry.label, named.role, reason))
        return None
    if len(images) > 1:
        for entry, named in everything:
            unpaired.append(
                Unpaired(
                    entry.label,
                    named.role,
                    f"several images share case id {named.case_id!r} ({labels})",
                )
            )
        return None

    image_entry, image_named = images[0]
    try:
        image = read_cache.get(image_entry.label)
        if image is None:
            image = read_image(image_entry.read(), image_entry.shown)
    except LoadError as exc:
        problems.add(exc)
        return None
    if _looks_like_mask(image):
        # a mask given where an image belongs: no case can come of it
        reason = (
            "looks like a mask, not a fundus photograph (grey, nearly only black "
            "and white); if it is a vessel or FOV mask, name it so (NAME_mask, "
            "NAME_fov, or a masks/ folder)"
        )
        for entry, named in everything:
            why = reason
            if entry is not image_entry:
                why = f"its image {image_entry.shown!r} looks like a mask; not used"
            unpaired.append(Unpaired(entry.label, named.role, why))
        return None

    chosen: dict[str, _Entry | None] = {}
    for role in ("vessel_mask", "fov_mask", "second_observer"):
        items = group.get(role, [])
        chosen[role] = None
        if len(items) == 1:
            chosen[role] = items[0][0]
        elif len(items) > 1:
            names = ", ".join(sorted(e.shown for e, _ in items))
            for entry, _ in items:
                unpaired.append(
                    Unpaired(
                        entry.label,
                        role,
                        f"several {role.replace('_', ' ')}s for case "
                        f"{image_named.case_id!r} ({names}); none used",
                    )
                )

    # Only a second observer: it is the vessel mask (with a warning).
    if chosen["vessel_mask"] is None and chosen["second_observer"] is not None:
        warn(
            f"case {image_named.case_id!r}: no first observer's mask, using "
            f"{chosen['second_observer'].shown!r} as the vessel mask",
            stacklevel=5,  # _build_case, _build, _discover_entries, discover
        )
        chosen["vessel_mask"] = chosen["second_observer"]
        chosen["second_observer"] = None

    if chosen["vessel_mask"] is None and any_vessel:
        unpaired.append(
            Unpaired(
                image_entry.label,
                "image",
                f"no vessel mask with case id {image_named.case_id!r}; kept as a case "
                "without a vessel mask",
            )
        )

    try:
        masks = {
            role: read_mask(entry.read(), entry.shown)
            for role, entry in chosen.items()
            if entry is not None
        }
    except LoadError as exc:
        problems.add(exc)
        return None

    height, width = image.shape[:2]
    for role, mask in masks.items():
        if mask.shape != (height, width):
            problems.add(
                _load_error(
                    f"size mismatch: image {image_entry.shown!r} is {width}x{height} "
                    f"(width x height) but {role.replace('_', ' ')} "
                    f"{chosen[role].shown!r} is {mask.shape[1]}x{mask.shape[0]}",
                    "size",
                )
            )
            return None

    fov = masks.get("fov_mask")
    if fov is not None and not fov.any():
        warn(
            f"FOV mask {chosen['fov_mask'].shown!r} is empty (no pixel inside the "
            "field of view): it was ignored and the FOV estimated from the image",
            stacklevel=5,  # _build_case, _build, _discover_entries, discover
        )
        fov, chosen["fov_mask"] = None, None
    fov_estimated = fov is None
    if fov is None:
        fov = estimate_fov(image)
    for role in ("vessel_mask", "second_observer"):
        if role in masks:
            message = _vessel_mask_warning(masks[role], fov, chosen[role].shown)
            if message:
                warn(message, stacklevel=5)  # as above
    vessel = masks.get("vessel_mask")

    split = image_named.split or "train"
    sources = {
        "image": image_entry.label,
        "vessel_mask": chosen["vessel_mask"].label if chosen["vessel_mask"] else "",
        "fov_mask": chosen["fov_mask"].label if chosen["fov_mask"] else "estimated",
    }
    case = Case(
        id=image_named.case_id,
        image=image,
        fov_mask=fov,
        vessel_mask=vessel,
        split=split,
        fov_estimated=fov_estimated,
        sources=sources,
        dataset=layout,
    )
    second_entry = chosen["second_observer"]
    second_source = second_entry.label if second_entry is not None else ""
    return case, masks.get("second_observer"), second_source


def _vessel_mask_warning(
    mask: NDArray[np.bool_], fov: NDArray[np.bool_], label: str
) -> str | None:
    """What is suspicious about a vessel mask's content, or None.

    No vessel inside the FOV, or vessel everywhere in it, is almost surely the
    wrong file; more than half of the FOV is likely an inverted mask. These are
    warnings, not errors: the case is kept (its scores are then undefined or
    meaningless, and the metrics say so), and the user decides.
    """
    inside = int(np.count_nonzero(mask & fov))
    n_fov = int(np.count_nonzero(fov))
    if n_fov == 0:
        return None
    if inside == 0:
        where = (
            "inside the FOV (its vessel pixels all lie outside it; is the FOV right?)"
            if mask.any()
            else "at all (all background)"
        )
        return (
            f"vessel mask {label!r} has no vessel pixel {where}: almost surely the "
            "wrong file, or values the reader cannot tell apart (0/1 in a JPEG); "
            "the case is kept, but scores on it are undefined"
        )
    if inside == n_fov:
        return (
            f"vessel mask {label!r} marks every pixel of the FOV as vessel: almost "
            "surely the wrong file or an inverted mask; the case is kept"
        )
    if inside > 0.5 * n_fov:
        return (
            f"vessel mask {label!r} covers more than half of the FOV; is it "
            "inverted (black vessels on white)?"
        )
    return None


# --------------------------------------------------------------------------------
# Public entry points for datasets


def discover(path: str | os.PathLike) -> Discovery:
    """Find the cases of a dataset folder or ZIP archive.

    Parameters
    ----------
    path : str or path-like
        A folder (searched recursively) or a ZIP archive (recognised by content).

    Returns
    -------
    Discovery
        The cases, the files that found no partner, the layout and the second
        observer's masks (``extra``).

    Raises
    ------
    LoadError
        The path is missing; an archive member has an absolute path or ``..``;
        an archive unpacks past `MAX_UNPACKED_BYTES` or `MAX_UNPACK_RATIO`;
        no case could be built; or files could not be read (not an image,
        truncated, more than `MAX_PIXELS`) or have sizes that disagree (one
        error listing every such file, with both sizes).

    Notes
    -----
    Layouts, told apart by the image names (the one matching most files wins):

    - **DRIVE**: ``images/21_training.tif``, ``1st_manual/21_manual1.gif``,
      ``mask/21_training_mask.gif``, ``2nd_manual/01_manual2.gif`` (second
      observer); split from the name (``training`` -> ``"train"``, ``test`` ->
      ``"test"``); ids ``"01"`` to ``"40"``.
    - **STARE**: ``im0001.ppm(.gz)``, ``im0001.ah.ppm`` (Hoover: the vessel mask),
      ``im0001.vk.ppm`` (second observer); ids ``"im0001"``.
    - **CHASE_DB1**: ``Image_01L.jpg``, ``Image_01L_1stHO.png`` (vessel mask),
      ``Image_01L_2ndHO.png`` (second observer); ids ``"01L"``.
    - **HRF**: ``images/01_dr.JPG``, ``manual1/01_dr.tif``,
      ``mask/01_dr_mask.tif`` (FOV); ids ``"01_dr"``.
    - **generic**: see below.

    Generic rule: a file's role comes from the words of its name (split on
    anything but letters and digits), else from its nearest folder with a role
    word. FOV words: ``fov``, ``roi``. Vessel words: ``manual``, ``label(s)``,
    ``gt``, ``groundtruth``, ``vessel(s)``, ``seg``, ``segmentation(s)``,
    ``annotation(s)``, ``target(s)``. Second observer: ``manual2``, ``2nd``.
    Image folders: ``image(s)``, ``img(s)``, ``photo(s)``, ``fundus``, ``raw``,
    ``input(s)``, ``original(s)``; a file with no role word anywhere is an image.
    ``mask``/``masks`` is the FOV mask when other files are vessel masks by a
    vessel word and none is a FOV mask by a FOV word (``images/``, ``labels/``,
    ``masks/``: as DRIVE and HRF name them), else the vessel mask (``images/``,
    ``masks/``). The case id is the name without its role words; pairing ignores
    case and punctuation (``Case-3.PNG`` pairs with ``case_3_mask.png``).

    Files pair by case id only, never by position. Where there is no FOV mask,
    it is estimated (`estimate_fov`, ``fov_estimated=True``). A case with only a
    second observer's mask uses it as its vessel mask, with a warning. Split: a
    ``train``/``training`` or ``test``/``testing`` word in the image's folders
    gives it; otherwise ``"train"`` (DRIVE keeps its own split).
    Ids found in both splits become ``"train-01"``/``"test-01"``.

    An image without a vessel mask is still a case (``vessel_mask=None``) and is
    listed in ``unpaired`` when other images of the dataset have one. Hidden
    files and ``__MACOSX`` are skipped; files that are not images (by content)
    are listed as role ``"other"``, unless their name says image (``.tif``,
    ``.png``...): those are paired like images, and one the layout uses that
    cannot be read stops the load, as a cut-short image does. ZIP members are
    read in memory, never extracted; nested archives are not opened (listed in
    ``unpaired``).

    Checks on content, the same for every layout:

    - an "image" that is grey and (nearly) only black and white looks like a
      mask given where an image belongs: it and its masks go to ``unpaired``
      (reason "looks like a mask"), no case is built;
    - a vessel mask with no vessel pixel inside the FOV, or vessel on every FOV
      pixel, or on more than half of it, gives a warning naming the file; the
      case is kept (a warning, not an error: such a mask is almost surely
      wrong, but the user may still look at the image, and the metrics report
      its scores as undefined);
    - an empty FOV mask gives a warning and is replaced by `estimate_fov`;
    - two files claiming one role for one case id are both listed in
      ``unpaired``, each reason naming both files.
    """
    path = Path(path)
    label = str(path)
    if path.is_dir():
        entries = _folder_entries(path)
    elif path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head not in _ZIP_MAGICS:
            raise LoadError(
                f"{label!r}: expected a folder or a ZIP archive, got a file that is "
                "not a ZIP archive (give the folder that holds the dataset, or a "
                "ZIP of it)"
            )
        entries = _zip_entries(path, label)
    else:
        raise LoadError(f"{label!r}: no such folder or file")
    return _discover_entries(entries, repr(label))


def load_files(files: Sequence[tuple[str, bytes]]) -> Discovery:
    """Find the cases among uploaded files (as a page receives them).

    Parameters
    ----------
    files : sequence of (name, bytes)
        Each file's name (it may hold folders: ``"training/images/21_training.tif"``)
        and content.

    Returns
    -------
    Discovery
        As `discover`; sources read ``"upload:<name>"`` and, for members of an
        uploaded archive, ``"zip:<archive>/<member>"``.

    Raises
    ------
    LoadError
        As `discover`; also for no files, and for two uploads with one name.

    Notes
    -----
    Roles and case ids come from the names with the rules of `discover` (so a
    set of DRIVE, STARE, CHASE_DB1 or HRF files keeps its layout). A ZIP among
    the files (by content) is opened and its members join the others, under a
    folder named after the archive. Without folders, an HRF image and its vessel
    mask share a name (``01_dr.jpg``, ``01_dr.tif``): the one with two grey
    levels at most is taken as the mask.
    """
    if not files:
        raise LoadError("no files given: expected images and masks, or a ZIP archive")

    entries: list[_Entry] = []
    refused: list[LoadError] = []  # archives refused whole, told with the rest
    hidden: list[Unpaired] = []  # macOS's ._ copies and the like: listed, not read
    seen: set[str] = set()
    for name, data in files:
        posix = str(name).replace("\\", "/").lstrip("/")
        if posix in seen:
            raise LoadError(f"{name!r}: uploaded twice; give each file once")
        seen.add(posix)
        if _is_hidden(posix):
            hidden.append(Unpaired(f"upload:{posix}", "other", _HIDDEN_REASON))
            continue
        data = bytes(data)
        if data[:4] in _ZIP_MAGICS:
            prefix = _stem(posix)
            if prefix.lower().endswith(".zip"):
                prefix = prefix[:-4]
            try:
                entries += _zip_entries(data, posix, prefix=prefix + "/")
            except LoadError as exc:
                refused.append(exc)
        else:
            # empty and broken files are reported with all the others, not alone
            entries.append(
                _Entry(posix, f"upload:{posix}", lambda data=data: data, _head_of(data))
            )
    # one upload (a ZIP archive, most often) is named; several are counted
    where = repr(files[0][0]) if len(files) == 1 else f"{len(files)} uploaded file(s)"
    if hidden and not entries and not refused:
        names = ", ".join(repr(h.path.removeprefix("upload:")) for h in hidden[:5])
        raise _load_error(
            f"{where}: only hidden or system files ({names}), which are not read",
            "nothing",
        )
    found = _discover_entries(entries, where, refused)
    found.unpaired[:0] = hidden
    return found


_HIDDEN_REASON = (
    "a hidden or system file (such as macOS's ._ copies or Thumbs.db): not read"
)


def second_observer(path: str | os.PathLike) -> dict[str, NDArray[np.bool_]]:
    """The second observer's vessel masks of a dataset, by case id.

    DRIVE's ``test/2nd_manual``, STARE's ``.vk``, CHASE_DB1's ``_2ndHO``; empty
    when the dataset has none. Same as ``discover(path).extra["second_observer"]``.
    """
    return discover(path).extra.get("second_observer", {})


def _discover_entries(
    entries: list[_Entry], where: str, refused: Sequence[LoadError] = ()
) -> Discovery:
    if not entries:
        if len(refused) == 1:
            raise refused[0]
        if refused:
            problems = _Problems()
            for exc in refused:
                problems.add(exc)
            problems.raise_if_any(where)
        raise _load_error(
            f"{where}: no files found, expected fundus images (hidden and system "
            "files, such as macOS's ._ copies and __MACOSX, are not read)",
            "nothing",
        )
    found = _build(entries, where, refused)
    if not found.cases:
        reasons = "; ".join(
            f"{source_name(u.path)}: {u.reason}" for u in found.unpaired[:5]
        )
        if len(found.unpaired) > 5:
            reasons += f"; and {len(found.unpaired) - 5} more"
        raise _load_error(
            f"{where}: no case could be built from the {len(entries)} file(s) found "
            f"({reasons})",
            "nothing",
        )
    return found
