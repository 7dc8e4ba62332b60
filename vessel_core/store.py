"""Model folders under ``models/``: one JSON file plus arrays or weights.

A model folder holds ``model.json`` (kind, settings, training cases, threshold,
scores) and the files its kind writes (``arrays.npz`` for KNN and classic,
``weights.pt`` for the network). Nothing is pickled: arrays load with
``allow_pickle=False`` and weights with ``torch.load(..., weights_only=True)``.

Saving is atomic: files are written into a hidden temporary folder beside the
target, then swapped in with ``os.rename``, so a killed save leaves either the old
model or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

META_FILE = "model.json"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class VesselModel(Protocol):
    """The face every model kind shows (classic, knn, resnet34).

    ``meta`` holds what ``model.json`` records besides the kind: ``settings``,
    ``threshold``, ``train_cases``, ``train_fingerprint``, ``scores``...
    """

    kind: str
    threshold: float
    meta: dict[str, Any]

    def fit(self, cases, selection=None, on_progress=None, stop=None): ...

    def predict_proba(self, case): ...

    def save_files(self, folder: Path) -> None: ...

    @classmethod
    def load_files(cls, folder: Path, meta: dict[str, Any]): ...


_KINDS: dict[str, Callable[[], type]] = {}
_BUILTINS_REGISTERED = False


def register_kind(kind: str, loader: Callable[[], type]) -> None:
    """Register a model kind; ``loader`` imports and returns its class lazily."""
    _KINDS[kind] = loader


def model_class(kind: str) -> type:
    """The class for ``kind``; ValueError naming the known kinds otherwise."""
    _register_builtin_kinds()
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(_KINDS)}")
    return _KINDS[kind]()


def _register_builtin_kinds() -> None:
    global _BUILTINS_REGISTERED
    if _BUILTINS_REGISTERED:
        return
    _BUILTINS_REGISTERED = True

    def _classic():
        from vessel_core.classic import ClassicFilters

        return ClassicFilters

    def _knn():
        from vessel_core.knn import KNNModel

        return KNNModel

    def _resnet():
        from vessel_core.resnet import ResNetUNet

        return ResNetUNet

    for kind, loader in (("classic", _classic), ("knn", _knn), ("resnet34", _resnet)):
        _KINDS.setdefault(kind, loader)


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names folder and problem."""


def save_model(model: VesselModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` atomically and return the folder.

    An existing model of that name is replaced only once the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.save_files(tmp)
        meta = {"kind": model.kind, "name": folder.name, **model.meta}
        meta["threshold"] = float(model.threshold)
        _write_json(tmp / META_FILE, meta)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays reach the JSON from scores and settings
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in model.json")


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp``; the old one is moved aside, then removed."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    trash = folder.parent / f".trash-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, trash)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(trash, folder)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder, checked for a kind."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no {META_FILE}; this is not a model folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ModelFolderError(f"{path}: has no 'kind' field")
    return meta


def load_model(folder: str | Path) -> VesselModel:
    """Load a model folder written by `save_model`, whatever its kind."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        cls = model_class(meta["kind"])
    except ValueError as exc:
        raise ModelFolderError(f"{folder / META_FILE}: {exc}") from exc
    try:
        return cls.load_files(folder, meta)
    except ModelFolderError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelFolderError(
            f"{folder}: cannot load the {meta['kind']} model: {exc}"
        ) from exc


@dataclass(frozen=True)
class ModelEntry:
    """One listed model folder."""

    name: str
    path: Path
    kind: str
    meta: dict[str, Any]


def list_models(root: str | Path = DEFAULT_MODELS_DIR) -> list[ModelEntry]:
    """Every whole model folder under ``root``, sorted by name.

    Hidden folders (unfinished saves) and folders whose JSON does not parse are
    left out.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    entries = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            meta = read_meta(path)
        except ModelFolderError:
            continue
        entries.append(ModelEntry(path.name, path, str(meta["kind"]), meta))
    return entries
