"""The command line: inspect a dataset, train a model, evaluate, predict.

::

    python -m vessel_core inspect DATA [--json FILE]
    python -m vessel_core evaluate --data DATA --pred DIR [--threshold T]
                                   [--split test|train|all] [--json FILE]
    python -m vessel_core evaluate --data DATA --model models/NAME [--threshold T]
                                   [--split test|train|all] [--json FILE]
    python -m vessel_core train KIND --data DATA --out models/NAME [--split train]
                                [--seed 0] [--strategy S --sampling KEY=VALUE ...]
                                [model settings...]
    python -m vessel_core predict --model models/NAME IMAGE_OR_DIR... --out DIR
                                  [--threshold T]

Results go to stdout, progress and notes to stderr through `logging` (``-q`` keeps
only warnings, ``-v`` adds debug messages). ``--json -`` writes the JSON to stdout
instead of the table. A dataset or model that cannot be read ends the command with
one line on stderr and exit status 2; Ctrl-C during ``train`` stops the model at its
next check and saves the best it has so far (a second Ctrl-C aborts, saving nothing).
``predict`` predicts every image it can read and lists the files it could not
(exit status 1 when there were any).

``train KIND --help`` lists the settings of that kind, generated from its
``default_settings()``: ``max_depth`` becomes ``--max-depth``, a bool ``--flag`` /
``--no-flag``, a list or tuple a comma-separated value.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vessel_core import io as vio
from vessel_core import metrics, store
from vessel_core.cases import Case, split_cases, with_masks
from vessel_core.progress import StopFlag, log_progress
from vessel_core.resnet import ResNetUNet

logger = logging.getLogger("vessel_core.cli")

SPLIT_CHOICES = ("train", "test", "all")
_GREY_TOLERANCE = 16
_IMAGE_FORMATS = ("TIFF", "GIF", "PNG", "JPEG", "BMP", "PPM")
# train's own options; a model setting with one of these names gets a --model- prefix
_TRAIN_OPTIONS = {"data", "out", "split", "seed", "strategy", "sampling", "help"}
# the prediction settings the command line can change (ResNet models)
PREDICTION_OPTIONS = ("precision", "flips")
_TABLE_KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "mcc",
    "auc_roc",
    "auc_pr",
)


# ---------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit status.

    Returns 0 on success, 2 for a bad dataset, model or argument (one line on
    stderr), 130 when training was aborted by a second Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_train_class(argv))
    except (ValueError, ImportError) as exc:
        _print_error(exc)
        return 2
    args = parser.parse_args(argv)

    with _logging_to_stderr(args.quiet, args.verbose):
        try:
            return int(args.run(args) or 0)
        except (
            vio.LoadError,
            store.ModelFolderError,
            ValueError,
            OSError,
            ImportError,
        ) as exc:
            logger.debug("error", exc_info=True)
            _print_error(exc)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted; nothing was saved", file=sys.stderr)
            return 130


def _print_error(exc: BaseException) -> None:
    """One line on stderr: the message with its own line breaks folded."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"error: {text or type(exc).__name__}", file=sys.stderr)


