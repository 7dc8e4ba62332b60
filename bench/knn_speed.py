"""KNN prediction speed on DRIVE: the screened search against scikit-learn's.

Fits the best KNN configuration (two stages: pixel features, then the same
features plus the context of the first stage's map) on DRIVE's 20 training
cases, then for the first test images times, on every FOV pixel:

* the features (preprocessing, filter bank, gathering the rows);
* `vessel_core.knn.KNNClassifier.predict` of both stages (screened search), and
  the context features between them;
* `sklearn.neighbors.KNeighborsClassifier(n_jobs=-1)`, one per stage, fitted on
  the same samples and features with the same k (its default
  ``algorithm="auto"``, and ``algorithm="brute"``, the faster of the two here);
  its second stage reads the context of its own first-stage map;
* the whole `KNNModel.predict_proba` (features, both stages, smoothing);

and prints the times, the speed-up, the share of pixel labels that agree (per
stage, both searches reading the same rows; and end to end, where
scikit-learn's second stage reads the context of its own first map) and the
AUC of both final vote maps against the first observer::

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
    stages = [model.classifier]
    if model.context_classifier is not None:
        stages.append(model.context_classifier)
    print(f"fitted in {time.perf_counter() - started:.0f} s")
    for i, clf in enumerate(stages, 1):
        print(
            f"stage {i}: k={clf.n_neighbors}, {len(clf._X)} samples x "
            f"{clf.n_features_in_} features, screen band ({clf.screen_low_:.3f}, "
            f"{clf.screen_high_:.3f}), calibration coverage "
            f"{clf.screen_stats_['coverage']:.4f}"
        )

    def reference(clf, algorithm="auto"):
        knn = KNeighborsClassifier(
            n_neighbors=clf.n_neighbors, n_jobs=-1, algorithm=algorithm
        )
        return knn.fit(clf._X, clf.classes_[clf._y])

    auto = [reference(clf) for clf in stages]
    brute = [reference(clf, "brute") for clf in stages]
    print(
        "scikit-learn's 'auto' search here: "
        + ", ".join(f"stage {i} {r._fit_method}" for i, r in enumerate(auto, 1))
    )

    def context_rows(votes, planes, coords, X):
        """The second stage's rows from first-stage votes (the context of the map)."""
        first = model.vote_map(votes, coords, planes.fov_mask)
        context = ft.context_planes(
            first, planes.fov_mask, model.settings["context_weight"]
        )
        return np.hstack([X, context[coords[:, 0], coords[:, 1]]])

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0

    table = []
    for case in test[: args.images]:
        t0 = time.perf_counter()
        planes = ft.compute_planes(case, settings=model.feature_settings)
        coords = np.argwhere(case.fov_mask)
        X = planes.at(coords)
        t_features = time.perf_counter() - t0

        # every stage on the same rows: ours, scikit-learn's auto and brute
        rows, seconds, agree, shares = [X], [0.0, 0.0, 0.0], [], []
        ours = np.zeros(len(X))  # the latest stage's votes
        for i, clf in enumerate(stages):
            if i:
                R, t = timed(context_rows, ours, planes, coords, X)
                rows.append(R)
                seconds = [s + t for s in seconds]  # the context costs all three
            R = rows[i]
            proba, t_ours = timed(clf.predict_proba, R)
            ours = proba[:, 1]
            theirs, t_auto = timed(auto[i].predict_proba, R)
            _, t_brute = timed(brute[i].predict_proba, R)
            seconds = [seconds[0] + t_ours, seconds[1] + t_auto, seconds[2] + t_brute]
            agree.append(float(np.mean((ours > 0.5) == (theirs[:, 1] > 0.5))))
            shares.append(clf.screened_share(R))

        # end to end: scikit-learn's second stage reads its own first map
        reference = auto[0].predict_proba(X)[:, 1]
        for i in range(1, len(stages)):
            R = context_rows(reference, planes, coords, X)
            reference = auto[i].predict_proba(R)[:, 1]

        _, t_model = timed(model.predict_proba, case)
        truth = case.vessel_mask[coords[:, 0], coords[:, 1]]
        table.append(
            (
                case.id,
                len(X),
                " / ".join(f"{100 * share:.1f}%" for share in shares),
                t_features,
                *seconds,
                t_model,
                " / ".join(f"{100 * a:.2f}%" for a in agree),
                float(np.mean((ours > 0.5) == (reference > 0.5))),
                metrics.score(truth, ours)["auc_roc"],
                metrics.score(truth, reference)["auc_roc"],
            )
        )

    print()
    print(
        "| image | FOV pixels | screened out (per stage) | features s | "
        "ours s (search + context) | sklearn s | speed-up | sklearn brute s | "
        "speed-up | whole predict_proba s | labels equal per stage (same rows) | "
        "labels equal end to end | AUC ours / sklearn end to end |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cid, n, share, tf, to, ts, tb, tm, agree, whole, a1, a2 in table:
        print(
            f"| {cid} | {n} | {share} | {tf:.3f} | {to:.3f} | {ts:.2f} | "
            f"{ts / to:.1f}x | {tb:.2f} | {tb / to:.1f}x | {tm:.3f} | {agree} | "
            f"{100 * whole:.2f}% | {a1:.4f} / {a2:.4f} |"
        )
    print(
        "\nPer stage, both searches read the same rows (the second stage's context "
        "from our first map);\nend to end, scikit-learn's second stage reads the "
        "context of its own first map (exact votes\nwhere ours holds the screen's "
        "estimates), so labels differ a little more there."
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPU cores, 1-minute load average {load:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
