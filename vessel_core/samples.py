"""The built-in sample: synthetic fundus-like cases and scikit-image's retina photo.

The synthetic cases carry their exact vessel masks, so that every page and model
can be tried without a dataset; the photograph has no vessel mask and shows what
a model does on a real image.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

from vessel_core.cases import Case
from vessel_core.io import LoadError, estimate_fov, read_image

# Fundus colour (RGB, 0..1) and how much a vessel darkens each channel at most:
# vessels absorb green most, so the green channel carries the contrast.
_FUNDUS_RGB = np.array([0.84, 0.40, 0.17])
_VESSEL_DARKENING = np.array([0.22, 0.55, 0.35])
_DISC_RGB = np.array([0.98, 0.90, 0.62])


def synthetic_cases(
    n: int = 4, seed: int = 0, size: tuple[int, int] = (384, 384)
) -> list[Case]:
    """Deterministic synthetic fundus-like cases with their exact vessel masks.

    Parameters
    ----------
    n : int, default=4
        How many cases.
    seed : int, default=0
        Seed; the same ``(n, seed, size)`` gives identical arrays. Case ``i`` only
        depends on ``(seed, i, size)``, so the first cases do not change with ``n``.
    size : (int, int), default=(384, 384)
        (H, W) of each image; each side at least 64.

    Returns
    -------
    list of Case
        Ids ``"synth-01"``, ``"synth-02"``...; the first ``round(0.75 * n)``
        (at least 1, and at most ``n - 1`` when ``n >= 2``) are ``"train"``, the
        rest ``"test"``. Each has an exact vessel mask (inside the FOV) and a
        circular FOV mask (``fov_estimated=False``); ``dataset="synthetic"``.

    Notes
    -----
    Each image is a reddish-orange disc on a dark border, lit unevenly (a
    gradient and a fall-off towards the rim), with a bright optic disc and a
    darker macula. Four arcades, each a vein and a narrower, lighter artery,
    leave the disc, curve (the temporal ones round the macula), branch and
    taper. A vessel darkens mostly the green channel, less for thin vessels; the
    edge is anti-aliased over one pixel, and Gaussian noise is added. Vessels
    are drawn, thickest first, until they cover about 9-13% of the FOV. The
    mask is the set of pixels within the vessel's half-width of its centre
    line, so it is exact by construction. It is a test picture, not a model of
    the retina: vessels cross without the patterns of real crossings, and there
    are no lesions and no central reflex.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    height, width = (int(s) for s in size)
    if height < 64 or width < 64:
        raise ValueError(f"size must be at least (64, 64), got {tuple(size)}")

    n_train = n if n < 2 else min(n - 1, max(1, round(0.75 * n)))
    cases = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, height, width])
        image, vessel, fov = _synthetic_fundus(rng, height, width)
        case_id = f"synth-{i + 1:02d}"
        source = f"builtin:synthetic(seed={seed}, size={height}x{width})#{i + 1}"
        cases.append(
            Case(
                id=case_id,
                image=image,
                fov_mask=fov,
                vessel_mask=vessel,
                split="train" if i < n_train else "test",
                fov_estimated=False,
                sources={"image": source, "vessel_mask": source, "fov_mask": source},
                dataset="synthetic",
            )
        )
    return cases


def retina_case() -> Case:
    """scikit-image's bundled fundus photograph, as a case without a vessel mask.

    Returns
    -------
    Case
        Id ``"retina"``, split ``"test"``, the (1411, 1411) RGB photograph at
        its own size, ``vessel_mask=None`` and an estimated FOV mask
        (``fov_estimated=True``); ``dataset="builtin"``.

    Raises
    ------
    LoadError
        The photograph is not installed with scikit-image (nothing is downloaded).

    Notes
    -----
    ``skimage.data.retina()`` reads ``retina.jpg`` from scikit-image's own data
    folder, offline. It is a photograph from Wikimedia Commons (Häggström, M.,
    public domain).
    """
    image, source = _retina_image()
    image = image.copy()
    return Case(
        id="retina",
        image=image,
        fov_mask=estimate_fov(image),
        vessel_mask=None,
        split="test",
        fov_estimated=True,
        sources={"image": source, "vessel_mask": "", "fov_mask": "estimated"},
        dataset="builtin",
    )