class _logging_to_stderr:
    """Route log records and warnings to the current stderr for one command."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.level = (
            logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
        )

    def __enter__(self) -> None:
        root = logging.getLogger()
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.old_level = root.level
        root.addHandler(self.handler)
        root.setLevel(self.level)
        logging.captureWarnings(True)
        # one line per warning, without the source line
        self.old_format = warnings.formatwarning
        warnings.formatwarning = lambda message, category, *_a, **_k: (
            f"{category.__name__}: {message}"
        )

    def __exit__(self, *exc_info: Any) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.old_level)
        logging.captureWarnings(False)
        warnings.formatwarning = self.old_format


# ---------------------------------------------------------------------------
# Parser


def build_parser(model_cls: type | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``model_cls`` adds its settings to ``train``."""
    parser = argparse.ArgumentParser(
        prog="python -m vessel_core",
        description="Retinal vessel extraction: inspect data, train, evaluate, "
        "predict.",
    )
    _add_verbosity(parser, default=False)
    # -q/-v also after the command; SUPPRESS keeps the main parser's value otherwise
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        parents=[common],
        name="inspect",
        help="list the cases found in a folder or ZIP",
        description="List the cases of a dataset (folder or ZIP) and the files that "
        "found no partner.",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or ZIP archive")
    _add_json(p)
    p.set_defaults(run=run_inspect)

    p = commands.add_parser(
        parents=[common],
        name="evaluate",
        help="score saved predictions or a model against the vessel masks",
        description="Score predictions inside the FOV: saved PNGs (--pred) or a "
        "model's (--model). Prints per-case, mean and pooled figures.",
    )
    p.add_argument("--data", required=True, help="dataset folder or ZIP archive")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pred",
        metavar="DIR",
        help="folder of prediction images (grey 0-255 read as probability / 255, or "
        "binary), paired with the cases by the case id in their names",
    )
    source.add_argument("--model", metavar="FOLDER", help="a saved model folder")
    p.add_argument(
        "--threshold",
        type=_unit_float,
        help="vessel when probability >= T (default: the model's, or 0.5)",
    )
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        help="which cases to score (default: all with --pred, test with --model)",
    )
    _add_prediction(p)
    _add_json(p)
    p.set_defaults(run=run_evaluate)

    p = commands.add_parser(
        parents=[common],
        name="train",
        help="train a model and save it",
        description="Train a model of kind KIND on the cases with vessel masks and "
        "save it. 'train KIND --help' lists KIND's settings.",
    )
    p.add_argument("kind", metavar="KIND", help="model kind (classic, knn, resnet34)")
    p.add_argument("--data", required=True, help="dataset folder or ZIP archive")
    p.add_argument("--out", required=True, help="model folder to write (models/NAME)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model already saved under --out",
    )
    p.add_argument("--split", choices=SPLIT_CHOICES, default="train")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the undersampling (and of the model, when it has a seed)",
    )
    p.add_argument(
        "--strategy",
        choices=_strategies(),
        help="undersampling strategy (default: the model's own)",
    )
    p.add_argument(
        "--sampling",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings of --strategy, e.g. drop_fraction=0.7",
    )
    if model_cls is not None:
        _add_settings(p, model_cls)
    p.set_defaults(run=run_train, model_cls=model_cls)

    p = commands.add_parser(
        parents=[common],
        name="predict",
        help="write probability and vessel maps for images",
        description="For each image write <stem>_prob.png (grey 0-255) and "
        "<stem>_vessels.png (0/255), zero outside the estimated FOV.",
    )
    p.add_argument("--model", required=True, metavar="FOLDER", help="model folder")
    p.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders of them"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write to")
    p.add_argument(
        "--threshold", type=_unit_float, help="default: the model's threshold"
    )
    _add_prediction(p)
    p.set_defaults(run=run_predict)
    return parser


def _add_verbosity(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="log only warnings and errors",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log debug messages too",
    )


def _add_prediction(p: argparse.ArgumentParser) -> None:
    """--precision and --flips: how a ResNet model predicts (`with_prediction`)."""
    choices = ResNetUNet.SETTING_CHOICES
    group = p.add_argument_group("ResNet prediction (default: the model's own)")
    group.add_argument(
        "--precision",
        choices=choices["precision"],
        help="int8 is usually faster, float32 a little more accurate (the README's "
        "table gives both)",
    )
    group.add_argument(
        "--flips",
        type=int,
        choices=choices["flips"],
        help="average the maps of this many mirrored copies (slower, a little "
        "more accurate)",
    )


def _load_model(args: argparse.Namespace) -> Any:
    """The model of ``--model``, predicting as ``--precision``/``--flips`` say,
    set up for prediction (`store.ready`)."""
    model = store.load_model(args.model)
    given = _prediction_flags(args)
    if given:
        change = getattr(model, "with_prediction", None)
        if change is None:
            flags = " and ".join(f"--{key}" for key in given)
            apply = "apply" if len(given) > 1 else "applies"
            raise ValueError(
                f"{args.model}: {flags} only {apply} to a ResNet model; this one is "
                f"{model.kind!r}"
            )
        model = change(**given)
    return store.ready(model)


