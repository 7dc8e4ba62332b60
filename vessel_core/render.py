"""Pictures and files made from results: error overlays, PNG, CSV and ZIP bytes.

The app shows and offers for download what these functions make; they compute no
scores themselves (that is `vessel_core.metrics`).
"""

from __future__ import annotations

import base64
import csv
import io
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

#: Colours of the error overlay: correct vessel, false alarm, missed vessel.
ERROR_COLOURS = {
    "tp": (255, 255, 255),
    "fp": (255, 150, 0),
    "fn": (0, 140, 255),
}
ERROR_LABELS = {
    "tp": "vessel found (TP)",
    "fp": "false vessel (FP)",
    "fn": "missed vessel (FN)",
}


def _check_2d(name: str, array: NDArray, shape: tuple[int, int] | None) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(
            f"{name} must have the image's shape {shape}, got {array.shape}"
        )


def reconstruct(
    prob: NDArray[np.floating],
    threshold: float = 0.5,
    fov: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """The vessel map: ``prob >= threshold`` inside the FOV.

    Parameters
    ----------
    prob : (H, W) float ndarray
        Probability map in [0, 1].
    threshold : float, default 0.5
    fov : (H, W) bool ndarray, optional
        Pixels outside it are never vessels.

    Returns
    -------
    (H, W) bool ndarray
    """
    prob = np.asarray(prob)
    _check_2d("prob", prob, None)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    out = prob >= threshold
    if fov is not None:
        _check_2d("fov", fov, prob.shape)
        out &= fov.astype(bool)
    return out


def error_overlay(
    y_true: NDArray[np.bool_],
    y_pred: NDArray[np.bool_],
    fov: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """TP, FP and FN pixels in three colours (`ERROR_COLOURS`) on black.

    Parameters
    ----------
    y_true, y_pred : (H, W) bool ndarray
        Manual vessel mask and predicted vessel map.
    fov : (H, W) bool ndarray, optional
        Outside it everything stays black; its border is drawn in dark grey.

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    y_true = np.asarray(y_true, bool)
    y_pred = np.asarray(y_pred, bool)
    _check_2d("y_true", y_true, None)
    _check_2d("y_pred", y_pred, y_true.shape)
    inside = np.ones(y_true.shape, bool)
    if fov is not None:
        _check_2d("fov", fov, y_true.shape)
        inside = fov.astype(bool)

    out = np.zeros((*y_true.shape, 3), np.uint8)
    if fov is not None:
        out[inside] = (25, 25, 25)  # a faint disc, so the FOV is visible
    for key, where in (
        ("tp", y_true & y_pred),
        ("fp", ~y_true & y_pred),
        ("fn", y_true & ~y_pred),
    ):
        out[where & inside] = ERROR_COLOURS[key]
    return out


def mask_image(mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """A bool mask as a white-on-black (H, W) uint8 image."""
    mask = np.asarray(mask)
    _check_2d("mask", mask, None)
    return np.where(mask.astype(bool), 255, 0).astype(np.uint8)


def probability_image(
    prob: NDArray[np.floating], fov: NDArray[np.bool_] | None = None
) -> NDArray[np.uint8]:
    """A probability map in the viridis colour map as (H, W, 3) uint8 RGB.

    Values are clipped to [0, 1]; outside ``fov`` the picture is black.
    """
    prob = np.asarray(prob, np.float32)
    _check_2d("prob", prob, None)
    grey = np.round(np.clip(np.nan_to_num(prob), 0.0, 1.0) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if fov is not None:
        _check_2d("fov", fov, prob.shape)
        rgb[~fov.astype(bool)] = 0
    return rgb


def thumbnail(image: NDArray, max_side: int = 160) -> NDArray:
    """``image`` shrunk (never enlarged) so its longer side is ``max_side``.

    A bool mask comes back as a 0-255 uint8 image.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if image.dtype == bool:
        image = mask_image(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def to_png(image: NDArray) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3) RGB image (bool masks as 0/255)."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = mask_image(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 or bool, got {image.dtype}")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def data_uri(image: NDArray, max_side: int = 96) -> str:
    """A small PNG of ``image`` as a ``data:image/png;base64,...`` URI (for tables)."""
    png = to_png(thumbnail(image, max_side))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _csv_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as CSV text; columns in first-seen order, NaN as empty."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def to_zip(files: Mapping[str, bytes | str]) -> bytes:
    """A ZIP archive (deflated) of ``{name: content}``; text is stored as UTF-8."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            if isinstance(content, str):
                content = content.encode("utf-8")
            zf.writestr(name, content)
    return buf.getvalue()


def result_files(
    case_id: str,
    image: NDArray[np.uint8],
    prob: NDArray[np.floating],
    threshold: float,
    fov: NDArray[np.bool_] | None = None,
    vessel_mask: NDArray[np.bool_] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, bytes | str]:
    """Every picture of one result, by file name, ready for `to_zip`.

    ``<id>_image.png``, ``<id>_vessels.png`` (the reconstruction),
    ``<id>_probability.png``, ``<id>_probability.npy`` (float32), and with a manual
    mask ``<id>_manual.png``, ``<id>_errors.png``; with ``metrics``,
    ``<id>_metrics.csv``.
    """
    pred = reconstruct(prob, threshold, fov)
    npy = io.BytesIO()
    np.save(npy, np.asarray(prob, np.float32), allow_pickle=False)
    files: dict[str, bytes | str] = {
        f"{case_id}_image.png": to_png(image),
        f"{case_id}_vessels.png": to_png(pred),
        f"{case_id}_probability.png": to_png(probability_image(prob, fov)),
        f"{case_id}_probability.npy": npy.getvalue(),
    }
    if vessel_mask is not None:
        files[f"{case_id}_manual.png"] = to_png(vessel_mask)
        files[f"{case_id}_errors.png"] = to_png(error_overlay(vessel_mask, pred, fov))
    if metrics is not None:
        row = {"case": case_id, "threshold": threshold, **metrics}
        files[f"{case_id}_metrics.csv"] = to_csv([row])
    return files
