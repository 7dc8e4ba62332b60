"""Undersampling: exact counts, ratios, determinism and the overlay."""

from __future__ import annotations

import numpy as np
import pytest

from vessel_core.cases import Case
from vessel_core.sampling import (
    OVERLAY_COLOURS,
    overlay,
    select,
    select_case,
    strategy_settings,
)


def _case(cid: str = "a", size: int = 40) -> Case:
    """A 40x40 case: full FOV but a 2-pixel border, one vertical vessel 4 wide."""
    fov = np.zeros((size, size), bool)
    fov[2:-2, 2:-2] = True
    vessel = np.zeros_like(fov)
    vessel[:, 10:14] = True
    image = np.full((size, size, 3), 120, np.uint8)
    return Case(cid, image, fov, vessel)


def test_all_keeps_every_fov_pixel():
    case = _case()
    sel = select_case(case, "all")
    assert sel.before == {"vessel": 36 * 4, "background": 36 * 36 - 36 * 4}
    assert sel.after == sel.before
    assert len(sel.coords) == case.fov_mask.sum()
    assert case.fov_mask[sel.coords[:, 0], sel.coords[:, 1]].all()


def test_random_drops_the_asked_fraction_and_labels_match():
    case = _case()
    sel = select_case(case, "random", drop_fraction=0.75)
    n_bg = 36 * 32
    assert sel.after["vessel"] == 144
    assert sel.after["background"] == round(n_bg * 0.25)
    truth = case.vessel_mask[sel.coords[:, 0], sel.coords[:, 1]]
    np.testing.assert_array_equal(sel.labels, truth)
    assert sel.labels.sum() == 144


def test_near_vessels_takes_its_share_from_the_band():
    case = _case()
    sel = select_case(
        case, "near_vessels", drop_fraction=0.5, band_width=3, near_share=0.8
    )
    kept_bg = sel.coords[~sel.labels]
    n_keep = round(36 * 32 * 0.5)
    assert len(kept_bg) == n_keep
    # columns 7..9 and 14..16 are within 3 px of the vessel (6 columns x 36 rows)
    near = np.abs(kept_bg[:, 1] - 11.5) <= 4.5
    assert near.sum() == min(round(n_keep * 0.8), 6 * 36)


def test_ratio_holds_under_the_cap():
    case = _case()
    sel = select_case(case, "ratio", background_per_vessel=2.0, max_per_case=300)
    assert sel.after["vessel"] + sel.after["background"] == 300
    assert sel.after == {"vessel": 100, "background": 200}
    uncapped = select_case(
        case, "ratio", background_per_vessel=2.0, max_per_case=10_000
    )
    assert uncapped.after == {"vessel": 144, "background": 288}


def test_deterministic_and_independent_of_order():
    a, b = _case("a"), _case("b")
    s1 = select([a, b], "random", seed=3)
    s2 = select([b, a], "random", seed=3)
    np.testing.assert_array_equal(s1.per_case["a"].coords, s2.per_case["a"].coords)
    s3 = select([a, b], "random", seed=4)
    assert not np.array_equal(s1.per_case["a"].coords, s3.per_case["a"].coords)


def test_totals_and_skipped_cases():
    a, b = _case("a"), _case("b")
    nomask = Case("c", a.image, a.fov_mask, None)
    sel = select([a, b, nomask], "all")
    assert sel.skipped == ["c"]
    assert sel.totals("after")["vessel"] == 288
    rows = sel.counts_table()
    assert rows[-1]["case"] == "total"
    assert rows[-1]["background_after"] == 2 * 36 * 32


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="unknown undersampling strategy 'nope'"):
        strategy_settings("nope")
    with pytest.raises(ValueError, match="has no setting"):
        strategy_settings("random", band_width=3)
    with pytest.raises(ValueError, match=r"drop_fraction must be in \[0, 1\], got 1.5"):
        strategy_settings("random", drop_fraction=1.5)


def test_overlay_colours_the_four_classes():
    case = _case()
    sel = select_case(case, "random", drop_fraction=0.5)
    img = overlay(case, sel)
    assert img.shape == case.image.shape
    assert tuple(img[5, 11]) == OVERLAY_COLOURS["vessel_kept"]
    kept = sel.coords[~sel.labels][0]
    assert tuple(img[kept[0], kept[1]]) == OVERLAY_COLOURS["background_kept"]
    n_dropped = (img == OVERLAY_COLOURS["background_dropped"]).all(axis=2).sum()
    assert n_dropped == 36 * 32 - sel.after["background"]
    assert not (img == OVERLAY_COLOURS["vessel_dropped"]).all(axis=2).any()


def test_overlay_shows_dropped_vessel_pixels_as_dropped():
    case = _case()
    # one background pixel per vessel pixel under a cap of 100: 50 of the 144
    # vessel pixels are kept, 94 dropped
    sel = select_case(case, "ratio", background_per_vessel=1.0, max_per_case=100)
    assert sel.after["vessel"] == 50
    img = overlay(case, sel)

    def painted(name):
        return (img == OVERLAY_COLOURS[name]).all(axis=2)

    kept_vessel = sel.coords[sel.labels]
    assert painted("vessel_kept")[kept_vessel[:, 0], kept_vessel[:, 1]].all()
    assert painted("vessel_kept").sum() == 50
    assert painted("vessel_dropped").sum() == 144 - 50
    dropped = case.vessel_mask & case.fov_mask & painted("vessel_dropped")
    assert dropped.sum() == 144 - 50
    assert len(set(OVERLAY_COLOURS.values())) == 4


def test_missing_classes_names_a_class_left_out():
    case = _case()
    assert select([case], "random", drop_fraction=0.5).missing_classes() == []
    only_vessel = select([case], "random", drop_fraction=1.0)
    assert only_vessel.missing_classes() == ["background"]
    only_background = select([case], "ratio", background_per_vessel=1.0, max_per_case=1)
    assert only_background.totals("after") == {"vessel": 0, "background": 1}
    assert only_background.missing_classes() == ["vessel"]
