"""Model folders: atomic save, listing, and clear errors on broken folders."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from vessel_core import store

ROOT = Path(__file__).resolve().parent.parent


class TinyModel:
    """A model kind with one array, registered for these tests only."""

    kind = "tiny"

    def __init__(self, values=(1.0, 2.0), fail_on_save=False):
        self.values = np.asarray(values, np.float32)
        self.threshold = 0.25
        self.meta = {"settings": {"n": len(self.values)}}
        self.fail_on_save = fail_on_save

    def save_files(self, folder: Path) -> None:
        np.savez(folder / "arrays.npz", values=self.values)
        if self.fail_on_save:
            raise OSError("No space left on device")

    @classmethod
    def load_files(cls, folder: Path, meta: dict):
        with np.load(folder / "arrays.npz", allow_pickle=False) as z:
            model = cls(z["values"])
        model.threshold = meta["threshold"]
        return model


@pytest.fixture(autouse=True)
def _tiny_kind():
    store.register_kind("tiny", lambda: TinyModel)
    yield
    store._KINDS.pop("tiny", None)


def test_delete_model_removes_a_model_folder_whole_and_refuses_the_rest(tmp_path):
    keep = store.save_model(TinyModel([1.0]), tmp_path / "keep")
    gone = store.save_model(TinyModel([2.0]), tmp_path / "gone")
    store.delete_model(gone)
    assert not gone.exists()
    assert [e.name for e in store.list_models(tmp_path)] == ["keep"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no leftover
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    for folder in (tmp_path / "plain", tmp_path / "nowhere"):
        with pytest.raises(store.ModelFolderError, match="not a saved model folder"):
            store.delete_model(folder)
    (tmp_path / "link").symlink_to(keep)
    with pytest.raises(store.ModelFolderError, match="not a saved model folder"):
        store.delete_model(tmp_path / "link")
    assert (tmp_path / "plain" / "notes.txt").exists() and keep.is_dir()
    # the shipped model stays, read-only to the app
    shipped = store.DEFAULT_MODELS_DIR / "resnet34-full"
    with pytest.raises(store.ModelFolderError, match="the project ships this model"):
        store.delete_model(shipped)
    assert (shipped / "model.json").is_file()


def test_round_trip_and_listing(tmp_path):
    folder = store.save_model(TinyModel([3.0, 4.0]), tmp_path / "m1")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["kind"] == "tiny" and meta["name"] == "m1"
    loaded = store.load_model(folder)
    np.testing.assert_array_equal(loaded.values, [3.0, 4.0])
    assert loaded.threshold == 0.25
    assert [e.name for e in store.list_models(tmp_path)] == ["m1"]


def test_builtin_kinds_stay_known_after_a_custom_kind():
    assert store.model_class("tiny") is TinyModel
    with pytest.raises(ValueError, match="unknown model kind 'nope'.*knn"):
        store.model_class("nope")


def test_failed_save_keeps_the_previous_model(tmp_path):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    with pytest.raises(OSError, match="No space"):
        store.save_model(
            TinyModel([9.0], fail_on_save=True), tmp_path / "m", overwrite=True
        )
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_replacing_a_model_leaves_no_trash(tmp_path):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    store.save_model(TinyModel([2.0]), tmp_path / "m", overwrite=True)
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, [2.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_half_written_folders_are_not_listed(tmp_path):
    store.save_model(TinyModel(), tmp_path / "good")
    (tmp_path / ".tmp-good-1234").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    assert [e.name for e in store.list_models(tmp_path)] == ["good"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no model.json"),
        ("{oops", "not valid JSON"),
        ('{"name": "x"}', "has no 'kind'"),
        ('{"kind": "martian"}', "unknown model kind 'martian'"),
    ],
)
def test_broken_folders_give_clear_errors(tmp_path, content, match):
    folder = tmp_path / "bad"
    folder.mkdir()
    if content is not None:
        (folder / "model.json").write_text(content)
    with pytest.raises(store.ModelFolderError, match=match):
        store.load_model(folder)


def test_models_are_listed_by_name_whatever_its_case(tmp_path):
    for name in ("b-two", "A-one", "a-three", "C-four"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text('{"kind": "knn"}')
    names = [e.name for e in store.list_models(tmp_path)]
    assert names == ["A-one", "a-three", "b-two", "C-four"]


def test_a_missing_folder_is_told_as_missing(tmp_path):
    with pytest.raises(store.ModelFolderError, match=r"gone: no such folder"):
        store.read_meta(tmp_path / "gone")


def test_missing_array_file_names_the_folder(tmp_path):
    folder = store.save_model(TinyModel(), tmp_path / "m")
    (folder / "arrays.npz").unlink()
    with pytest.raises(store.ModelFolderError, match=r"m: cannot load the tiny"):
        store.load_model(folder)


# ---------------------------------------------------------------------------------
# Replacing a model: one atomic exchange on Linux, two renames elsewhere


@pytest.fixture
def renames(monkeypatch):
    """Every ``(source name, target name)`` that os.rename is asked for."""
    seen: list[tuple[str, str]] = []
    real = os.rename

    def spy(src, dst, *args, **kwargs):
        seen.append((Path(src).name, Path(dst).name))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", spy)
    return seen


def moved_aside(renames: list[tuple[str, str]]) -> list[str]:
    return [dst for _src, dst in renames if dst.startswith(".trash-")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2: Linux")
def test_replacing_exchanges_the_folders_in_one_step_here(
    tmp_path, monkeypatch, renames
):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    assert store._renameat2 is not None, "glibc >= 2.28 exports renameat2"
    answers: list[bool] = []
    real = store._exchange

    def exchange(a, b):
        answers.append(real(a, b))
        return answers[-1]

    monkeypatch.setattr(store, "_exchange", exchange)
    store.save_model(TinyModel([2.0]), tmp_path / "m", overwrite=True)
    assert answers == [True]  # this machine's filesystem exchanges
    assert moved_aside(renames) == []  # the old model never left the name
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, [2.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize(
    "unavailable",
    ["no renameat2", "EINVAL", "ENOSYS"],
)
def test_replacing_falls_back_to_two_renames(
    tmp_path, monkeypatch, renames, unavailable
):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    if unavailable == "no renameat2":  # another OS, or glibc before 2.28
        monkeypatch.setattr(store, "_renameat2", None)
    else:  # a filesystem that cannot exchange
        code = getattr(errno, unavailable)

        def refuse(*args):
            ctypes.set_errno(code)
            return -1

        monkeypatch.setattr(store, "_renameat2", refuse)
    store.save_model(TinyModel([2.0]), tmp_path / "m", overwrite=True)
    assert len(moved_aside(renames)) == 1  # the old model went aside first
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, [2.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_exchange_refused_for_another_reason_keeps_the_old_model(
    tmp_path, monkeypatch
):
    store.save_model(TinyModel([1.0]), tmp_path / "m")

    def refuse(*args):
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(store, "_renameat2", refuse)
    with pytest.raises(PermissionError, match=r"\.tmp-m-.* -> .*/m"):
        store.save_model(TinyModel([2.0]), tmp_path / "m", overwrite=True)
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, [1.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class MeetingModel(TinyModel):
    """A TinyModel whose save waits for the other savers once its files are written."""

    def __init__(self, values, barrier: threading.Barrier):
        super().__init__(values)
        self.barrier = barrier

    def save_files(self, folder: Path) -> None:
        super().save_files(folder)
        self.barrier.wait(timeout=20)


@pytest.mark.parametrize("way", ["exchange", "two renames"])
def test_several_savers_replacing_at_once_leave_one_whole_model(
    tmp_path, monkeypatch, way
):
    if way == "two renames":
        monkeypatch.setattr(store, "_renameat2", None)
    store.save_model(TinyModel([0.0]), tmp_path / "m")
    values = [1.0, 2.0, 3.0, 4.0]
    barrier = threading.Barrier(len(values))  # all written: now replace at once
    errors: list[BaseException] = []

    def save(value: float) -> None:
        try:
            store.save_model(
                MeetingModel([value], barrier), tmp_path / "m", overwrite=True
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    (won,) = store.load_model(tmp_path / "m").values  # one saver's whole model
    assert won in values
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


PAUSED_SAVER = """
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from vessel_core import store

