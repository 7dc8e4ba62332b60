"""Network input, random training crops and the loss of the ResNet34 U-Net."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from vessel_core.cases import Case

#: Ways of turning an RGB fundus image into the network's 3 input channels; the
#: ``-extended`` ones also fill the outside of the FOV from its edge.
INPUTS = ("rgb", "green", "rgb-extended", "green-extended")
#: Pixels at the FOV's edge that an extended input does not fill from.
EXTEND_RIM = 2


def network_input(
    image: NDArray[np.uint8], fov_mask: NDArray[np.bool_], kind: str
) -> NDArray[np.float32]:
    """The (H, W, 3) float32 network input of an RGB image, standardised in the FOV.

    ``"rgb"`` standardises each colour channel by its mean and standard deviation
    inside the FOV; ``"green"`` takes the green channel, equalises it with CLAHE
    (OpenCV, clip 2.0 on an 8x8 grid) and repeats the standardised result three
    times. Standardising per image makes the input alike across datasets whose
    brightness differs (DRIVE, STARE, CHASE_DB1, HRF).

    ``"rgb-extended"`` and ``"green-extended"`` then fill the outside of the FOV
    and its darker rim from the pixels inside (`extend_beyond_fov`), so the
    network sees no dark step at the FOV's edge, where a vessel that runs into
    it would otherwise end at a false edge (the FOV extension of Soares et al.,
    2006, done by pull-push instead of their iterations).
    """
    if kind not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {kind!r}")
    base, extended = kind.removesuffix("-extended"), kind.endswith("-extended")
    inside = fov_mask if fov_mask.any() else np.ones_like(fov_mask)
    if base == "rgb":
        channels = image.astype(np.float32) / 255.0
    else:
        equaliser = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        green = equaliser.apply(np.ascontiguousarray(image[..., 1]))
        channels = (green.astype(np.float32) / 255.0)[..., None]
    values = channels[inside].astype(np.float64)
    mean = values.mean(axis=0)
    std = np.maximum(values.std(axis=0), 1e-3)
    out = (channels - mean.astype(np.float32)) / std.astype(np.float32)
    if extended:
        out = extend_beyond_fov(out, inside)
    if base == "green":
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def extend_beyond_fov(
    x: NDArray[np.float32], fov_mask: NDArray[np.bool_]
) -> NDArray[np.float32]:
    """``x`` (H, W, C) with the outside of the FOV filled smoothly from inside it.

    The inside less its outermost `EXTEND_RIM` pixels (a ring that is often
    darker than the rest) is kept; everything else, that ring included, is
    filled by pull-push: the kept pixels are averaged down an image pyramid
    until no hole is left, and each level's holes take the coarser level,
    blown up. The fill meets the local mean at the edge and grows smoother away
    from it, and draws no streaks that could pass for vessels.
    """
    kernel = np.ones((3, 3), np.uint8)
    kept = cv2.erode(fov_mask.astype(np.uint8), kernel, iterations=EXTEND_RIM)
    if kept.all() or not kept.any():
        return x
    return _pull_push(x, kept.astype(np.float32))


def _pull_push(
    x: NDArray[np.float32], weight: NDArray[np.float32]
) -> NDArray[np.float32]:
    """``x`` (H, W, C) where ``weight`` (H, W, in [0, 1]) is 1, and filled from
    the coarser levels where it is less."""
    if weight.min() >= 1.0:
        return x
    w = weight[..., None]
    if min(weight.shape) < 4:  # the top of the pyramid: the weighted mean
        mean = (x * w).sum(axis=(0, 1)) / max(float(weight.sum()), 1e-6)
        return (x * w + mean * (1.0 - w)).astype(np.float32)
    total = cv2.pyrDown(x * w)
    total = total.reshape(*total.shape[:2], x.shape[2])  # OpenCV drops 1 channel
    share = cv2.pyrDown(weight)
    covered = share > 1e-3
    small = np.zeros_like(total)
    small[covered] = total[covered] / share[covered][:, None]
    coarse = _pull_push(small, covered.astype(np.float32))
    up = cv2.pyrUp(coarse, dstsize=(x.shape[1], x.shape[0])).reshape(x.shape)
    return (x * w + up * (1.0 - w)).astype(np.float32)


class _Prepared:
    """One training case, its input computed once and padded for border crops."""

    def __init__(self, case: Case, kind: str, margin: int) -> None:
        image = network_input(case.image, case.fov_mask, kind)
        pad = ((margin, margin), (margin, margin))
        self.margin = margin
        self.image = np.pad(image, pad + ((0, 0),), mode="reflect").astype(np.float16)
        self.label = np.pad(case.vessel_mask.astype(np.uint8), pad)
        self.fov = np.pad(case.fov_mask.astype(np.uint8), pad)
        self.fov_coords = np.argwhere(case.fov_mask).astype(np.int32)


class CropDataset(torch.utils.data.Dataset):
    """Random augmented crops of training cases, drawn afresh every epoch.

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run
    draws the same crops as an uninterrupted one.

    Parameters
    ----------
    cases : sequence of Case
        Cases with a vessel mask.
    centres : dict of str to (N, 2) int32 ndarray
        Per case id, the (row, col) pixels a crop may be centred on when it is one
        of the ``vessel_crop_share`` crops (from `vessel_core.sampling.select`).
    crop_size : int
    length : int
        Crops per epoch.
    vessel_crop_share : float
        Share of crops centred on ``centres``; the rest are centred uniformly in
        the FOV.
    rotation : float
        Largest arbitrary rotation in degrees (0 for none); on top of it every crop
        gets a random flip and a random multiple of 90 degrees.
    jitter : float
        Brightness and contrast jitter: ``x * (1 + a) + b``, ``a, b`` uniform in
        ``[-jitter, jitter]``.
    input_kind : {"rgb", "green"}
    seed : int
    """

    def __init__(
        self,
        cases: Sequence[Case],
        centres: dict[str, NDArray[np.int32]],
        crop_size: int,
        length: int,
        vessel_crop_share: float,
        rotation: float,
        jitter: float,
        input_kind: str,
        seed: int,
    ) -> None:
        self.crop_size = int(crop_size)
        self.window = _window_size(self.crop_size, rotation)
        self.cases = [_Prepared(c, input_kind, self.window // 2 + 1) for c in cases]
        self.centres = [centres.get(c.id, np.empty((0, 2), np.int32)) for c in cases]
        self.length = int(length)
        self.vessel_crop_share = float(vessel_crop_share)
        self.rotation = float(rotation)
        self.jitter = float(jitter)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        k = int(rng.integers(len(self.cases)))
        case, centres = self.cases[k], self.centres[k]
        if len(centres) and rng.random() < self.vessel_crop_share:
            row, col = centres[rng.integers(len(centres))]
        else:
            row, col = case.fov_coords[rng.integers(len(case.fov_coords))]
        image, label, fov = self._crop(case, int(row), int(col), rng)
        image = image * (1.0 + rng.uniform(-self.jitter, self.jitter))
        image = image + rng.uniform(-self.jitter, self.jitter)
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(label.astype(np.int64)),
            torch.from_numpy(fov.astype(np.float32)),
        )

    def _crop(self, case: _Prepared, row: int, col: int, rng: np.random.Generator):
        """Image, label and FOV crops centred near (row, col), augmented."""
        half = self.window // 2
        r0, c0 = row + case.margin - half, col + case.margin - half
        window = (slice(r0, r0 + self.window), slice(c0, c0 + self.window))
        image = case.image[window].astype(np.float32)
        label, fov = case.label[window], case.fov[window]

        if self.rotation > 0:
            angle = rng.uniform(-self.rotation, self.rotation)
            centre = ((self.window - 1) / 2.0, (self.window - 1) / 2.0)
            matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
            size = (self.window, self.window)
            image = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR)
            label = cv2.warpAffine(label, matrix, size, flags=cv2.INTER_NEAREST)
            fov = cv2.warpAffine(fov, matrix, size, flags=cv2.INTER_NEAREST)

        # the crop_size centre of the (rotated) window
        start = (self.window - self.crop_size) // 2
        inner = (slice(start, start + self.crop_size),) * 2
        image, label, fov = image[inner], label[inner], fov[inner]

        turns = int(rng.integers(4))
        image, label, fov = (np.rot90(a, turns) for a in (image, label, fov))
        if rng.random() < 0.5:
            image, label, fov = (a[:, ::-1] for a in (image, label, fov))
        return image, label, fov


def _window_size(crop_size: int, rotation: float) -> int:
    """Side of the window a crop rotated by up to ``rotation`` degrees fits in."""
    if rotation <= 0:
        return crop_size
    theta = math.radians(min(float(rotation), 45.0))
    return int(math.ceil(crop_size * (math.cos(theta) + math.sin(theta)))) + 2


class VesselLoss(nn.Module):
    """Cross-entropy plus soft Dice on the vessel class, both inside the FOV.

    ``loss = CE + dice_weight * (1 - Dice)``, with the Dice coefficient taken over
    the whole batch, ``(2 sum(p y) + 1) / (sum(p) + sum(y) + 1)`` where ``p`` is
    the softmax vessel probability and ``y`` the vessel mask.
    """

    def __init__(self, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)

    def forward(self, logits, target, fov):
        logits = torch.as_tensor(logits).float()
        target = torch.as_tensor(target).long()
        fov = torch.as_tensor(fov).float()
        inside = fov.sum().clamp_min(1.0)
        ce = (F.cross_entropy(logits, target, reduction="none") * fov).sum() / inside
        if self.dice_weight == 0:
            return ce
        prob = logits.softmax(dim=1)[:, 1] * fov
        truth = target.float() * fov
        dice = (2.0 * (prob * truth).sum() + 1.0) / (prob.sum() + truth.sum() + 1.0)
        return ce + self.dice_weight * (1.0 - dice)