def builtin_sample() -> list[Case]:
    """The built-in sample: `synthetic_cases()` followed by `retina_case()`."""
    return [*synthetic_cases(), retina_case()]


@functools.lru_cache(maxsize=1)
def _retina_image() -> tuple[NDArray[np.uint8], str]:
    """The bundled photograph (read once), and where it came from."""
    from pathlib import Path

    import skimage.data

    path = Path(skimage.data.__file__).parent / "retina.jpg"
    if path.is_file():
        image = read_image(path)
        image.flags.writeable = False
        return image, f"builtin:skimage.data/{path.name}"
    try:
        image = np.ascontiguousarray(skimage.data.retina(), dtype=np.uint8)
    except Exception as exc:  # pooch missing, no network: say what is missing
        raise LoadError(
            f"{str(path)!r}: scikit-image's retina photograph is not installed and "
            f"cannot be fetched offline ({exc})"
        ) from None
    image.flags.writeable = False
    return image, "builtin:skimage.data.retina()"


# --------------------------------------------------------------------------------
# Drawing one synthetic fundus


def _synthetic_fundus(
    rng: np.random.Generator, height: int, width: int
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.bool_]]:
    """One image, its vessel mask and its FOV mask."""
    yy, xx = np.ogrid[0:height, 0:width]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    radius = 0.46 * min(height, width)
    rr = np.hypot(yy - cy, xx - cx)
    fov = rr <= radius

    # optic disc on one side, macula 2.5 disc diameters towards the other
    side = rng.choice([-1.0, 1.0])
    disc_r = radius * rng.uniform(0.09, 0.11)
    disc = (cy + radius * rng.uniform(-0.08, 0.08), cx + side * radius * 0.45)
    macula = (disc[0] + radius * 0.05, disc[1] - side * 5.0 * disc_r)

    vessel, darkness = _vessel_trees(rng, fov, disc, disc_r, macula)

    # uneven illumination: a random gradient and a fall-off towards the rim
    angle = rng.uniform(0, 2 * math.pi)
    gradient = ((yy - cy) * math.sin(angle) + (xx - cx) * math.cos(angle)) / radius
    light = (1.0 + 0.18 * gradient) * (1.0 - 0.35 * (rr / radius) ** 3)
    macula_d2 = (yy - macula[0]) ** 2 + (xx - macula[1]) ** 2
    light *= 1.0 - 0.25 * np.exp(-macula_d2 / (2 * (1.6 * disc_r) ** 2))

    colour = (_FUNDUS_RGB * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    rgb = light[..., None] * colour
    disc_d2 = (yy - disc[0]) ** 2 + (xx - disc[1]) ** 2
    glow = np.exp(-((disc_d2 / disc_r**2) ** 2))[..., None]  # a flat-topped disc
    rgb = rgb * (1 - glow) + _DISC_RGB.astype(np.float32) * glow
    rgb *= 1.0 - darkness[..., None] * _VESSEL_DARKENING.astype(np.float32)

    # sensor noise inside, a dark border with a little noise of its own outside
    noise = rng.standard_normal(rgb.shape, dtype=np.float32)
    rgb = np.where(fov[..., None], rgb * 255 + 3.5 * noise, 4.0 + 1.5 * noise)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, vessel & fov, fov


def _vessel_trees(rng, fov, disc, disc_r, macula):
    """Grow vessel trees from the disc until they cover 9-13% of the FOV.

    Returns the exact mask and a darkness map in 0..1 (anti-aliased, weaker for
    thin vessels and for arteries).
    """
    height, width = fov.shape
    scale = min(height, width) / 384.0
    target = rng.uniform(0.09, 0.13) * fov.sum()
    vessels = _grow_vessels(rng, fov, disc, macula, scale, 3.0 * target)

    # draw thick vessels first (each after its parent); stop at the target cover
    mask = np.zeros((height, width), bool)
    darkness = np.zeros((height, width), np.float32)
    covered = 0
    for points, radii, strength in vessels:
        covered += _draw_vessel(mask, darkness, points, radii, strength, scale)
        if covered >= target:
            break
    return mask, darkness


def _grow_vessels(rng, fov, disc, macula, scale, enough):
    """Centre lines ``(points (n, 2), radii (n,), strength)``, thickest first.

    Growth stops once the centre lines' summed area (overlaps counted twice)
    reaches ``enough`` pixels.
    """
    height, width = fov.shape
    thick = max(scale, 0.6)  # widths shrink with the image, lengths more so
    toward_macula = math.atan2(macula[0] - disc[0], macula[1] - disc[1])
    queue = []

    # four arcades, each a vein (wide, dark) beside an artery (narrower, lighter):
    # the temporal ones arch round the macula, the nasal ones run straighter
    for up in (-1.0, 1.0):
        for strength, width_factor, offset in ((1.0, 1.0, 0.0), (0.75, 0.75, 0.25)):
            temporal = toward_macula + up * (rng.uniform(0.9, 1.15) + offset)
            queue.append(
                (disc[0], disc[1], temporal, 2.9 * thick * width_factor,
                 rng.uniform(320, 380) * scale, -up * rng.uniform(1.3, 1.8), strength)
            )  # fmt: skip
            nasal = toward_macula + math.pi - up * (rng.uniform(0.5, 0.8) + offset)
            queue.append(
                (disc[0], disc[1], nasal, 2.3 * thick * width_factor,
                 rng.uniform(200, 260) * scale, rng.normal(0.0, 0.3), strength)
            )  # fmt: skip

    vessels = []
    area = 0.0
    while queue and area < enough:
        y, x, heading, r0, length, bend, strength = queue.pop(0)
        points, radii = [], []
        turn = 0.0
        next_branch = rng.uniform(15, 35) * scale
        branch_side = rng.choice([-1.0, 1.0])
        n_steps = max(1, int(length))
        wobble = rng.normal(0.0, 0.003, n_steps)
        for k in range(n_steps):
            # tapers to 40%, never below a 1-pixel-wide vessel
            r = max(0.5, r0 * (1.0 - 0.6 * k / n_steps))
            if not (0 <= y < height and 0 <= x < width):
                break
            if not fov[int(y), int(x)]:
                break
            points.append((y, x))
            radii.append(r)
            area += 2.0 * r
            if k >= next_branch and r > max(0.9, 0.7 * thick):
                child_r = r * rng.uniform(0.45, 0.75)
                child_len = (n_steps - k) * rng.uniform(0.4, 0.9) + 20 * scale
                angle = branch_side * rng.uniform(0.5, 1.1)
                queue.append(
                    (y, x, heading + angle, child_r, child_len,
                     rng.normal(0.0, 0.6), strength)
                )  # fmt: skip
                branch_side = -branch_side
                next_branch = k + rng.uniform(12, 35) * scale
            turn = 0.96 * turn + wobble[k]
            heading += turn + bend / n_steps
            y += math.sin(heading)
            x += math.cos(heading)
        if points:
            vessels.append((np.array(points), np.array(radii), strength))
    # thickest first, so that stopping early drops the thinnest branches
    order = sorted(range(len(vessels)), key=lambda i: -vessels[i][1][0])
    return [vessels[i] for i in order]


def _draw_vessel(mask, darkness, points, radii, strength, scale) -> int:
    """Draw one centre line; returns how many mask pixels it added."""
    height, width = mask.shape
    reach = int(math.ceil(radii.max())) + 1
    oy, ox = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    base = np.floor(points).astype(int)
    yy = base[:, 0, None] + oy.ravel()[None]
    xx = base[:, 1, None] + ox.ravel()[None]
    d = np.hypot(yy - points[:, 0, None], xx - points[:, 1, None])
    r = radii[:, None]
    soft = np.clip(r + 0.5 - d, 0.0, 1.0)
    soft *= strength * (0.45 + 0.55 * np.minimum(1.0, r / (2.5 * max(scale, 0.6))))
    keep = (soft > 0) & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    inside = keep & (d <= r)

    before = int(mask.sum())
    mask[yy[inside], xx[inside]] = True
    np.maximum.at(darkness, (yy[keep], xx[keep]), soft[keep].astype(np.float32))
    return int(mask.sum()) - before
