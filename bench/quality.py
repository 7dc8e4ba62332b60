"""Quality on DRIVE: train on the 20 training cases, score the 20 test cases.

Scores are inside the FOV against the first observer. Each row of the table is one
function ``row(train, test) -> (name, metrics)``; add a row by writing one more
and naming it in `ROWS`::

    python bench/quality.py                     # every row, markdown table
    python bench/quality.py --rows knn classic  # some rows
    python bench/quality.py --json out.json     # also the figures as JSON

``metrics`` holds ``mean`` and ``pooled`` score dicts (from
`vessel_core.metrics.evaluate`), ``seconds_per_image`` and free ``notes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vessel_core import io, metrics, sampling, store  # noqa: E402
from vessel_core.cases import Case, split_cases  # noqa: E402
from vessel_core.classic import ClassicFilters  # noqa: E402
from vessel_core.knn import KNNModel  # noqa: E402
from vessel_core.resnet import ResNetUNet  # noqa: E402

logger = logging.getLogger("bench.quality")

DEFAULT_DRIVE = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "DRIVE"
)
COLUMNS = ("auc_roc", "f1", "accuracy", "sensitivity", "specificity")

Row = Callable[[Sequence[Case], Sequence[Case]], tuple[str, dict[str, Any]]]


def score_model(model, test: Sequence[Case], name: str) -> dict[str, Any]:
    """Predict every test case, time it, and score it at the model's threshold."""
    maps, seconds = [], []
    for case in test:
        started = time.perf_counter()
        maps.append(model.predict_proba(case))
        seconds.append(time.perf_counter() - started)
    report = metrics.evaluate(test, maps, model.threshold)
    logger.info(
        "%s: pooled AUC %.4f, F1 %.4f",
        name,
        report.pooled["auc_roc"],
        report.pooled["f1"],
    )
    return {
        "mean": report.mean,
        "pooled": report.pooled,
        "threshold": float(model.threshold),
        "seconds_per_image": float(np.mean(seconds)),
    }


def cv_summary(meta) -> str:
    """The CV curve in a few figures: k=31 (the old edge), the best and chosen k."""
    means = {int(k): v for k, v in meta["cv_mean_scores"].items()}
    best, chosen = meta["cv_best_k"], meta["chosen_k"]
    at31 = f"k=31 {means[31]:.4f}, " if 31 in means else ""
    return (
        f"CV mean AUC: {at31}best k={best} {means[best]:.4f} "
        f"(standard error {meta['cv_standard_error']:.4f}), "
        f"chosen k={chosen} {means[chosen]:.4f}"
    )


def knn_best(train, test):
    """The best KNN configuration found: the model's defaults.

    Stage 1: the pixel's preprocessed value and 9 filters, k by grouped CV up
    to 31, 10,000 training pixels from the default near-vessel undersampling,
    the screened search, the vote map smoothed (sigma 0.7). Stage 2 (context):
    the same features plus 9 features of the first stage's map, 10,000 samples.
    """
    model = KNNModel()
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started
    out = score_model(model, test, "knn")
    context = model.meta["context"]
    out["notes"] = (
        f"two stages: pixel value + 9 filters, then + 9 context features of the "
        f"first map; k={model.meta['chosen_k']} by grouped CV, "
        f"{model.meta['n_train_samples']} + {context['n_train_samples']} samples, "
        f"screens answer {100 * model.meta['screen']['coverage']:.1f}% / "
        f"{100 * context['screen']['coverage']:.1f}% of pixels; "
        f"fit {fit_seconds:.0f} s; {cv_summary(model.meta)}"
    )
    return "KNN, best (defaults: two stages, per pixel)", out


def knn_one_stage(train, test):
    """The best configuration without its context stage: one pixel classifier."""
    model = KNNModel(context=False)
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started
    out = score_model(model, test, "knn one stage")
    out["notes"] = (
        f"pixel value + 9 filters, k={model.meta['chosen_k']} by grouped CV, "
        f"{model.meta['n_train_samples']} samples, screen answers "
        f"{100 * model.meta['screen']['coverage']:.1f}% of pixels; "
        f"fit {fit_seconds:.0f} s; {cv_summary(model.meta)}"
    )
    return "KNN, one stage (context=False)", out


def knn_seed_style(train, test):
    """The student project's setting: 3x3 green patch, k=5, block rebuild."""
    model = KNNModel(
        features="patch",
        patch_size=3,
        n_neighbors=5,
        rebuild="block",
        smooth_sigma=0.0,
        context=False,
    )
    model.fit(train)
    block = score_model(model, test, "seed block")

    # the same fitted classifier, rebuilt per pixel
    per_pixel = KNNModel(**{**model.settings, "rebuild": "pixel"})
    per_pixel.classifier, per_pixel.threshold = model.classifier, model.threshold
    per_pixel.meta = dict(model.meta)
    pixel = score_model(per_pixel, test, "seed pixel")

    # accuracy on balanced patches: the test images undersampled like training
    selection = sampling.select(test, "near_vessels", seed=0)
    hits = total = 0
    from vessel_core import features as ft

    for case in test:
        chosen = selection.per_case[case.id]
        planes = ft.compute_planes(case, settings=model.feature_settings)
        votes = model.classifier.predict(planes.at(chosen.coords))
        hits += int(np.count_nonzero(votes == chosen.labels))
        total += len(chosen.labels)
    balanced = hits / total
    totals = selection.totals()
    share = totals["vessel"] / (totals["vessel"] + totals["background"])
    note = (
        f"accuracy on the undersampled test pixels ({100 * share:.0f}% vessel): "
        f"{balanced:.4f}"
    )
    block["notes"] = f"one decision per 3x3 block; {note}"
    block["balanced_accuracy_on_patches"] = balanced
    pixel["notes"] = "same classifier, one decision per pixel"
    return [
        ("KNN, seed-style (3x3 green, k=5, block)", block),
        ("KNN, seed-style, per pixel", pixel),
    ]


