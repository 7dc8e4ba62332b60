"""Model folders under ``models/``: one JSON file plus arrays or weights.

A model folder holds ``model.json`` (kind, settings, training cases, threshold,
scores) and the files its kind writes (``arrays.npz`` for KNN and classic,
``weights.pt`` for the network). Nothing is pickled: arrays load with
``allow_pickle=False`` and weights with ``torch.load(..., weights_only=True)``.

Saving is atomic: files are written into a hidden temporary folder beside the
target, then put in place in one step, so a killed save leaves either the old
model or the new one, never half of one. A new name is claimed with one
``os.rename``, which fails when another saver got there first; a name that is
taken is never replaced unless asked (``overwrite=True``), and then, on Linux,
the new folder and the old one trade places in one ``renameat2(RENAME_EXCHANGE)``
call (elsewhere, or where the filesystem refuses it, the old folder is first
renamed aside). Hidden leftovers of killed saves are removed by `clean_stale`
(which `list_models` runs).

Loading never runs code: `load_arrays` and `load_weights` are the shared readers
the model kinds use; they refuse pickled content and check names, shapes and
dtypes, raising `ModelFolderError` naming the file and the array.
"""

from __future__ import annotations

import ctypes
import errno
import inspect
import json
import os
import pickle
import re
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

META_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
WEIGHTS_FILE = "weights.pt"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

#: Hidden leftovers of saves (``.tmp-NAME-xxxxxxxx``, ``.trash-NAME-xxxxxxxx``)
#: older than this many seconds are removed by `clean_stale`.
STALE_SECONDS = 3600.0

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


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


