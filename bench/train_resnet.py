"""Train the ResNet34 U-Net on DRIVE's training cases and score DRIVE's test cases.

    python bench/train_resnet.py --preset quick --out models/resnet34-quick

Prints one line per epoch (held-out figures), the wall time, and the test table
(mean over the 20 test cases and pooled pixels, inside the FOV, at the threshold
chosen on the held-out training cases). `bench_row` is the same run as a function
for a comparison bench.

    python bench/train_resnet.py --preset full --snapshot --out /tmp/snap \
        --set checkpoint_dir=runs/resnet34-full/ckpt

scores the best epoch so far of a fit that is still running (or was cut off),
without training (`ResNetUNet.from_checkpoint`): the checkpoint is only read, so
the running fit and its checkpoint are left as they are. With
`--average FILE...` (copies of that checkpoint kept after other epochs) the
model is the mean of those epochs' weights instead; that is how the shipped
`models/resnet34-full` was made from its fit of 50 epochs:

    python bench/train_resnet.py --preset full --snapshot --out models/resnet34-full \
        --set checkpoint_dir=runs/resnet34-full/ckpt \
        --average runs/resnet34-full/epochs/epoch-{40..50}.pt
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vessel_core import io, metrics, store  # noqa: E402
from vessel_core.cases import split_cases, with_masks  # noqa: E402
from vessel_core.progress import log_progress  # noqa: E402
from vessel_core.resnet import ResNetUNet  # noqa: E402

logger = logging.getLogger("train_resnet")

TABLE_KEYS = ("f1", "auc_roc", "sensitivity", "specificity", "accuracy", "auc_pr")


def drive_dir() -> Path:
    """DRIVE's folder: $VESSEL_DRIVE_DIR, else ../shared/data/DRIVE."""
    env = os.environ.get("VESSEL_DRIVE_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "DRIVE"


def bench_row(
    train_cases,
    test_cases,
    preset: str = "quick",
    snapshot: bool = False,
    average=(),
    **settings,
):
    """Train on ``train_cases``, score ``test_cases``: ``(name, figures, model)``.

    With ``snapshot``, the model is the checkpoint in ``settings["checkpoint_dir"]``
    instead of a new fit (with ``average``, the mean of those checkpoint files'
    weights: `ResNetUNet.from_checkpoint`).

    ``figures`` holds the test Report's ``mean`` and ``pooled`` figures, the
    threshold, the training wall time and the prediction seconds per image.
    """
    start = time.perf_counter()
    if snapshot:
        model = ResNetUNet.from_checkpoint(
            settings["checkpoint_dir"],
            train_cases,
            average,
            preset=preset,
            **settings,
        )
    else:
        model = ResNetUNet(preset=preset, **settings)
        model.fit(train_cases, on_progress=log_progress(logger))
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    maps = [model.predict_proba(case) for case in test_cases]
    predict_seconds = (time.perf_counter() - start) / max(len(test_cases), 1)
    report = metrics.evaluate(test_cases, maps, model.threshold)
    figures = {
        "mean": report.mean,
        "pooled": report.pooled,
        "threshold": model.threshold,
        "fit_seconds": fit_seconds,
        "predict_seconds_per_image": predict_seconds,
        "epochs_run": model.meta["epochs_run"],
        "best_epoch": model.meta["best_epoch"],
        "weights": model.meta["weights"],
        "pretrained": model.meta["pretrained"],
    }
    return f"resnet34-{preset}", figures, model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["quick", "full"], default="quick")
    p.add_argument("--out", type=Path, help="save the trained model to this folder")
    p.add_argument("--data", type=Path, default=None, help="DRIVE folder")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting, e.g. --set input=rgb (repeatable)",
    )
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="score the best epoch so far of the checkpoint in checkpoint_dir, "
        "without training and without touching that checkpoint",
    )
    p.add_argument(
        "--average",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="with --snapshot: checkpoint files of the same fit after other "
        "epochs; the model is the mean of their weights",
    )
    args = p.parse_args(argv)
    if args.average and not args.snapshot:
        raise SystemExit("--average needs --snapshot")
    missing = [str(f) for f in args.average if not f.is_file()]
    if missing:
        raise SystemExit(f"--average: no such file: {', '.join(missing)}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%X"
    )

    settings = dict(_parse_setting(text) for text in args.set)
    source = settings.get("checkpoint_dir")
    # settings, the start model and the checkpoint are checked before the data is read
    try:
        ResNetUNet(preset=args.preset, **settings).check_start()
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.snapshot:
        _check_snapshot(source)
    data = args.data or drive_dir()
    try:
        found = io.discover(data)
    except io.LoadError as exc:
        raise SystemExit(f"error: {exc} (give the DRIVE folder with --data)") from None
    train = with_masks(split_cases(found.cases, "train"))
    test = with_masks(split_cases(found.cases, "test"))
    if not train or not test:
        raise SystemExit(
            f"error: {data} holds {len(train)} training and {len(test)} "
            "test case(s) with a vessel mask; both are needed (DRIVE's layout: "
            "training/ and test/)"
        )
    logger.info(
        "%d training and %d test cases; settings %s", len(train), len(test), settings
    )
    try:
        name, figures, model = bench_row(
            train, test, args.preset, args.snapshot, args.average, **settings
        )
    except ValueError as exc:
        if not args.snapshot:
            raise SystemExit(f"error: {exc}") from None
        raise SystemExit(
            f"--snapshot: {exc} (the preset and --set values must be the run's "
            "own); nothing was scored or saved"
        ) from exc
    if args.out:
        folder = store.save_model(model, args.out, overwrite=True)
        logger.info("saved to %s", folder)

    trained = f"trained {figures['fit_seconds'] / 60:.1f} min"
    if args.snapshot:
        trained = f"snapshot of {source}"
    print(
        f"\n{name}: {trained} "
        f"({figures['epochs_run']} epochs, kept {figures['weights']}, "
        f"ImageNet weights: {figures['pretrained']}), threshold "
        f"{figures['threshold']:.3f}, predict "
        f"{figures['predict_seconds_per_image']:.2f} s/image"
    )
    print(f"DRIVE test ({len(test)} cases, inside the FOV)")
    print(f"{'':8s}" + "".join(f"{k:>13s}" for k in TABLE_KEYS))
    for row in ("mean", "pooled"):
        print(f"{row:8s}" + "".join(f"{figures[row][k]:13.4f}" for k in TABLE_KEYS))
    return 0


def _check_snapshot(folder: str | None) -> None:
    """Refuse a snapshot without a checkpoint, before any data is read."""
    from vessel_core._resnet_fit import CHECKPOINT_FILE

    if not folder:
        raise SystemExit("--snapshot needs --set checkpoint_dir=FOLDER")
    source = Path(folder) / CHECKPOINT_FILE
    if not source.is_file():
        raise SystemExit(
            f"--snapshot: {source} does not exist (relative paths start in "
            f"{Path.cwd()})"
        )


def _parse_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    return key, value


if __name__ == "__main__":
    sys.exit(main())