def _prediction_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--precision``/``--flips`` values given (none: ``{}``)."""
    return {
        key: value
        for key in PREDICTION_OPTIONS
        if (value := getattr(args, key, None)) is not None
    }


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", metavar="FILE", help="also write the result as JSON ('-': stdout)"
    )


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _strategies() -> list[str] | None:
    try:
        from vessel_core import sampling
    except ImportError:  # pragma: no cover - sampling is part of the package
        return None
    return sorted(sampling.STRATEGIES)


def _train_class(argv: Sequence[str]) -> type | None:
    """The model class named after ``train`` in ``argv``, if ``train`` is the command.

    Raises ValueError for an unknown kind, ImportError when the kind's module is
    missing; None when the command is not ``train`` or has no kind yet.
    """
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "train":
        return None
    after = argv[argv.index("train") + 1 :]
    if not after or after[0].startswith("-"):
        return None  # run_train resolves a kind given later, without settings flags
    kind = after[0]
    try:
        return store.model_class(kind)
    except ImportError as exc:
        raise ImportError(f"model kind {kind!r} cannot be imported: {exc}") from exc


# ---------------------------------------------------------------------------
# Model settings as flags


def _add_settings(p: argparse.ArgumentParser, model_cls: type) -> None:
    """One flag per entry of ``model_cls.default_settings()``."""
    if not hasattr(model_cls, "default_settings"):
        raise ValueError(f"{model_cls.__name__} has no default_settings() classmethod")
    defaults = model_cls.default_settings()
    choices = getattr(model_cls, "SETTING_CHOICES", {}) or {}
    group = p.add_argument_group(f"{model_cls.__name__} settings")
    from vessel_core.store import setting_help

    helps = setting_help(model_cls)
    for name, default in defaults.items():
        if name == "seed":
            continue  # --seed sets it
        flag = name.replace("_", "-")
        if name in _TRAIN_OPTIONS:
            flag = f"model-{flag}"
        allowed = list(choices[name]) if name in choices else None
        kwargs: dict[str, Any] = {"dest": f"setting__{name}", "default": default}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
            shown = default
        elif isinstance(default, list | tuple):
            element = type(default[0]) if default else str
            container = tuple if isinstance(default, tuple) else list
            kwargs["type"] = _list_parser(element, container, allowed)
            kwargs["metavar"] = "A,B,..."
            shown = ",".join(map(str, default))
        else:
            kwargs["type"] = _guess_value if default is None else type(default)
            if allowed is None:
                kwargs["metavar"] = name.upper()
            else:
                kwargs["choices"] = allowed
            shown = default
        described = helps.get(name, "").replace("%", "%%")
        kwargs["help"] = (
            f"{described} (default: {shown})" if described else (f"default: {shown}")
        )
        group.add_argument(f"--{flag}", **kwargs)


def _list_parser(element: type, container: type, allowed: list | None = None):
    """An argparse type for a comma-separated list of ``element`` values."""

    def parse(text: str):
        parts = [t.strip() for t in text.split(",") if t.strip()]
        try:
            values = [_guess_value(t) if element is bool else element(t) for t in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {element.__name__} values, got {text!r}"
            ) from None
        wrong = [v for v in values if allowed is not None and v not in allowed]
        if wrong:
            raise argparse.ArgumentTypeError(
                f"{', '.join(map(str, wrong))} not among {', '.join(map(str, allowed))}"
            )
        return container(values)

    return parse


def _guess_value(text: str) -> Any:
    """A setting value from text: int, float, bool, None, else the string."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _settings_from(args: argparse.Namespace, model_cls: type) -> dict[str, Any]:
    """The class's default settings, updated with the flags and ``--seed``."""
    settings = dict(model_cls.default_settings())
    for key, value in vars(args).items():
        if key.startswith("setting__"):
            settings[key.removeprefix("setting__")] = value
    if "seed" in settings:
        settings["seed"] = args.seed
    return settings


