"""Undersampling the background: which FOV pixels a model trains on.

Vessels are about a tenth of the FOV, so a classifier trained on every pixel learns
mostly background. Each strategy keeps every vessel pixel (except where a per-case cap
applies) and a chosen part of the background:

``"all"``
    every FOV pixel.
``"random"``
    drops ``drop_fraction`` of the background uniformly at random.
``"near_vessels"``
    drops ``drop_fraction`` of the background, and takes ``near_share`` of what it
    keeps from the band of pixels within ``band_width`` pixels of a vessel, the rest
    from farther away; the classifier sees the hard boundary more often. This is the
    student project's strategy (about 70% dropped).
``"ratio"``
    keeps ``background_per_vessel`` background pixels per vessel pixel, at most
    ``max_per_case`` pixels per case in all, so one large image cannot dominate.

Sampling is deterministic: a case's pixels depend only on ``seed`` and the case id,
not on the order of the cases.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from vessel_core.cases import Case

STRATEGIES: dict[str, dict[str, Any]] = {
    "all": {},
    "random": {"drop_fraction": 0.7},
    "near_vessels": {"drop_fraction": 0.7, "band_width": 5, "near_share": 0.7},
    "ratio": {"background_per_vessel": 1.0, "max_per_case": 20000},
}

DESCRIPTIONS = {
    "all": "Keep every pixel of the FOV.",
    "random": "Drop a fraction of the background at random.",
    "near_vessels": "Drop a fraction of the background, keeping mostly pixels close "
    "to the vessels (the hard boundary).",
    "ratio": "Keep a set number of background pixels per vessel pixel, with a cap "
    "per case.",
}

#: Colours of the selection overlay, one per class of FOV pixel (Okabe-Ito colours
#: for the kept and dropped vessels and the kept background: told apart by
#: colour-blind readers too, and by brightness alone).
OVERLAY_COLOURS = {
    "vessel_kept": (213, 94, 0),
    "vessel_dropped": (240, 228, 66),
    "background_kept": (86, 180, 233),
    "background_dropped": (60, 60, 60),
}
#: What each overlay colour stands for, in the legend's words.
OVERLAY_LABELS = {
    "vessel_kept": "kept vessel",
    "vessel_dropped": "dropped vessel",
    "background_kept": "kept background",
    "background_dropped": "dropped background",
}


@dataclass
class CaseSelection:
    """The pixels chosen in one case.

    Attributes
    ----------
    case_id : str
    coords : (N, 2) int32 ndarray
        (row, col) of each chosen pixel, all inside the FOV, sorted row-major.
    labels : (N,) bool ndarray
        True where the chosen pixel is a vessel pixel.
    before, after : dict of str to int
        ``{"vessel": n, "background": n}`` in the FOV, and among the chosen pixels.
    """

    case_id: str
    coords: NDArray[np.int32]
    labels: NDArray[np.bool_]
    before: dict[str, int]
    after: dict[str, int]


@dataclass
class Selection:
    """The pixels chosen in every case, with the strategy that chose them."""

    strategy: str
    settings: dict[str, Any]
    seed: int
    per_case: dict[str, CaseSelection] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def totals(self, which: str = "after") -> dict[str, int]:
        """Class counts summed over cases, ``which`` is "before" or "after"."""
        out = {"vessel": 0, "background": 0}
        for sel in self.per_case.values():
            counts = getattr(sel, which)
            out["vessel"] += counts["vessel"]
            out["background"] += counts["background"]
        return out

    def counts_table(self) -> list[dict[str, Any]]:
        """One row per case (and a total): class counts before and after."""
        rows = []
        for cid, sel in self.per_case.items():
            rows.append(_count_row(cid, sel.before, sel.after))
        rows.append(_count_row("total", self.totals("before"), self.totals("after")))
        return rows

    def describe(self) -> dict[str, Any]:
        """Strategy, settings and seed: what a model records about its sampling."""
        return {"strategy": self.strategy, "seed": self.seed, **self.settings}

    def missing_classes(self) -> list[str]:
        """The classes ("vessel", "background") of which no pixel is kept.

        A classifier trained on the selection needs both; an empty list says it
        holds both.
        """
        after = self.totals("after")
        return [name for name in ("vessel", "background") if after[name] == 0]


def _count_row(cid: str, before: dict[str, int], after: dict[str, int]) -> dict:
    bg = before["background"]
    return {
        "case": cid,
        "vessel_before": before["vessel"],
        "background_before": bg,
        "vessel_after": after["vessel"],
        "background_after": after["background"],
        "background_dropped": 1.0 - after["background"] / bg if bg else 0.0,
    }


def strategy_settings(strategy: str, **params: Any) -> dict[str, Any]:
    """The full settings of ``strategy``: its defaults updated with ``params``."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown undersampling strategy {strategy!r}; "
            f"choose one of {sorted(STRATEGIES)}"
        )
    defaults = STRATEGIES[strategy]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(
            f"strategy {strategy!r} has no setting(s) {sorted(unknown)}; "
            f"its settings are {sorted(defaults) or 'none'}"
        )
    settings = {**defaults, **params}
    for name in ("drop_fraction", "near_share"):
        if name in settings and not 0.0 <= float(settings[name]) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {settings[name]!r}")
    for name in ("band_width", "max_per_case"):
        if name in settings and int(settings[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {settings[name]!r}")
    if "background_per_vessel" in settings and settings["background_per_vessel"] < 0:
        raise ValueError(
            "background_per_vessel must be >= 0, "
            f"got {settings['background_per_vessel']!r}"
        )
    return settings


def select(
    cases: Sequence[Case],
    strategy: str = "near_vessels",
    seed: int = 0,
    **params: Any,
) -> Selection:
    """Choose the training pixels of every case that has a vessel mask.

    Parameters
    ----------
    cases : sequence of Case
        Cases without a vessel mask are skipped and listed in ``skipped``.
    strategy : {"all", "random", "near_vessels", "ratio"}
    seed : int
        With the case id, fixes every random choice.
    **params
        The strategy's settings (see `STRATEGIES` for names and defaults).

    Returns
    -------
    Selection
    """
    settings = strategy_settings(strategy, **params)
    selection = Selection(strategy, settings, int(seed))
    for case in cases:
        if case.vessel_mask is None:
            selection.skipped.append(case.id)
            continue
        selection.per_case[case.id] = select_case(case, strategy, seed, **settings)
    return selection


def select_case(
    case: Case, strategy: str = "near_vessels", seed: int = 0, **params: Any
) -> CaseSelection:
    """Choose the training pixels of one case (see `select`)."""
    if case.vessel_mask is None:
        raise ValueError(f"case {case.id!r} has no vessel mask to sample from")
    settings = strategy_settings(strategy, **params)
    rng = np.random.default_rng([int(seed), zlib.crc32(case.id.encode())])
    fov = case.fov_mask
    vessel = case.vessel_mask & fov
    background = fov & ~case.vessel_mask
    vessel_idx = np.flatnonzero(vessel)
    bg_idx = np.flatnonzero(background)

    if strategy == "all":
        keep_v, keep_bg = vessel_idx, bg_idx
    elif strategy == "random":
        n_keep = _n_kept(bg_idx.size, settings["drop_fraction"])
        keep_v, keep_bg = vessel_idx, _choose(rng, bg_idx, n_keep)
    elif strategy == "near_vessels":
        keep_v = vessel_idx
        keep_bg = _near_vessels(rng, case.vessel_mask, bg_idx, settings)
    else:  # "ratio"
        keep_v, keep_bg = _ratio(rng, vessel_idx, bg_idx, settings)

    flat = np.sort(np.concatenate([keep_v, keep_bg]))
    rows, cols = np.unravel_index(flat, fov.shape)
    coords = np.stack([rows, cols], axis=1).astype(np.int32)
    labels = case.vessel_mask.ravel()[flat]
    return CaseSelection(
        case_id=case.id,
        coords=coords,
        labels=labels,
        before={"vessel": int(vessel_idx.size), "background": int(bg_idx.size)},
        after={"vessel": int(keep_v.size), "background": int(keep_bg.size)},
    )


def _n_kept(n: int, drop_fraction: float) -> int:
    return int(round(n * (1.0 - float(drop_fraction))))


def _choose(rng: np.random.Generator, idx: NDArray, n: int) -> NDArray:
    """``n`` of ``idx`` without replacement (all of them if n >= len)."""
    if n >= idx.size:
        return idx
    return rng.choice(idx, size=n, replace=False)


def _near_vessels(
    rng: np.random.Generator,
    vessel_mask: NDArray[np.bool_],
    bg_idx: NDArray,
    settings: dict[str, Any],
) -> NDArray:
    # distance of each background pixel to the nearest vessel pixel
    dist = cv2.distanceTransform((~vessel_mask).astype(np.uint8), cv2.DIST_L2, 5)
    near = dist.ravel()[bg_idx] <= float(settings["band_width"])
    near_idx, far_idx = bg_idx[near], bg_idx[~near]

    n_keep = _n_kept(bg_idx.size, settings["drop_fraction"])
    n_near = min(int(round(n_keep * float(settings["near_share"]))), near_idx.size)
    n_far = min(n_keep - n_near, far_idx.size)
    n_near = min(n_keep - n_far, near_idx.size)  # top up from the band if far is short
    return np.concatenate(
        [_choose(rng, near_idx, n_near), _choose(rng, far_idx, n_far)]
    )


def _ratio(
    rng: np.random.Generator,
    vessel_idx: NDArray,
    bg_idx: NDArray,
    settings: dict[str, Any],
) -> tuple[NDArray, NDArray]:
    per_vessel = float(settings["background_per_vessel"])
    cap = int(settings["max_per_case"])
    n_v = vessel_idx.size
    n_bg = int(round(n_v * per_vessel))
    if n_v + n_bg > cap:
        # shrink both classes together so the ratio holds under the cap
        n_v = int(round(cap / (1.0 + per_vessel)))
        n_bg = cap - n_v
    n_bg = min(n_bg, bg_idx.size)
    return _choose(rng, vessel_idx, n_v), _choose(rng, bg_idx, n_bg)


def overlay(case: Case, selection: CaseSelection) -> NDArray[np.uint8]:
    """The image with each FOV pixel coloured by its class, kept or dropped.

    Parameters
    ----------
    case : Case
    selection : CaseSelection
        The pixels chosen in ``case``.

    Returns
    -------
    (H, W, 3) uint8 ndarray
        Vessel and background pixels, kept or dropped, in the four
        `OVERLAY_COLOURS`; outside the FOV the photograph, darkened.
    """
    out = (case.image.astype(np.float32) * 0.35).astype(np.uint8)
    fov = case.fov_mask
    kept = np.zeros(fov.shape, bool)
    kept[selection.coords[:, 0], selection.coords[:, 1]] = True
    vessel = np.zeros(fov.shape, bool) if case.vessel_mask is None else case.vessel_mask

    colour = np.empty_like(out)
    colour[:] = OVERLAY_COLOURS["background_dropped"]
    colour[kept & ~vessel] = OVERLAY_COLOURS["background_kept"]
    colour[vessel & ~kept] = OVERLAY_COLOURS["vessel_dropped"]
    colour[vessel & kept] = OVERLAY_COLOURS["vessel_kept"]
    out[fov] = colour[fov]
    return out
