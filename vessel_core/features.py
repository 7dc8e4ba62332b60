"""Pixel features: the neighbourhood patch and a filter bank of vessel detectors.

Each FOV pixel is described by a vector of numbers:

``"patch"``
    the values of an N x N patch (N = 3, 5 or 7) of the preprocessed green channel
    (`vessel_core.preprocess.preprocess`) centred on the pixel;
``"bank"``
    a filter bank tuned to vessels: Hessian ridge strength and gradient magnitude
    at several scales (Gaussian derivatives), the modulus of Morlet wavelets
    maximised over orientations at three scales, and a morphological top-hat;
``"patch+bank"``
    both.

A feature set is fully named by `FeatureSettings` (feature set and patch size),
so features computed twice from the same image are identical. Every filter output
is standardised over the image's FOV (zero mean, unit variance), which removes most
of the differences in brightness and contrast between photographs. Filter sizes
follow `vessel_core.preprocess.fov_scale`, so a large photograph is filtered like a
DRIVE image at its own resolution.

Memory: the patch values are not stored as separate planes; `FeaturePlanes` keeps
the preprocessed channel and the bank, and builds feature rows for the pixels asked
for (`FeaturePlanes.at`). A 3504 x 2336 HRF photograph needs 10 float32 planes
(about 0.33 GB) for ``"patch+bank"``, whatever the patch size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from vessel_core import preprocess as pp
from vessel_core.cases import Case

FEATURE_SETS = ("patch", "patch+bank", "bank")
PATCH_SIZES = (1, 3, 5, 7)

# the filter bank: (family, scale) pairs; scales in pixels at DRIVE's resolution
_HESSIAN_SIGMAS = (1.0, 2.0, 4.0)
_GRADIENT_SIGMAS = (1.0, 2.0)
_MORLET_SCALES = (3.0, 4.0, 5.0)
_MORLET_DOWNSAMPLE = 2
_TOPHAT_RADIUS = 7
_N_ORIENTATIONS = 12


@dataclass(frozen=True)
class FeatureSettings:
    """A reproducible feature set.

    Attributes
    ----------
    features : {"patch", "patch+bank", "bank"}, default="patch+bank"
        Which features describe a pixel (see the module docstring).
    patch_size : {1, 3, 5, 7}, default=3
        Side of the square patch of preprocessed green values; ignored for
        ``"bank"``.
    """

    features: str = "patch+bank"
    patch_size: int = 3

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ValueError(
                f"features must be one of {FEATURE_SETS}, got {self.features!r}"
            )
        if self.patch_size not in PATCH_SIZES:
            raise ValueError(
                f"patch_size must be one of {PATCH_SIZES}, got {self.patch_size!r}"
            )

    @property
    def uses_patch(self) -> bool:
        return "patch" in self.features

    @property
    def uses_bank(self) -> bool:
        return "bank" in self.features

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_settings(
    settings: FeatureSettings | Mapping[str, Any] | str | None = None, **overrides
) -> FeatureSettings:
    """`FeatureSettings` from a settings object, a dict, a feature-set name or None.

    Keys of a dict other than ``features`` and ``patch_size`` are ignored, so a
    model's whole settings dict can be passed.
    """
    if isinstance(settings, FeatureSettings):
        base = settings.to_dict()
    elif isinstance(settings, str):
        base = {"features": settings}
    elif settings is None:
        base = {}
    elif isinstance(settings, Mapping):
        base = {k: settings[k] for k in ("features", "patch_size") if k in settings}
    else:
        raise TypeError(
            "settings must be FeatureSettings, a dict, a feature-set name or None, "
            f"got {type(settings).__name__}"
        )
    base.update(overrides)
    if "patch_size" in base:
        base["patch_size"] = int(base["patch_size"])
    return FeatureSettings(**base)


def bank_names() -> list[str]:
    """Names of the filter-bank features, in order."""
    names = [f"hessian_ridge(s={s:g})" for s in _HESSIAN_SIGMAS]
    names += [f"gradient(s={s:g})" for s in _GRADIENT_SIGMAS]
    names += [f"morlet(a={a:g})" for a in _MORLET_SCALES]
    names += [f"tophat(r={_TOPHAT_RADIUS})"]
    return names


def patch_offsets(patch_size: int) -> list[tuple[int, int]]:
    """(row, col) offsets of the patch, row-major from the top-left corner."""
    half = patch_size // 2
    return [(dr, dc) for dr in range(-half, half + 1) for dc in range(-half, half + 1)]


def feature_names(
    settings: FeatureSettings | Mapping[str, Any] | str | None = None,
) -> list[str]:
    """Names of the features of ``settings``, in the order of the feature vector.

    Examples
    --------
    >>> feature_names({"features": "patch", "patch_size": 3})[:2]
    ['green[-1,-1]', 'green[-1,+0]']
    """
    settings = feature_settings(settings)
    names = []
    if settings.uses_patch:
        names += [
            f"green[{dr:+d},{dc:+d}]" for dr, dc in patch_offsets(settings.patch_size)
        ]
    if settings.uses_bank:
        names += bank_names()
    return names


@dataclass
class FeaturePlanes:
    """The per-pixel features of one image, stored compactly.

    Attributes
    ----------
    settings : FeatureSettings
    green : (H, W) float32 ndarray or None
        The preprocessed green channel (the patch values); None for ``"bank"``.
    bank : (H, W, B) float32 ndarray or None
        The standardised filter-bank responses; None for ``"patch"``.
    fov_mask : (H, W) bool ndarray
    """

    settings: FeatureSettings
    green: NDArray[np.float32] | None
    bank: NDArray[np.float32] | None
    fov_mask: NDArray[np.bool_]

    @property
    def shape(self) -> tuple[int, int]:
        return self.fov_mask.shape

    @property
    def names(self) -> list[str]:
        return feature_names(self.settings)

    @property
    def n_features(self) -> int:
        return len(self.names)

    def at(self, coords: NDArray) -> NDArray[np.float32]:
        """The feature rows of the pixels at ``coords`` ((N, 2) row, col)."""
        coords = check_coords(coords, self.shape)
        rows, cols = coords[:, 0], coords[:, 1]
        out = np.empty((len(coords), self.n_features), dtype=np.float32)
        j = 0
        if self.settings.uses_patch:
            half = self.settings.patch_size // 2
            padded = self._padded_green()
            for dr, dc in patch_offsets(self.settings.patch_size):
                # the padding mirrors the image border, as the filters do
                out[:, j] = padded[rows + half + dr, cols + half + dc]
                j += 1
        if self.settings.uses_bank:
            out[:, j:] = self.bank[rows, cols]
        return out

    def _padded_green(self) -> NDArray[np.float32]:
        """The green plane mirrored (reflect-101) by half a patch on every side."""
        half = self.settings.patch_size // 2
        cached = getattr(self, "_padded", None)
        if cached is None:
            cached = cv2.copyMakeBorder(
                self.green, half, half, half, half, cv2.BORDER_REFLECT_101
            )
            self._padded = cached
        return cached

    def stack(self) -> NDArray[np.float32]:
        """All features as one ``(H, W, F)`` float32 array."""
        height, width = self.shape
        out = np.empty((height, width, self.n_features), dtype=np.float32)
        j = 0
        if self.settings.uses_patch:
            half = self.settings.patch_size // 2
            padded = self._padded_green()
            for dr, dc in patch_offsets(self.settings.patch_size):
                out[..., j] = padded[
                    half + dr : half + dr + height, half + dc : half + dc + width
                ]
                j += 1
        if self.settings.uses_bank:
            out[..., j:] = self.bank
        return out


def check_coords(coords: NDArray, shape: tuple[int, int]) -> NDArray[np.intp]:
    """Check (N, 2) integer (row, col) pixel coordinates inside ``shape``."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(
            f"coords must be an (N, 2) array of (row, col), got {coords.shape}"
        )
    if coords.size and not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"coords must be integers, got dtype {coords.dtype}")
    coords = coords.astype(np.intp, copy=False)
    if coords.size and (
        coords.min() < 0
        or coords[:, 0].max() >= shape[0]
        or coords[:, 1].max() >= shape[1]
    ):
        raise ValueError(f"coords must lie inside the image of shape {shape}")
    return coords


