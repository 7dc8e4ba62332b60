"""Model folders: atomic save, listing, and clear errors on broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vessel_core import store


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


def test_missing_array_file_names_the_folder(tmp_path):
    folder = store.save_model(TinyModel(), tmp_path / "m")
    (folder / "arrays.npz").unlink()
    with pytest.raises(store.ModelFolderError, match=r"m: cannot load the tiny"):
        store.load_model(folder)