def _sampling_params(pairs: Sequence[str], strategy: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings as settings, typed like the strategy's defaults."""
    from vessel_core import sampling

    defaults = sampling.STRATEGIES.get(strategy, {})
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--sampling expects KEY=VALUE, got {pair!r}")
        default = defaults.get(key)
        try:
            if isinstance(default, bool) or default is None:
                params[key] = _guess_value(value)
            else:
                params[key] = type(default)(value)
        except ValueError:
            raise ValueError(
                f"--sampling {key}: expected a {type(default).__name__}, got {value!r}"
            ) from None
    return params


# ---------------------------------------------------------------------------
# Data


def _discover(data: str) -> vio.Discovery:
    path = Path(data)
    if not path.exists():
        raise ValueError(f"{data}: no such file or folder")
    logger.info("reading %s", data)
    start = time.perf_counter()
    found = vio.discover(path)
    logger.info(
        "%s layout: %d cases in %.1f s",
        found.layout,
        len(found.cases),
        time.perf_counter() - start,
    )
    return found


def _select_split(cases: Sequence[Case], split: str) -> list[Case]:
    return list(cases) if split == "all" else split_cases(cases, split)


def _display_path(source: str, root: Path) -> str:
    """A source relative to the dataset folder when it lies inside it."""
    try:
        return str(Path(source).relative_to(root))
    except ValueError:
        return source


def _is_image_file(path: Path) -> bool:
    """Whether the file's first bytes name an image format (gzip-wrapped too)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    fmt = vio.sniff(head[:16])
    if fmt == "GZIP":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error:
            return False
        fmt = vio.sniff(head[:16])
    return fmt in _IMAGE_FORMATS


def _image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, by content, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _is_image_file(p)
    )


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


# ---------------------------------------------------------------------------
# Output


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(header)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _write_json(target: str | None, data: dict[str, Any]) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2, allow_nan=False)
    if target == "-":
        print(text)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    logger.info("wrote %s", path)


# ---------------------------------------------------------------------------
# inspect


def run_inspect(args: argparse.Namespace) -> int:
    """``inspect DATA``: the cases and unpaired files of a dataset."""
    found = _discover(args.data)
    root = Path(args.data)
    cases = []
    for case in found.cases:
        height, width = case.shape
        cases.append(
            {
                "id": case.id,
                "split": case.split,
                "width": width,
                "height": height,
                "has_vessel_mask": case.vessel_mask is not None,
                "fov_estimated": bool(case.fov_estimated),
                "image": case.sources.get("image", ""),
                "vessel_mask": case.sources.get("vessel_mask", ""),
                "fov_mask": case.sources.get("fov_mask", ""),
            }
        )
    unpaired = [
        {"path": u.path, "role": u.role, "reason": u.reason} for u in found.unpaired
    ]
    result = {
        "data": str(args.data),
        "layout": found.layout,
        "cases": cases,
        "unpaired": unpaired,
    }
    if args.json == "-":
        _write_json("-", result)
        return 0

    n_train = sum(c["split"] == "train" for c in cases)
    n_masks = sum(c["has_vessel_mask"] for c in cases)
    print(
        f"{found.layout} layout: {len(cases)} case{'' if len(cases) == 1 else 's'} "
        f"({n_train} train, "
        f"{len(cases) - n_train} test), {n_masks} with a vessel mask, "
        f"{len(unpaired)} unpaired file(s)"
    )
    if cases:
        _print_table(
            ("id", "split", "size", "FOV", "image", "vessel mask", "FOV mask"),
            [
                (
                    c["id"],
                    c["split"],
                    f"{c['width']}x{c['height']}",
                    "estimated" if c["fov_estimated"] else "read",
                    _display_path(c["image"], root),
                    _display_path(c["vessel_mask"], root) or "-",
                    "-" if c["fov_estimated"] else _display_path(c["fov_mask"], root),
                )
                for c in cases
            ],
        )
    if unpaired:
        print("unpaired files:")
        for u in unpaired:
            print(f"  {_display_path(u['path'], root)} ({u['role']}): {u['reason']}")
    _write_json(args.json, result)
    return 0


# ---------------------------------------------------------------------------
# evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: score saved predictions (--pred) or a model (--model)."""
    if args.pred is not None:
        given = [f"--{key}" for key in _prediction_flags(args)]
        if given:
            need = "need" if len(given) > 1 else "needs"
            raise ValueError(f"{' and '.join(given)} {need} --model, not --pred")
        report = _evaluate_predictions(args)
    else:
        report = _evaluate_model(args)
    for note in report.notes:
        logger.info("%s", note)
    if args.json == "-":
        _write_json("-", report.to_json())
        return 0
    _print_report(report)
    _write_json(args.json, report.to_json())
    return 0


def _print_report(report: metrics.Report) -> None:
    rows = [[row["id"]] + [row[k] for k in _TABLE_KEYS] for row in report.cases]
    rows.append(["mean"] + [report.mean[k] for k in _TABLE_KEYS])
    rows.append(["pooled"] + [report.pooled[k] for k in _TABLE_KEYS])
    _print_table(("case",) + _TABLE_KEYS, rows)
    extra = report.extra
    line = f"threshold {report.threshold:.3f}, {len(report.cases)} case(s)"
    if "seconds_per_image" in extra:
        line += f", {extra['seconds_per_image']:.2f} s per image"
    print(line)


def _evaluate_predictions(args: argparse.Namespace) -> metrics.Report:
    found = _discover(args.data)
    cases = _select_split(found.cases, args.split or "all")
    folder = Path(args.pred)
    if not folder.is_dir():
        raise ValueError(f"--pred {args.pred}: no such folder")
    files = _image_files(folder)
    if not files:
        raise ValueError(f"--pred {args.pred}: no image files in it")

    matched, unmatched, ignored = pair_predictions([c.id for c in cases], files)
    without = [c.id for c in cases if c.id not in matched]
    for path in unmatched:
        logger.warning("prediction %s matches no case id; not scored", path.name)
    for path in ignored:
        logger.warning(
            "prediction %s: another file of the same case is used", path.name
        )
    if without:
        logger.warning(
            "%d case(s) have no prediction: %s", len(without), ", ".join(without)
        )
    if not matched:
        raise ValueError(
            f"--pred {args.pred}: no file name holds a case id of {args.data} "
            f"(ids: {', '.join(c.id for c in cases[:5])}...)"
        )

    maps = {}
    scored = [c for c in cases if c.id in matched]
    for case in scored:
        path = matched[case.id]
        pred = read_prediction(path)
        if pred.shape != case.shape:
            raise ValueError(
                f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} (width x "
                f"height) but case {case.id}'s image is {case.shape[1]}x"
                f"{case.shape[0]}"
            )
        maps[case.id] = pred
    if maps and all(np.unique(m).size <= 2 for m in maps.values()):
        logger.warning(
            "the predictions are binary (two levels): auc_roc is their balanced "
            "accuracy and auc_pr a single precision-recall point, not areas over a "
            "ranking of pixels"
        )
    extra = {
        "data": str(args.data),
        "predictions": {cid: str(p) for cid, p in matched.items()},
        "cases_without_prediction": without,
        "predictions_without_case": [str(p) for p in unmatched],
    }
    return metrics.evaluate(scored, maps, _threshold(args.threshold, 0.5), extra)


def _evaluate_model(args: argparse.Namespace) -> metrics.Report:
    model = _load_model(args)
    threshold = _threshold(args.threshold, model.threshold)
    found = _discover(args.data)
    split = args.split or "test"
    chosen = _select_split(found.cases, split)
    cases = with_masks(chosen)
    if len(cases) < len(chosen):
        logger.info(
            "%d case(s) without a vessel mask left out", len(chosen) - len(cases)
        )
    if not cases:
        hint = " (try --split all)" if split != "all" else ""
        raise ValueError(
            f"{args.data}: no case with a vessel mask in split {split!r}{hint}"
        )

    from vessel_core.compare import trained_on

    seen = trained_on(model, cases)
    if seen:
        logger.warning(
            "%d of the %d cases (%s) are images %s was trained on: their scores "
            "are optimistic",
            len(seen),
            len(cases),
            ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else ""),
            args.model,
        )

    maps, seconds = {}, []
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        maps[case.id] = model.predict_proba(case)
        seconds.append(time.perf_counter() - start)
        logger.info(
            "predicted %s (%d/%d) in %.2f s", case.id, i, len(cases), seconds[-1]
        )
    extra = {
        "data": str(args.data),
        "model": str(args.model),
        "kind": model.kind,
        "split": split,
        "seconds_per_image": float(np.mean(seconds)),
        "trained_on": seen,
    }
    settings = getattr(model, "settings", {})
    if all(key in settings for key in PREDICTION_OPTIONS):  # how a ResNet predicted
        extra["prediction"] = {key: settings[key] for key in PREDICTION_OPTIONS}
    return metrics.evaluate(cases, maps, threshold, extra)