def _image_and_fov(case_or_image, fov_mask):
    if isinstance(case_or_image, Case):
        image = case_or_image.image
        fov_mask = case_or_image.fov_mask if fov_mask is None else fov_mask
    else:
        image = pp.check_image(case_or_image)
    return image, pp.check_fov(fov_mask, image.shape[:2])


def compute_planes(
    case_or_image: Case | NDArray,
    fov_mask: NDArray[np.bool_] | None = None,
    settings: FeatureSettings | Mapping[str, Any] | str | None = None,
) -> FeaturePlanes:
    """Preprocess an image and compute the planes its features are read from.

    Parameters
    ----------
    case_or_image : Case or (H, W, 3) uint8 ndarray
        A case (its FOV mask is used unless ``fov_mask`` is given) or an image.
    fov_mask : (H, W) bool ndarray, optional
        Field of view; the case's, else the whole image.
    settings : FeatureSettings, dict or str, optional
        The feature set; default ``"patch+bank"`` with a 3 x 3 patch.

    Returns
    -------
    FeaturePlanes
    """
    settings = feature_settings(settings)
    image, fov_mask = _image_and_fov(case_or_image, fov_mask)
    green = pp.preprocess(image, fov_mask)
    bank = filter_bank(green, fov_mask) if settings.uses_bank else None
    return FeaturePlanes(
        settings, green if settings.uses_patch else None, bank, fov_mask
    )


