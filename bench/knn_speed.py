"""KNN prediction speed on DRIVE: the screened search against scikit-learn's.

Fits the best KNN configuration on DRIVE's 20 training cases, then for the first
test images times, on every FOV pixel:

* the features (preprocessing, filter bank, gathering the rows);
* `vessel_core.knn.KNNClassifier.predict` (screened search);
* `sklearn.neighbors.KNeighborsClassifier(n_jobs=-1).predict`, fitted on the same
  samples and features with the same k (its default ``algorithm="auto"``, and
  ``algorithm="brute"``, the faster of the two here);
* the whole `KNNModel.predict_proba` (features, search, smoothing);

and prints the times, the speed-up, the share of pixel labels that agree and the
AUC of both vote maps against the first observer::

    python bench/knn_speed.py [--images 2] [--drive PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vessel_core import features as ft  # noqa: E402
from vessel_core import io, metrics  # noqa: E402
from vessel_core.cases import split_cases  # noqa: E402
from vessel_core.knn import KNNModel  # noqa: E402

DEFAULT_DRIVE = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "DRIVE"
)


def best_model(train) -> KNNModel:
    """The configuration of bench/quality.py's best KNN row (the model defaults;
    the threshold fitted on 2 cases only, to save time)."""
    return KNNModel(threshold_cases=2).fit(train)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--drive",
        type=Path,
        default=Path(os.environ.get("VESSEL_DRIVE_DIR", DEFAULT_DRIVE)),
    )
    parser.add_argument("--images", type=int, default=2, help="test images to time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from sklearn.neighbors import KNeighborsClassifier

    found = io.discover(args.drive)
    train, test = split_cases(found.cases, "train"), split_cases(found.cases, "test")
    started = time.perf_counter()
    model = best_model(train)
    clf = model.classifier
    print(
        f"fitted in {time.perf_counter() - started:.0f} s: k={clf.n_neighbors}, "
        f"{len(clf._X)} samples x {clf.n_features_in_} features, screen band "
        f"({clf.screen_low_:.3f}, {clf.screen_high_:.3f}), calibration coverage "
        f"{clf.screen_stats_['coverage']:.4f}"
    )
    reference = KNeighborsClassifier(n_neighbors=clf.n_neighbors, n_jobs=-1)
    reference.fit(clf._X, clf.classes_[clf._y])
    # 'auto' takes a KD-tree up to 15 features; brute force is its faster rival here
    brute = KNeighborsClassifier(
        n_neighbors=clf.n_neighbors, n_jobs=-1, algorithm="brute"
    ).fit(clf._X, clf.classes_[clf._y])
    print(f"scikit-learn's 'auto' search here: {reference._fit_method}")

    rows = []
    for case in test[: args.images]:
        t0 = time.perf_counter()
        planes = ft.compute_planes(case, settings=model.feature_settings)
        coords = np.argwhere(case.fov_mask)
        X = planes.at(coords)
        t_features = time.perf_counter() - t0

        t0 = time.perf_counter()
        proba = clf.predict_proba(X)
        ours = clf.classes_[np.argmax(proba, axis=1)]
        t_ours = time.perf_counter() - t0

        t0 = time.perf_counter()
        theirs = reference.predict(X)
        t_sklearn = time.perf_counter() - t0
        ref_proba = reference.predict_proba(X)[:, 1]

        t0 = time.perf_counter()
        brute.predict(X)
        t_brute = time.perf_counter() - t0

        t0 = time.perf_counter()
        model.predict_proba(case)
        t_model = time.perf_counter() - t0

        truth = case.vessel_mask[coords[:, 0], coords[:, 1]]
        auc_ours = metrics.score(truth, proba[:, 1])["auc_roc"]
        auc_ref = metrics.score(truth, ref_proba)["auc_roc"]
        rows.append(
            (
                case.id,
                len(X),
                clf.screened_share(X),
                t_features,
                t_ours,
                t_sklearn,
                t_brute,
                t_model,
                float(np.mean(ours == theirs)),
                auc_ours,
                auc_ref,
            )
        )

    print()
    print(
        "| image | FOV pixels | screened out | features s | ours s | sklearn s | "
        "speed-up | sklearn brute s | speed-up | whole predict_proba s | "
        "labels equal | AUC ours / sklearn |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cid, n, share, tf, to, ts, tb, tm, agree, a1, a2 in rows:
        print(
            f"| {cid} | {n} | {100 * share:.1f}% | {tf:.3f} | {to:.3f} | {ts:.2f} | "
            f"{ts / to:.1f}x | {tb:.2f} | {tb / to:.1f}x | {tm:.3f} | "
            f"{100 * agree:.3f}% | {a1:.4f} / {a2:.4f} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPU cores, 1-minute load average {load:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