def classic(train, test):
    """Multi-scale ridge filters with a logistic fit (no learning of features)."""
    model = ClassicFilters()
    model.fit(train)
    out = score_model(model, test, "classic")
    out["notes"] = "multi-scale ridge responses, logistic fit on training pixels"
    return "Classic filters (baseline)", out


def resnet(train, test, model_dir: Path | None = None, flips=(1,), precisions=(None,)):
    """The ResNet34 U-Net: a saved model folder if given, else a quick-preset fit.

    One row per CPU precision (None: the model's own) and number of mirrored
    copies averaged (``flips``), same network.
    """
    if model_dir is not None:
        model = store.load_model(model_dir)
        how = f"saved model {model_dir.name}"
    else:
        model = ResNetUNet(preset="quick")
        started = time.perf_counter()
        model.fit(train)
        how = f"quick preset trained here in {time.perf_counter() - started:.0f} s"
    meta = model.meta
    own = model.settings["precision"]
    rows = []
    for precision in precisions:
        exact = model.with_prediction(precision=precision or own)
        with warnings.catch_warnings(record=True) as fell_back:
            warnings.simplefilter("always")
            exact.prepare()  # the network's set-up is not counted in seconds/image
        for n in flips:
            out = score_model(exact.with_prediction(flips=n), test, "resnet34")
            start = "ImageNet" if meta.get("pretrained") else "random"
            if meta.get("started_from"):
                start = f"{meta['started_from'].get('name')}'s weights as"
            out["notes"] = (
                f"{how}; {meta.get('epochs_run')} epochs, {start} start"
            ) + "".join(f"; {w.message}" for w in fell_back)
            name = f"ResNet34 U-Net ({meta['settings']['preset']}"
            name += f", {exact.settings['precision']}" if precisions != (None,) else ""
            name += f", {n} flips averaged)" if n > 1 else ")"
            rows.append((name, out))
    return rows


def second_observer(train, test, drive: Path):
    """The second human observer scored like a model (binary, no AUC meaning)."""
    masks = io.second_observer(drive)
    cases = [c for c in test if c.id in masks]
    report = metrics.evaluate(cases, [masks[c.id] for c in cases], 0.5)
    out = {"mean": report.mean, "pooled": report.pooled, "seconds_per_image": 0.0}
    out["notes"] = "human reference; binary, so its AUC is its balanced accuracy"
    return "Second human observer", out


ROWS: dict[str, Row] = {
    "knn": knn_best,
    "knn1": knn_one_stage,
    "seed": knn_seed_style,
    "classic": classic,
    "resnet": resnet,
    "observer": second_observer,
}


def markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The rows as a markdown table (mean / pooled for each figure)."""
    head = (
        ["configuration"]
        + [f"{c} mean / pooled" for c in COLUMNS]
        + ["s/image", "notes"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        cells = [name]
        for c in COLUMNS:
            cells.append(f"{m['mean'][c]:.4f} / {m['pooled'][c]:.4f}")
        cells.append(f"{m['seconds_per_image']:.2f}")
        cells.append(m.get("notes", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--drive",
        type=Path,
        default=Path(os.environ.get("VESSEL_DRIVE_DIR", DEFAULT_DRIVE)),
        help="DRIVE folder (default: ../shared/data/DRIVE or $VESSEL_DRIVE_DIR)",
    )
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument(
        "--test-cases", type=int, default=0, help="score only the first N test cases"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--resnet-model",
        type=Path,
        help="score this saved ResNet model folder instead of training the quick "
        "preset (about 15 minutes) for the 'resnet' row",
    )
    parser.add_argument(
        "--resnet-flips",
        type=int,
        nargs="+",
        choices=[1, 2, 4, 8],
        default=[1],
        help="for the 'resnet' row: mirrored copies averaged (one row each)",
    )
    parser.add_argument(
        "--resnet-precision",
        nargs="+",
        choices=["int8", "float32"],
        help="for the 'resnet' row: CPU precisions to predict in (one row each; "
        "default: the model's own)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    found = io.discover(args.drive)
    train, test = split_cases(found.cases, "train"), split_cases(found.cases, "test")
    if args.test_cases:
        test = test[: args.test_cases]
    print(
        f"DRIVE: {len(train)} training cases, {len(test)} test cases (first observer)"
    )

    rows: list[tuple[str, dict[str, Any]]] = []
    for key in args.rows:
        started = time.perf_counter()
        if key == "resnet":
            result = resnet(
                train,
                test,
                args.resnet_model,
                args.resnet_flips,
                tuple(args.resnet_precision or [None]),
            )
        elif key == "observer":
            result = second_observer(train, test, args.drive)
        else:
            result = ROWS[key](train, test)
        rows.extend(result if isinstance(result, list) else [result])
        print(f"row {key!r}: {time.perf_counter() - started:.0f} s", flush=True)

    print()
    print(markdown(rows))
    if args.json:
        args.json.write_text(
            json.dumps({name: m for name, m in rows}, indent=2, default=float)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