def _threshold(given: float | None, default: float) -> float:
    return float(default) if given is None else float(given)


def pair_predictions(
    case_ids: Sequence[str], files: Sequence[Path]
) -> tuple[dict[str, Path], list[Path], list[Path]]:
    """Pair prediction files with case ids by the id in each file name.

    A file's case is the longest case id that appears in its name (case-insensitive)
    as a whole word, i.e. not glued to another letter or digit (``01_test_prob.png``
    holds ``01``); failing that, a number in the name equal to a numeric id (``1``
    for ``01``); failing that, the longest id found anywhere in the name. When
    several files name one case, a ``*_prob`` file is preferred, then the first by
    name.

    Returns
    -------
    matched : dict of str to Path
        Case id to its prediction file.
    unmatched : list of Path
        Files that name no case (or two cases equally well).
    ignored : list of Path
        Files of a case that already has a preferred file.
    """
    by_case: dict[str, list[Path]] = {}
    unmatched = []
    for path in files:
        cid = _case_of(_stem(path), case_ids)
        if cid is None:
            unmatched.append(path)
        else:
            by_case.setdefault(cid, []).append(path)

    matched, ignored = {}, []
    for cid, paths in by_case.items():
        paths = sorted(
            paths, key=lambda p: (not _stem(p).lower().endswith("_prob"), p.name)
        )
        matched[cid] = paths[0]
        ignored.extend(paths[1:])
    return matched, unmatched, ignored


