"""The `Case` record (a fundus image with its masks) and helpers on lists of cases."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vessel_core.progress import warn

SPLITS = ("train", "test")


@dataclass
class Case:
    """A fundus image with an optional manual vessel mask and a FOV mask.

    Attributes
    ----------
    id : str
        Case id, unique inside a dataset (for DRIVE: ``"21"``, ``"01"``...).
    image : (H, W, 3) uint8 ndarray
        RGB fundus photograph.
    fov_mask : (H, W) bool ndarray
        Field of view; True inside the fundus. Estimated when no file gave one.
    vessel_mask : (H, W) bool ndarray or None
        Manual vessel segmentation; None for an image without a mask.
    split : {"train", "test"}
        Which side of the train/test split the case is on.
    fov_estimated : bool
        True when ``fov_mask`` was estimated from the image rather than read.
    sources : dict of str to str
        Where each part came from: keys ``"image"``, ``"vessel_mask"``,
        ``"fov_mask"``; values are paths (or ``"zip:member"``/``"builtin:..."``).
    dataset : str
        Name of the layout the case was found in (``"DRIVE"``, ``"generic"``...).
    """

    id: str
    image: NDArray[np.uint8]
    fov_mask: NDArray[np.bool_]
    vessel_mask: NDArray[np.bool_] | None = None
    split: str = "train"
    fov_estimated: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    dataset: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def has_mask(self) -> bool:
        return self.vessel_mask is not None

    def fingerprint(self) -> str:
        """SHA-256 of the image and masks' pixels (16 hex digits)."""
        h = hashlib.sha256()
        for part in (self.image, self.fov_mask, self.vessel_mask):
            if part is not None:
                h.update(str(part.shape).encode())
                h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()[:16]


def image_fingerprints(cases: Iterable[Case]) -> list[str]:
    """SHA-256 of each case's image pixels alone (16 hex digits): what tells a
    training image again under another name or with other masks."""
    out = []
    for case in cases:
        h = hashlib.sha256(str(case.image.shape).encode())
        h.update(np.ascontiguousarray(case.image).tobytes())
        out.append(h.hexdigest()[:16])
    return out


def fingerprint_cases(cases: Iterable[Case]) -> str:
    """One fingerprint for a list of cases, in the order given."""
    h = hashlib.sha256()
    for case in cases:
        h.update(case.id.encode())
        h.update(case.fingerprint().encode())
    return h.hexdigest()[:16]


def split_cases(cases: Sequence[Case], split: str) -> list[Case]:
    """The cases on one side of the split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [c for c in cases if c.split == split]


def one_class_error(
    cases: Sequence[Case], vessel: bool, undersampled: bool = False
) -> ValueError:
    """The error of a fit whose training pixels hold one class only.

    ``vessel``: the one class is vessel. Names the cases whose masks hold no
    pixel of the other class inside the FOV; ``undersampled``: the pixels were
    chosen by an undersampling, which may have dropped that class.
    """
    have, missing = ("vessel", "background") if vessel else ("background", "vessel")
    empty = one_class_cases(cases)  # the pixels hold one class: so do these masks
    message = (
        f"the training pixels hold only one class ({have}): a fit needs {missing} "
        "pixels too"
    )
    if empty:
        named = ", ".join(empty[:10])
        if len(empty) > 10:
            named += f" and {len(empty) - 10} more"
        message += f"; the vessel masks of {named} have no {missing} pixel in the FOV"
    message += "; check the masks, or add cases whose masks show both"
    if undersampled:
        message += ", or choose an undersampling that keeps both"
    return ValueError(message)


def one_class_cases(cases: Sequence[Case]) -> list[str]:
    """Ids of the cases whose vessel mask holds one class only inside the FOV
    (no vessel pixel, or nothing but vessel): almost surely a wrong mask."""
    out = []
    for c in cases:
        if c.vessel_mask is None:
            continue
        inside = c.vessel_mask[c.fov_mask]
        if not inside.any() or inside.all():
            out.append(c.id)
    return out


def trainable(cases: Sequence[Case]) -> list[Case]:
    """The cases a model can learn from: a vessel mask showing both classes."""
    bad = set(one_class_cases(cases))
    return [c for c in with_masks(cases) if c.id not in bad]


def fit_cases(cases: Sequence[Case]) -> list[Case]:
    """The cases a fit uses (`trainable`), warning of those it leaves out.

    Raises ValueError when none is left: no vessel mask at all, or only masks
    of one class (`one_class_error`, naming them).
    """
    masked = with_masks(cases)
    if not masked:
        raise ValueError("fit needs at least one case with a vessel mask, got none")
    kept = trainable(masked)
    if not kept:
        vessel = all(c.vessel_mask[c.fov_mask].all() for c in masked)
        raise one_class_error(masked, vessel)
    if len(kept) < len(masked):
        kept_ids = {c.id for c in kept}
        left = [c.id for c in masked if c.id not in kept_ids]
        warn(
            f"left out of training: {', '.join(left)} (their vessel masks hold one "
            "class only inside the FOV, almost surely the wrong files)",
            stacklevel=3,
        )
    return kept


def with_masks(cases: Sequence[Case]) -> list[Case]:
    """The cases that carry a manual vessel mask."""
    return [c for c in cases if c.vessel_mask is not None]