#: The model folders the project ships under `DEFAULT_MODELS_DIR` (models/README.md).
SHIPPED = frozenset({"resnet34-full"})


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names folder and problem."""


class ModelExistsError(FileExistsError):
    """Saving under a name that is taken, without ``overwrite=True``.

    Attributes
    ----------
    folder : Path
        The folder that exists.
    """

    def __init__(
        self,
        folder: str | Path,
        why: str = "a model of that name exists",
        fix: str = "choose another name (free_name gives one) or save with "
        "overwrite=True",
    ):
        self.folder = Path(folder)
        super().__init__(f"{self.folder}: {why}; {fix}")


def setting_help(cls: type) -> dict[str, str]:
    """Each setting's description from the numpydoc Parameters section of ``cls``.

    ``name : type`` lines start an entry (several names may share one, comma
    separated); the indented lines under them are its text.
    """
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    try:
        start = lines.index("Parameters") + 2
    except ValueError:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        joined = re.sub(r"\s*\[\d+\]_", "", " ".join(text))  # citation marks
        for name in names:
            if joined:
                out[name] = joined

    for line in lines[start:]:
        if line and not line.startswith(" "):
            if " : " not in line:
                break  # the next section
            flush()
            names = [n.strip() for n in line.split(" : ")[0].split(",")]
            text = []
        elif line.strip():
            text.append(line.strip())
    flush()
    return out


def save_model(model: VesselModel, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` to ``folder`` atomically and return the folder.

    Parameters
    ----------
    model : VesselModel
        Writes its own files with ``model.save_files(tmp_folder)``.
    folder : str or Path
        The model folder (``models/NAME``); its parents are created.
    overwrite : bool, default=False
        Replace a model already saved under that name (only once the new one is
        complete). When False and the name is taken, nothing is written.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ModelExistsError
        ``overwrite`` is False and ``folder`` exists (and is not an empty
        folder), or it is a non-empty folder that is no model folder (never
        replaced, whatever ``overwrite`` says).
    ValueError
        The name starts with a dot (hidden folders are unfinished saves).
    OSError
        Writing failed (disk full...): the temporary folder is removed and the
        previous model of that name, if any, is left as it was.

    Notes
    -----
    Files go into ``.tmp-NAME-xxxxxxxx`` beside ``folder``, are flushed to disk,
    and the folder is renamed into place. Without ``overwrite`` the rename is
    the claim: on Linux, renaming a folder onto an existing non-empty folder
    fails, so of two sessions saving under one name at once exactly one wins
    and the other gets `ModelExistsError`. With ``overwrite`` and a model
    there, on Linux (glibc 2.28 or later) the two folders are exchanged in one
    ``renameat2(..., RENAME_EXCHANGE)`` call, and the old model, now at the
    temporary name, is removed: at every instant ``folder`` holds one whole
    model, and a save killed before the removal leaves the old one as a
    ``.tmp-`` leftover for `clean_stale`. Where that call is missing or the
    filesystem refuses it (EINVAL, ENOSYS...), the old folder is first renamed
    to ``.trash-NAME-xxxxxxxx``, then the new one into place; a save killed
    between those two renames leaves the name missing until `clean_stale`
    puts the old model back. Several savers at once: the last one wins.
    """
    folder = Path(folder)
    if not folder.name or folder.name.startswith("."):
        raise ValueError(
            f"model folder name must not be empty or start with '.', got "
            f"{folder.name!r} (hidden folders are unfinished saves)"
        )
    _check_replaceable(folder, overwrite)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{_TMP_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.save_files(tmp)
        meta = {"kind": model.kind, "name": folder.name, **model.meta}
        meta["threshold"] = float(model.threshold)
        _write_json(tmp / META_FILE, meta)
        _fsync_tree(tmp)
        if overwrite:
            _swap_in(tmp, folder)
        else:
            _claim(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_new(
    model: VesselModel, root: str | Path, name: str, attempts: int = 100
) -> Path:
    """Save ``model`` under ``root`` as ``name``, else the first free ``name-N``.

    Never replaces anything: the name is claimed atomically (see `save_model`),
    and a name taken meanwhile by another saver moves on to the next one.
    Returns the folder it was saved to.
    """
    root = Path(root)
    taken: list[str] = []
    for _ in range(attempts):
        candidate = free_name(root, name, taken)
        try:
            return save_model(model, root / candidate)
        except ModelExistsError:
            taken.append(candidate)
    raise ModelExistsError(root / name, f"no free name after {attempts} tries")


def free_name(root: str | Path, name: str, taken: Sequence[str] = ()) -> str:
    """``name``, else ``name-2``, ``name-3``...: the first not used in ``root``.

    A name is used when anything of that name exists in ``root`` or it is in
    ``taken``. Another saver can take the name before it is used: save with
    `save_model` (``overwrite=False``) or `save_new`, which claim it atomically.
    """
    root = Path(root)
    candidate, n = name, 1
    while candidate in taken or os.path.lexists(root / candidate):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


_NEVER = "choose another name (free_name gives one); it is never replaced"


def _check_replaceable(folder: Path, overwrite: bool) -> None:
    """ModelExistsError early, before anything is written, when it will fail."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ModelExistsError(folder, "a file or link of that name exists", _NEVER)
    if not any(folder.iterdir()):
        return  # an empty folder is no model; the rename replaces it
    if not (folder / META_FILE).is_file():
        raise ModelExistsError(
            folder, "a folder of that name exists and is not a model folder", _NEVER
        )
    if not overwrite:
        raise ModelExistsError(folder)


def _claim(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``, which must not exist (or be an empty folder)."""
    try:
        os.rename(tmp, folder)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise ModelExistsError(folder) from None
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk, so a rename never shows empties."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the rename still holds
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays reach the JSON from scores and settings
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in model.json")


#: renameat2's "paths relative to the working folder" and "swap the two" flags
#: (<fcntl.h>, <linux/fs.h>).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: What renameat2 answers where the system or the filesystem cannot exchange.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _find_renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc 2.28 or later), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _find_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` in one atomic step; False when it cannot here.

    FileNotFoundError when either is missing; other refusals raise OSError.
    """
    if _renameat2 is None:
        return False
    paths = os.fsencode(a), os.fsencode(b)
    if _renameat2(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp``: exchanged in one step, else moved aside first.

    With several savers at once the last one wins; none is left half-written.
    """
    for _ in range(10):
        try:
            os.rename(tmp, folder)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        try:
            exchanged = _exchange(tmp, folder)
        except FileNotFoundError:
            continue  # another saver moved it away first
        if exchanged:
            # tmp now holds the replaced model; killed here, clean_stale removes it
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trash = folder.parent / f"{_TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            continue  # another saver moved it away first
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                shutil.rmtree(trash, ignore_errors=True)
                continue  # another saver's model landed in between: replace it
            os.rename(trash, folder)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return
    raise ModelExistsError(folder, "the folder kept changing while saving")


def delete_model(folder: str | Path) -> None:
    """Delete a saved model folder, whole or not at all.

    Refused (ValueError naming the folder): a folder that is not a model folder
    (no ``model.json``), a link, and the models the project ships
    (`SHIPPED`, in `DEFAULT_MODELS_DIR`). The folder is first renamed to a
    hidden ``.tmp-NAME-*`` (so no list shows half a model), then removed; a
    removal cut short is finished by `clean_stale`.
    """
    folder = Path(folder)
    if folder.is_symlink() or not (folder / META_FILE).is_file():
        raise ModelFolderError(f"{folder}: not a saved model folder; nothing deleted")
    shipped = folder.resolve().parent == DEFAULT_MODELS_DIR.resolve()
    if shipped and folder.name in SHIPPED:
        raise ModelFolderError(
            f"{folder}: the project ships this model; it is not deleted from here"
        )
    gone = folder.parent / f"{_TMP_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def clean_stale(root: str | Path, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove leftovers of killed saves under ``root``; return what was removed.

    ``.tmp-NAME-*`` folders (unfinished saves, or a model replaced by an
    exchange) and ``.trash-NAME-*`` folders (models replaced the other way)
    whose newest entry is older than ``max_age`` seconds are deleted, except
    that a ``.trash-NAME-*`` with no ``NAME`` beside it (a save killed between
    its two renames) is renamed back to ``NAME``: the previous model returns.
    Younger leftovers may belong to a save in progress and stay.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in sorted(root.iterdir()):
        prefix = next(
            (p for p in (_TMP_PREFIX, _TRASH_PREFIX) if path.name.startswith(p)), None
        )
        if prefix is None or not path.is_dir() or path.is_symlink():
            continue
        try:
            if now - _newest_mtime(path) < max_age:
                continue
            name = path.name[len(prefix) :].rpartition("-")[0]
            target = root / name
            if prefix == _TRASH_PREFIX and name and not os.path.lexists(target):
                os.rename(path, target)
                continue
            shutil.rmtree(path)
            removed.append(path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for child in folder.iterdir():
        try:
            newest = max(newest, child.stat().st_mtime)
        except OSError:
            continue
    return newest


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder, checked for a kind.

    Raises `ModelFolderError` when the file is missing or unreadable, is not
    JSON, is not an object, or has no ``kind`` string.
    """
    folder = Path(folder)
    path = folder / META_FILE
    if not folder.exists():
        raise ModelFolderError(f"{folder}: no such folder")
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no {META_FILE}; this is not a model folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from exc
    except (OSError, RecursionError) as exc:
        raise ModelFolderError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ModelFolderError(f"{path}: has no 'kind' field")
    if not isinstance(meta["kind"], str) or not meta["kind"]:
        raise ModelFolderError(
            f"{path}: 'kind' must be the name of a model kind, got {meta['kind']!r}"
        )
    return meta


def ready(model: Any) -> Any:
    """``model``, its prediction set up now where it has such a step (the ResNet's
    int8 or folded network: `ResNetUNet.prepare`), so that the first image's
    seconds are that image's own. Returns ``model``."""
    prepare = getattr(model, "prepare", None)
    if prepare is not None:
        prepare()
    return model


def load_model(folder: str | Path) -> VesselModel:
    """Load a model folder written by `save_model`, whatever its kind.

    Only registered kinds load (`register_kind`): ``model.json`` names a kind,
    never a class or module, so a folder cannot make the loader import
    anything. Every problem is a `ModelFolderError` naming the folder or file.
    """
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
    except (
        OSError,
        KeyError,
        ValueError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as exc:
        raise ModelFolderError(
            f"{folder}: cannot load the {meta['kind']} model: {exc}"
        ) from exc


ShapePattern = tuple[int | str | None, ...]

_DTYPE_KINDS = {
    "b": "bool",
    "i": "signed integer",
    "u": "unsigned integer",
    "f": "float",
    "c": "complex",
}


def load_arrays(
    folder: str | Path,
    expected: Mapping[str, tuple[ShapePattern, str]],
    filename: str = ARRAYS_FILE,
) -> dict[str, np.ndarray]:
    """Read named arrays from a model folder's ``.npz``, checking each one.

    Parameters
    ----------
    folder : str or Path
        The model folder.
    expected : mapping of str to (shape pattern, dtype kinds)
        For each array to read: its shape, one entry per axis, each an ``int``
        (that exact length), ``None`` (any length) or a ``str`` (a named length
        that must be the same wherever the name is used, across all arrays);
        and the numpy dtype kinds allowed (``"f"`` float, ``"i"`` signed and
        ``"u"`` unsigned integer, ``"b"`` bool: ``"iu"`` for any integer).
        Example: ``{"X": (("n", 48), "f"), "y": (("n",), "b"), "scale": ((), "f")}``.
    filename : str, default="arrays.npz"
        The file inside the folder.

    Returns
    -------
    dict of str to ndarray
        The arrays named in ``expected`` (others in the file are ignored), read
        into memory.

    Raises
    ------
    ModelFolderError
        Naming the file and the array: the file is missing or is not an
        ``.npz`` archive; an array is missing, holds Python objects (pickled
        data is never loaded: ``allow_pickle=False``), or has another number
        of axes, another length or another dtype kind than expected.
    """
    path = Path(folder) / filename
    if not path.is_file():
        raise ModelFolderError(
            f"{path}: missing; the model folder is incomplete (save the model again)"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelFolderError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ModelFolderError(
            f"{path}: holds a single array, expected an .npz archive of named arrays"
        )

    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, tuple[int, str]] = {}  # named length -> (value, where seen)
    with npz:
        for name, (pattern, kinds) in expected.items():
            where = f"{path}: array {name!r}"
            if name not in npz.files:
                raise ModelFolderError(
                    f"{where} is missing; the file holds {sorted(npz.files)}"
                )
            try:
                array = npz[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise ModelFolderError(
                        f"{where} holds Python objects (dtype object, stored by "
                        "pickling); refused: a model folder holds only numeric "
                        "arrays and never runs code when loaded"
                    ) from exc
                raise ModelFolderError(f"{where} cannot be read ({exc})") from exc
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFolderError(f"{where} cannot be read ({exc})") from exc
            _check_array(where, array, pattern, kinds, lengths)
            arrays[name] = array
    return arrays


def _check_array(
    where: str,
    array: np.ndarray,
    pattern: ShapePattern,
    kinds: str,
    lengths: dict[str, tuple[int, str]],
) -> None:
    """ModelFolderError unless ``array`` fits ``pattern`` and ``kinds``."""
    if array.dtype.kind not in kinds:
        allowed = " or ".join(_DTYPE_KINDS.get(k, k) for k in kinds)
        raise ModelFolderError(f"{where} has dtype {array.dtype}, expected {allowed}")
    shown = "(" + ", ".join("*" if p is None else str(p) for p in pattern) + ")"
    if array.ndim != len(pattern):
        raise ModelFolderError(
            f"{where} has shape {array.shape}, expected {len(pattern)} axes {shown}"
        )
    for axis, (size, want) in enumerate(zip(array.shape, pattern, strict=True)):
        if isinstance(want, int) and size != want:
            raise ModelFolderError(
                f"{where} has shape {array.shape}, expected {shown} (axis {axis})"
            )
        if isinstance(want, str):
            seen = lengths.setdefault(want, (size, where))
            if seen[0] != size:
                raise ModelFolderError(
                    f"{where} has shape {array.shape}: its length {want!r} is "
                    f"{size}, but it is {seen[0]} in {seen[1]}"
                )


def load_weights(folder: str | Path, filename: str = WEIGHTS_FILE) -> dict[str, Any]:
    """Read a PyTorch state dict from a model folder, never running code.

    ``torch.load(..., weights_only=True, map_location="cpu")``: only tensors,
    numbers, strings and containers of them load; a file that pickles anything
    else is refused. Returns the state dict; the kind checks names and shapes
    with ``module.load_state_dict(state)`` (strict), whose RuntimeError
    `load_model` reports as a `ModelFolderError`.

    Raises
    ------
    ModelFolderError
        The file is missing, unreadable, holds more than weights, or is not a
        dict.
    """
    import torch  # only the network kind needs it

    path = Path(folder) / filename
    if not path.is_file():
        raise ModelFolderError(
            f"{path}: missing; the model folder is incomplete (save the model again)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelFolderError(
            f"{path}: holds more than weights (pickled objects), refused: a model "
            f"folder never runs code when loaded ({first})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFolderError(f"{path}: not a readable weights file ({exc})") from exc
    if not isinstance(state, dict):
        raise ModelFolderError(
            f"{path}: holds a {type(state).__name__}, expected a state dict"
        )
    return state


@dataclass(frozen=True)
class ModelEntry:
    """One listed model folder."""

    name: str
    path: Path
    kind: str
    meta: dict[str, Any]


def list_models(root: str | Path = DEFAULT_MODELS_DIR) -> list[ModelEntry]:
    """Every whole model folder under ``root``, sorted by name (A and a alike).

    Hidden folders (unfinished saves) and folders whose JSON does not parse are
    left out. Leftovers of killed saves older than `STALE_SECONDS` are cleaned
    first (`clean_stale`).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    clean_stale(root)
    entries = []
    for path in sorted(root.iterdir(), key=lambda p: (p.name.lower(), p.name)):
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            meta = read_meta(path)
        except ModelFolderError:
            continue
        entries.append(ModelEntry(path.name, path, str(meta["kind"]), meta))
    return entries