def _case_of(stem: str, case_ids: Sequence[str]) -> str | None:
    lowered = stem.lower()

    def best(found: list[str]) -> str | None:
        if not found:
            return None
        longest = max(len(c) for c in found)
        top = [c for c in found if len(c) == longest]
        return top[0] if len(top) == 1 else None

    whole = [
        c
        for c in case_ids
        if re.search(rf"(?<![0-9a-z]){re.escape(c.lower())}(?![0-9a-z])", lowered)
    ]
    if whole:
        return best(whole)
    numbers = {int(t) for t in re.findall(r"\d+", lowered)}
    numeric = [c for c in case_ids if c.isdigit() and int(c) in numbers]
    if len(numeric) == 1:
        return numeric[0]
    return best([c for c in case_ids if c.lower() in lowered])


def read_prediction(path: str | Path) -> NDArray:
    """A saved prediction image as a uint8 grey map (0-255) or a bool mask.

    Parameters
    ----------
    path : str or Path
        A grey image (PNG, TIFF...): values 0-255 are probabilities times 255. An
        image whose only values are 0 and 1 is read as a binary mask (0/1 labels).

    Returns
    -------
    (H, W) uint8 or bool ndarray

    Raises
    ------
    LoadError
        Unreadable file, or a colour image (a prediction must be grey).
    """
    rgb = vio.read_image(path).astype(np.int16)
    # near-grey palettes (DRIVE's GIFs: (4, 2, 4) and (252, 254, 252)) and JPEG
    # chroma noise pass; a colour picture does not
    spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())
    if spread > _GREY_TOLERANCE:
        raise vio.LoadError(
            f"{path}: a prediction must be a grey image (probability x 255 or 0/255), "
            f"got a colour image (channels differ by up to {spread})"
        )
    grey = np.round(rgb.mean(axis=2)).astype(np.uint8)
    if grey.max() <= 1:
        return grey.astype(bool)
    return grey


# ---------------------------------------------------------------------------
# train