class Tiny:
    kind, threshold, meta = "tiny", 0.25, {"settings": {"n": 1}}

    def save_files(self, folder):
        np.savez(folder / "arrays.npz", values=np.float32([2.0]))

exchange = store._exchange

def paused(a, b):
    if sys.argv[3] == "before":
        print("exchanging", flush=True)
        time.sleep(600)
    done = exchange(a, b)
    print("exchanged" if done else "not exchanged", flush=True)
    time.sleep(600)
    return done

store._exchange = paused
store.save_model(Tiny(), Path(sys.argv[2]), overwrite=True)
print("saved without an exchange", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2: Linux")
@pytest.mark.parametrize(
    ("killed", "said", "listed", "left"),
    [("before", "exchanging", [1.0], [2.0]), ("after", "exchanged", [2.0], [1.0])],
)
def test_a_save_killed_at_the_exchange_leaves_one_whole_model(
    tmp_path, killed, said, listed, left
):
    store.save_model(TinyModel([1.0]), tmp_path / "m")
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_SAVER, str(ROOT), str(tmp_path / "m"), killed],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline().strip()
    finally:
        child.kill()  # SIGKILL, where it paused
        child.wait(timeout=30)
        child.stdout.close()
    assert line == said and child.returncode == -signal.SIGKILL

    # the name is never missing: the old model before the exchange, the new after
    assert [e.name for e in store.list_models(tmp_path)] == ["m"]
    np.testing.assert_array_equal(store.load_model(tmp_path / "m").values, listed)
    # the other model waits whole under the temporary name (no .trash- folder)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "m"]
    assert [p.name[:7] for p in leftovers] == [".tmp-m-"]
    np.testing.assert_array_equal(store.load_model(leftovers[0]).values, left)
    assert store.clean_stale(tmp_path, max_age=0) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_setting_help_reads_the_parameters_section():
    class Example:
        """A model.

        Parameters
        ----------
        alpha : float, default=1.0
            How much [1]_ of
            the thing.
        low, high : int, default=1, 2
        beta : bool
            Shared text.

        Attributes
        ----------
        gamma : int
            Not a setting.
        """

    from vessel_core.store import setting_help

    assert setting_help(Example) == {
        "alpha": "How much of the thing.",
        "beta": "Shared text.",
    }
    from vessel_core.knn import KNNModel

    assert "second stage" in setting_help(KNNModel)["context"]