def compute_feature_maps(
    case_or_image: Case | NDArray,
    fov_mask: NDArray[np.bool_] | None = None,
    settings: FeatureSettings | Mapping[str, Any] | str | None = None,
) -> NDArray[np.float32]:
    """Every pixel's feature vector, as an ``(H, W, F)`` float32 array.

    See `compute_planes` for the parameters; ``F == len(feature_names(settings))``.
    For large images prefer `compute_planes` and `FeaturePlanes.at`, which do not
    materialise the patch planes.
    """
    return compute_planes(case_or_image, fov_mask, settings).stack()


def features_at(maps: NDArray | FeaturePlanes, coords: NDArray) -> NDArray[np.float32]:
    """The feature rows ``(N, F)`` of the pixels at ``coords`` ((N, 2) row, col).

    ``maps`` is an ``(H, W, F)`` array from `compute_feature_maps` or a
    `FeaturePlanes`.
    """
    if isinstance(maps, FeaturePlanes):
        return maps.at(coords)
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be an (H, W, F) array, got shape {maps.shape}")
    coords = check_coords(coords, maps.shape[:2])
    return np.ascontiguousarray(maps[coords[:, 0], coords[:, 1]], dtype=np.float32)


# --- the filter bank -------------------------------------------------------------


def filter_bank(
    green: NDArray[np.float32], fov_mask: NDArray[np.bool_]
) -> NDArray[np.float32]:
    """The standardised filter-bank responses of a preprocessed green channel.

    Parameters
    ----------
    green : (H, W) float32 ndarray
        Output of `vessel_core.preprocess.preprocess` (vessels dark).
    fov_mask : (H, W) bool ndarray

    Returns
    -------
    (H, W, B) float32 ndarray
        One plane per name of `bank_names`, each with zero mean and unit variance
        over the FOV; large where a vessel is likely.

    Notes
    -----
    All filters run on the inverted channel (vessels bright) with mirrored
    borders; the FOV border needs no care since `preprocess` padded it.

    References
    ----------
    .. [1] A. F. Frangi, W. J. Niessen, K. L. Vincken and M. A. Viergever,
       "Multiscale vessel enhancement filtering", MICCAI 1998, LNCS 1496,
       pp. 130-137. :doi:`10.1007/BFb0056195`
    .. [2] J. V. B. Soares et al., "Retinal vessel segmentation using the 2-D
       Gabor wavelet and supervised classification", IEEE Trans. Med. Imag.
       25(9), 1214-1222, 2006. :doi:`10.1109/TMI.2006.879967`
    .. [3] F. Zana and J.-C. Klein, "Segmentation of vessel-like patterns using
       mathematical morphology and curvature evaluation", IEEE Trans. Image
       Process. 10(7), 1010-1019, 2001. :doi:`10.1109/83.931095`
    """
    green = np.asarray(green, dtype=np.float32)
    fov_mask = pp.check_fov(fov_mask, green.shape)
    scale = pp.filter_scale(fov_mask)
    bright = -green
    names = bank_names()
    out = np.empty(green.shape + (len(names),), dtype=np.float32)
    j = 0

    # below half a pixel a Gaussian derivative is no longer sampled well
    for sigma in _HESSIAN_SIGMAS:
        out[..., j] = hessian_ridge(bright, max(0.5, sigma * scale))
        j += 1
    for sigma in _GRADIENT_SIGMAS:
        out[..., j] = gradient_magnitude(bright, max(0.5, sigma * scale))
        j += 1
    # large wavelets need no full resolution: filter a reduced image; a wavelet
    # narrower than a pixel would alias (k0 / a > pi)
    downsample = max(1, int(round(_MORLET_DOWNSAMPLE * scale)))
    scales = [max(1.0 * downsample, a * scale) for a in _MORLET_SCALES]
    morlet = morlet_max(bright, scales, downsample=downsample)
    for response in morlet:
        out[..., j] = response
        j += 1
    radius = max(1, int(round(_TOPHAT_RADIUS * scale)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    out[..., j] = cv2.morphologyEx(bright, cv2.MORPH_TOPHAT, disc)

    for j in range(out.shape[2]):
        out[..., j] = pp.standardise(out[..., j], fov_mask)
    return out


def _gaussian_kernels(sigma: float):
    """1-D Gaussian and its first and second derivatives, float32."""
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    g /= g.sum()
    # the truncated derivatives, renormalised to be exact on x and x**2
    g1 = -x * g
    g1 /= -np.sum(x * g1)
    g2 = (x**2 / sigma**2 - 1.0) * g
    g2 -= g2.sum() * g
    g2 /= np.sum(x**2 * g2) / 2.0
    return g.astype(np.float32), g1.astype(np.float32), g2.astype(np.float32)


def _separable(image, kx, ky):
    return cv2.sepFilter2D(image, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT_101)


def hessian_ridge(bright: NDArray, sigma: float) -> NDArray[np.float32]:
    """Scale-normalised bright-ridge strength: ``-sigma**2 * lambda_min(Hessian)``.

    Across a bright line the second derivative is strongly negative; the most
    negative Hessian eigenvalue measures that at any orientation [1]_.
    """
    g, g1, g2 = _gaussian_kernels(sigma)
    dxx = _separable(bright, g2, g)
    dyy = _separable(bright, g, g2)
    dxy = _separable(bright, g1, g1)
    # eigenvalues of [[dxx, dxy], [dxy, dyy]]: (tr -+ sqrt((dxx-dyy)^2 + 4 dxy^2))/2
    root = np.sqrt((dxx - dyy) ** 2 + 4.0 * dxy**2)
    return (-(sigma**2) * 0.5 * (dxx + dyy - root)).astype(np.float32)


def gradient_magnitude(bright: NDArray, sigma: float) -> NDArray[np.float32]:
    """Scale-normalised Gaussian gradient magnitude ``sigma * |grad G_sigma * I|``."""
    g, g1, _ = _gaussian_kernels(sigma)
    dx = _separable(bright, g1, g)
    dy = _separable(bright, g, g1)
    return (sigma * cv2.magnitude(dx, dy)).astype(np.float32)


def morlet_max(
    bright: NDArray,
    scales,
    n_orientations: int = _N_ORIENTATIONS,
    elongation: float = 4.0,
    k0: float = 3.0,
    downsample: int = 1,
) -> list[NDArray[np.float32]]:
    """Modulus of the 2-D Morlet wavelet transform, maximised over orientations [2]_.

    ``psi(x) = exp(1j * k0 * y) * exp(-(x**2 / elongation + y**2) / 2)``, dilated
    by each scale ``a`` (pixels) and rotated over ``[0, pi)``; computed in the
    Fourier domain.

    Parameters
    ----------
    bright : (H, W) float32 ndarray
        Vessels bright.
    scales : sequence of float
        Dilations ``a`` in pixels of ``bright``.
    n_orientations : int, default=12
    elongation, k0 : float, default=4.0, 3.0
        Soares et al.'s wavelet: 4 times longer than wide, 3 radians per unit.
    downsample : int, default=1
        Filter an image reduced this many times (area average) with scales
        divided as much, and enlarge the result back: 4x less work for 2. The
        wavelet's frequency ``k0 / a`` must stay below pi at the reduced size
        (``a / downsample > 1``).

    Returns
    -------
    list of (H, W) float32 ndarray
        One map per scale.
    """
    height, width = bright.shape
    small = bright
    if downsample > 1:
        size = (max(8, width // downsample), max(8, height // downsample))
        small = cv2.resize(bright, size, interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    scales = [float(a) / downsample for a in scales]
    # pad (mirrored) to a fast DFT size; the wrap-around stays in the margin
    margin = int(math.ceil(3.0 * max(scales) * math.sqrt(elongation)))
    fh = cv2.getOptimalDFTSize(sh + 2 * margin)
    fw = cv2.getOptimalDFTSize(sw + 2 * margin)
    padded = cv2.copyMakeBorder(
        np.ascontiguousarray(small, dtype=np.float32),
        margin,
        fh - sh - margin,
        margin,
        fw - sw - margin,
        cv2.BORDER_REFLECT_101,
    )
    spectrum = cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT)

    out = []
    for a in scales:
        best = None
        for gain in _morlet_gains(fh, fw, a, n_orientations, elongation, k0):
            back = cv2.idft(
                spectrum * gain, flags=cv2.DFT_SCALE | cv2.DFT_COMPLEX_OUTPUT
            )
            window = back[margin : margin + sh, margin : margin + sw]
            modulus = cv2.magnitude(window[..., 0].copy(), window[..., 1].copy())
            best = modulus if best is None else np.maximum(best, modulus, out=best)
        if downsample > 1:
            best = cv2.resize(best, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(best, dtype=np.float32))
    return out


@functools.lru_cache(maxsize=8)
def _morlet_gains(fh, fw, a, n_orientations, elongation, k0) -> tuple[NDArray, ...]:
    """Fourier transforms of the rotated Morlet wavelets, ``(fh, fw, 1)`` each."""
    ky = (np.fft.fftfreq(fh) * 2.0 * math.pi)[:, None]
    kx = (np.fft.fftfreq(fw) * 2.0 * math.pi)[None, :]
    gains = []
    for i in range(n_orientations):
        theta = math.pi * i / n_orientations
        u = a * (math.cos(theta) * kx + math.sin(theta) * ky)
        v = a * (-math.sin(theta) * kx + math.cos(theta) * ky)
        gain = np.exp(-0.5 * (elongation * u * u + (v - k0) ** 2)).astype(np.float32)
        gains.append(np.ascontiguousarray(gain[..., None]))
    return tuple(gains)


# --- context: features of a first-stage probability map ----------------------------

# scales in pixels at DRIVE's resolution, like the filter bank's
_CONTEXT_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
_CONTEXT_LINES = (7, 15, 25)


def context_names() -> list[str]:
    """Names of the context features (`context_planes`), in order."""
    names = ["context_prob"]
    names += [f"context_gauss(s={s:g})" for s in _CONTEXT_SIGMAS]
    names += [f"context_line(l={n})" for n in _CONTEXT_LINES]
    return names


def context_planes(
    prob: NDArray[np.floating], fov_mask: NDArray[np.bool_], weight: float = 1.0
) -> NDArray[np.float32]:
    """Features of a vessel probability map, for a second classification stage.

    A pixel classifier decides each pixel from its own neighbourhood; its map
    then holds what the pixel alone cannot show: whether vessel evidence around
    it lines up into a vessel (a thin vessel continues on both sides; noise and
    the optic disc rim do not). These planes describe that, for the second stage
    of the auto-context scheme [1]_ that `vessel_core.knn.KNNModel` runs.

    Parameters
    ----------
    prob : (H, W) float ndarray
        A probability map (0 outside the FOV).
    fov_mask : (H, W) bool ndarray
    weight : float, default=1.0
        Every plane is multiplied by it: in a Euclidean k-NN search, the share
        of the distance the context takes.

    Returns
    -------
    (H, W, C) float32 ndarray
        One plane per name of `context_names`: the map itself, its Gaussian
        smoothing inside the FOV at five scales, and the largest mean of the map
        along a line through the pixel (12 orientations) at three lengths [2]_;
        each standardised over the FOV, then times ``weight``.

    References
    ----------
    .. [1] Z. Tu and X. Bai, "Auto-context and its application to high-level
       vision tasks and 3D brain image segmentation", IEEE Trans. Pattern Anal.
       Mach. Intell. 32(10), 1744-1757, 2010. :doi:`10.1109/TPAMI.2009.186`
    .. [2] E. Ricci and R. Perfetti, "Retinal blood vessel segmentation using
       line operators and support vector classification", IEEE Trans. Med.
       Imag. 26(10), 1357-1365, 2007. :doi:`10.1109/TMI.2007.898551`
    """
    prob = np.asarray(prob, dtype=np.float32)
    fov_mask = pp.check_fov(fov_mask, prob.shape)
    scale = pp.filter_scale(fov_mask)
    inside = np.where(fov_mask, prob, np.float32(0.0))
    names = context_names()
    out = np.empty(prob.shape + (len(names),), dtype=np.float32)
    out[..., 0] = inside
    j = 1
    for sigma in _CONTEXT_SIGMAS:
        s = max(0.5, sigma * scale)
        blurred = cv2.GaussianBlur(inside, (0, 0), s)
        weight_in = cv2.GaussianBlur(fov_mask.astype(np.float32), (0, 0), s)
        out[..., j] = blurred / np.maximum(weight_in, np.float32(1e-6))
        j += 1
    lengths = [max(3, int(round(length * scale)) | 1) for length in _CONTEXT_LINES]
    for plane in line_means_max(inside, lengths):
        out[..., j] = plane
        j += 1
    factor = np.float32(weight)
    for j in range(out.shape[2]):
        out[..., j] = pp.standardise(out[..., j], fov_mask) * factor
    return out


def line_means_max(
    image: NDArray[np.float32],
    lengths,
    n_orientations: int = _N_ORIENTATIONS,
) -> list[NDArray[np.float32]]:
    """The largest mean of ``image`` along a centred line, for each length.

    For each odd length L, the mean over the L pixels of a digital line through
    the pixel (one pixel per step along its main axis), maximised over
    ``n_orientations`` evenly spaced orientations [1]_; borders are mirrored.
    The lines of one orientation are nested, so all lengths cost one pass of
    shifted sums.

    References
    ----------
    .. [1] E. Ricci and R. Perfetti, "Retinal blood vessel segmentation using
       line operators and support vector classification", IEEE Trans. Med.
       Imag. 26(10), 1357-1365, 2007. :doi:`10.1109/TMI.2007.898551`
    """
    image = np.asarray(image, dtype=np.float32)
    halves = [int(length) // 2 for length in lengths]
    if any(2 * h + 1 != int(n) or h < 0 for h, n in zip(halves, lengths, strict=True)):
        raise ValueError(f"line lengths must be odd and positive, got {lengths!r}")
    reach = max(halves)
    height, width = image.shape
    padded = cv2.copyMakeBorder(image, reach, reach, reach, reach, cv2.BORDER_REFLECT)

    def shifted(dy: int, dx: int) -> NDArray[np.float32]:
        return padded[reach + dy : reach + dy + height, reach + dx : reach + dx + width]

    best: list[NDArray[np.float32] | None] = [None] * len(halves)
    for i in range(int(n_orientations)):
        theta = math.pi * i / n_orientations
        cos, sin = math.cos(theta), math.sin(theta)
        step = max(abs(cos), abs(sin))
        total = image.copy()
        for t in range(1, reach + 1):
            dy, dx = int(round(t * sin / step)), int(round(t * cos / step))
            total += shifted(dy, dx)
            total += shifted(-dy, -dx)
            for j, h in enumerate(halves):
                if h == t:
                    mean = total * np.float32(1.0 / (2 * h + 1))
                    best[j] = mean if best[j] is None else np.maximum(best[j], mean)
    return [image.copy() if b is None else b for b in best]  # length 1: the image