def run_train(args: argparse.Namespace) -> int:
    """``train KIND``: fit a model on the training cases and save it."""
    model_cls = args.model_cls or store.model_class(args.kind)
    if args.sampling and not args.strategy:
        raise ValueError("--sampling needs --strategy")

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        # checked before training, so a long fit is never lost to a taken name
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")

    # settings, and a saved start model (init_from), are checked before the data
    # is read: a wrong one is told at once
    settings = _settings_from(args, model_cls)
    model = model_cls(**settings)
    if hasattr(model, "check_start"):
        model.check_start()
    found = _discover(args.data)
    cases = with_masks(_select_split(found.cases, args.split))
    if not cases:
        hint = " (try --split all)" if args.split != "all" else ""
        raise ValueError(
            f"{args.data}: no case with a vessel mask in split {args.split!r}{hint}"
        )
    logger.info("training %s on %d case(s) with %s", args.kind, len(cases), settings)

    selection = None
    if args.strategy:
        from vessel_core import sampling

        params = _sampling_params(args.sampling, args.strategy)
        selection = sampling.select(cases, args.strategy, seed=args.seed, **params)
        before, after = selection.totals("before"), selection.totals("after")
        logger.info(
            "%s sampling: %d vessel + %d background pixels kept of %d + %d",
            args.strategy,
            after["vessel"],
            after["background"],
            before["vessel"],
            before["background"],
        )

    stop = StopFlag()
    start = time.perf_counter()
    with _stop_on_ctrl_c(stop):
        model.fit(
            cases, selection=selection, on_progress=log_progress(logger), stop=stop
        )
    seconds = time.perf_counter() - start

    folder = store.save_model(model, out, overwrite=args.overwrite)
    early = ", stopped early (best so far kept)" if stop.is_set() else ""
    used = len(model.meta.get("train_cases") or cases)  # a fit may leave some out
    print(
        f"saved {args.kind} model to {folder}: {used} training case(s), "
        f"threshold {float(model.threshold):.3f}, {seconds:.1f} s{early}"
    )
    return 0


class _stop_on_ctrl_c:
    """First Ctrl-C sets ``stop``; a second one raises KeyboardInterrupt."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop
        self.old = None

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        logger.warning(
            "stopping at the model's next check; the best model so far will be "
            "saved (Ctrl-C again to abort without saving)"
        )

    def __enter__(self) -> None:
        # signal handlers can only be set from the main thread
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc_info: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


# ---------------------------------------------------------------------------
# predict


def run_predict(args: argparse.Namespace) -> int:
    """``predict``: probability and vessel maps for images."""
    paths = _expand_inputs(args.inputs)
    model = _load_model(args)
    threshold = _threshold(args.threshold, model.threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    refused: list[str] = []
    for i, path in enumerate(paths, 1):
        try:
            image = vio.read_image(path)
        except vio.LoadError as exc:  # one bad file must not cost the others
            refused.append(str(exc))  # told once, at the end
            continue
        fov = vio.estimate_fov(image)
        case = Case(
            id=_stem(path),
            image=image,
            fov_mask=fov,
            split="test",
            fov_estimated=True,
            sources={"image": str(path), "vessel_mask": "", "fov_mask": "estimated"},
        )
        start = time.perf_counter()
        prob = np.asarray(model.predict_proba(case), dtype=np.float32)
        seconds = time.perf_counter() - start
        if prob.shape != case.shape:
            raise ValueError(
                f"{args.model}: the model returned a {prob.shape} map for {path}, "
                f"whose image is {case.shape}"
            )
        prob = np.where(fov, np.clip(prob, 0.0, 1.0), 0.0)
        grey = np.round(prob * 255).astype(np.uint8)
        vessels = ((prob >= threshold) & fov).astype(np.uint8) * 255
        Image.fromarray(grey, mode="L").save(out / f"{case.id}_prob.png")
        Image.fromarray(vessels, mode="L").save(out / f"{case.id}_vessels.png")
        logger.info("%s (%d/%d): %.2f s", path.name, i, len(paths), seconds)
    done = len(paths) - len(refused)
    if not done:
        raise ValueError(
            f"no image could be predicted ({len(refused)} file(s)):\n  "
            + "\n  ".join(refused)
        )
    print(
        f"wrote {2 * done} file(s) for {done} image(s) to {out} "
        f"(threshold {threshold:.3f})"
    )
    if refused:
        print(f"{len(refused)} file(s) not predicted:", file=sys.stderr)
        for message in refused:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given and the image files of the folders given; unique stems."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = _image_files(path)
            if not found:
                logger.warning("%s: no image files in it", path)
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ValueError(f"{text}: no such file or folder")
    if not paths:
        raise ValueError("no image to predict")
    seen: dict[str, Path] = {}
    for path in paths:
        stem = _stem(path)
        if stem in seen and seen[stem] != path:
            raise ValueError(
                f"{seen[stem]} and {path} would both write {stem}_prob.png; rename "
                "one or predict them into separate folders"
            )
        seen[stem] = path
    return list(dict.fromkeys(paths))
