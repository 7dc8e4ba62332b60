"""Tests for the command line (vessel_core.cli), on tiny datasets built in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vessel_core import cli, metrics, store
from vessel_core.io import LoadError
from vessel_core.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _vessel(shape=(12, 16)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[5, 3:13] = True
    mask[2:10, 8] = True
    return mask


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A generic dataset: train/c1 (with FOV), test/c2 (FOV estimated), test/c3
    (no vessel mask), and a text file."""
    root = tmp_path / "data"
    image = np.zeros((12, 16, 3), np.uint8)
    image[2:10, 3:13] = (180, 90, 40)
    fov = np.zeros((12, 16), np.uint8)
    fov[1:11, 2:14] = 255
    _png(root / "train" / "images" / "c1.png", image)
    _png(root / "train" / "labels" / "c1.png", _vessel().astype(np.uint8) * 255)
    _png(root / "train" / "fov" / "c1.png", fov)
    _png(root / "test" / "images" / "c2.png", image)
    _png(root / "test" / "labels" / "c2.png", _vessel().astype(np.uint8) * 255)
    _png(root / "test" / "images" / "c3.png", image)
    (root / "notes.txt").write_text("not an image")
    return root


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------
# inspect


def test_inspect_lists_cases_and_unpaired(dataset, capsys, tmp_path):
    code, out, err = _run(capsys, "inspect", dataset, "--json", tmp_path / "i.json")

    assert code == 0
    assert out.splitlines()[0].startswith("generic layout: 3 cases (1 train, 2 test)")
    assert "train/images/c1.png" in out and "train/fov/c1.png" in out
    assert "notes.txt (other)" in out
    assert "INFO: reading" in err

    result = json.loads((tmp_path / "i.json").read_text())
    by_id = {c["id"]: c for c in result["cases"]}
    assert sorted(by_id) == ["c1", "c2", "c3"]
    assert by_id["c1"]["split"] == "train" and by_id["c2"]["split"] == "test"
    assert by_id["c1"]["fov_estimated"] is False
    assert by_id["c2"]["fov_estimated"] is True
    assert by_id["c3"]["has_vessel_mask"] is False
    assert (by_id["c1"]["width"], by_id["c1"]["height"]) == (16, 12)
    assert by_id["c1"]["image"].endswith("c1.png")
    assert by_id["c1"]["vessel_mask"].endswith(os.path.join("labels", "c1.png"))
    unpaired = {Path(u["path"]).name: u for u in result["unpaired"]}
    assert unpaired["notes.txt"]["role"] == "other"
    assert unpaired["c3.png"]["role"] == "image"


def test_inspect_json_to_stdout_is_only_json(dataset, capsys):
    code, out, err = _run(capsys, "inspect", dataset, "--json", "-", "-q")
    # stderr: only the warning that these 16x12 images are tiny
    assert code == 0 and len(err.splitlines()) == 1 and "pixels a side" in err
    assert json.loads(out)["layout"] == "generic"


def test_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    code, out, err = _run(capsys, "inspect", tmp_path / "nowhere")

    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'}: no such file or folder"
    ]


def test_module_entry_point_exit_status(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vessel_core", "inspect", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--data", "x"])  # neither --pred nor --model
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data", "x", "--pred", "y", "--threshold", "1.5"])


# ---------------------------------------------------------------------------
# evaluate --pred


def test_evaluate_saved_predictions(dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    vessel = _vessel()
    grey = np.zeros((12, 16), np.uint8)
    grey[vessel] = 200
    grey[0, 0] = 140  # outside c1's FOV: a false positive that does not count
    grey[11, 15] = 90  # a low-probability background pixel
    binary = vessel.copy()
    binary[5, 3:6] = False  # three vessel pixels missed
    _png(pred / "C1_prob.png", grey)  # ids match whatever the case
    _png(pred / "c1_vessels.png", vessel.astype(np.uint8) * 255)  # _prob preferred
    _png(pred / "c2.png", binary.astype(np.uint8) * 255)
    _png(pred / "zz_prob.png", grey)  # no such case
    (pred / "readme.md").write_text("ignored: not an image")

    code, out, err = _run(
        capsys,
        "evaluate",
        "--data",
        dataset,
        "--pred",
        pred,
        "--json",
        tmp_path / "e.json",
    )

    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    rows = {row["id"]: row for row in result["cases"]}
    assert sorted(rows) == ["c1", "c2"]
    assert rows["c1"]["f1"] == 1.0 and rows["c1"]["fp"] == 0
    n_vessel = int(vessel.sum())
    assert rows["c2"]["tp"] == n_vessel - 3 and rows["c2"]["fn"] == 3
    assert result["cases_without_prediction"] == ["c3"]
    assert [Path(p).name for p in result["predictions_without_case"]] == ["zz_prob.png"]
    assert Path(result["predictions"]["c1"]).name == "C1_prob.png"
    assert result["threshold"] == 0.5
    assert "zz_prob.png matches no case" in err

    # the same figures as metrics on the arrays themselves
    c1_fov = np.zeros((12, 16), bool)
    c1_fov[1:11, 2:14] = True
    assert rows["c1"]["auc_roc"] == pytest.approx(
        metrics.score(vessel, grey, c1_fov)["auc_roc"]
    )
    pooled_tp = rows["c1"]["tp"] + rows["c2"]["tp"]
    assert result["pooled"]["tp"] == pooled_tp
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["case", "accuracy", "sensitivity"]
    assert [line.split()[0] for line in lines[1:5]] == ["c1", "c2", "mean", "pooled"]


def test_evaluate_threshold_and_split(dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    grey = np.where(_vessel(), 100, 0).astype(np.uint8)  # probability 0.39
    _png(pred / "c1_prob.png", grey)
    _png(pred / "c2_prob.png", grey)

    code, out, _ = _run(
        capsys,
        "evaluate",
        "--data",
        dataset,
        "--pred",
        pred,
        "--split",
        "test",
        "--threshold",
        "0.3",
        "--json",
        "-",
    )

    result = json.loads(out)
    assert code == 0
    assert [row["id"] for row in result["cases"]] == ["c2"]
    assert result["threshold"] == 0.3
    assert result["cases"][0]["sensitivity"] == 1.0


def test_evaluate_prediction_of_wrong_size(dataset, tmp_path, capsys):
    _png(tmp_path / "pred" / "c1.png", np.zeros((5, 5), np.uint8))

    code, _, err = _run(
        capsys, "evaluate", "--data", dataset, "--pred", tmp_path / "pred"
    )

    assert code == 2
    assert "c1.png: prediction is 5x5" in err and "16x12" in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        err.strip().splitlines()[-1]
    ]
    assert "Traceback" not in err


def test_pair_predictions_by_case_id():
    ids = ["01", "02", "10", "img1", "img10", "Case_3"]
    files = [
        Path(name)
        for name in (
            "01_test_prob.png",
            "01_test_vessels.png",
            "IMG10-pred.png",
            "img1_prob.png",
            "2.png",
            "case_3_out.png",
            "01_02.png",
            "other.png",
        )
    ]

    matched, unmatched, ignored = cli.pair_predictions(ids, files)

    assert {cid: p.name for cid, p in matched.items()} == {
        "01": "01_test_prob.png",
        "img10": "IMG10-pred.png",
        "img1": "img1_prob.png",
        "02": "2.png",
        "Case_3": "case_3_out.png",
    }
    assert [p.name for p in ignored] == ["01_test_vessels.png"]
    assert sorted(p.name for p in unmatched) == ["01_02.png", "other.png"]


def test_read_prediction(tmp_path):
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    grey = np.array([[0, 128], [255, 7]], np.uint8)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)

    as_labels = cli.read_prediction(_png(tmp_path / "l.png", labels))
    as_grey = cli.read_prediction(_png(tmp_path / "g.png", grey))

    assert as_labels.dtype == bool and as_labels.tolist() == [
        [False, True],
        [True, False],
    ]
    assert as_grey.dtype == np.uint8 and as_grey.tolist() == grey.tolist()
    with pytest.raises(LoadError, match="must be a grey image"):
        cli.read_prediction(_png(tmp_path / "c.png", colour))


# ---------------------------------------------------------------------------
# train, evaluate --model, predict (with a tiny model kind registered for the test)


class GreenModel:
    """Probability = green channel / 255 * gain; records how it was trained."""

    kind = "green-test"
    SETTING_CHOICES = {"mode": ["plain", "inverted"]}
    interrupt_fit = False

    def __init__(self, gain=1.0, clip=True, sizes=(3, 5), mode="plain", seed=0):
        self.settings = {
            "gain": gain,
            "clip": clip,
            "sizes": list(sizes),
            "mode": mode,
            "seed": seed,
        }
        self.threshold = 0.25
        self.meta = {"settings": self.settings}

    @classmethod
    def default_settings(cls):
        return {"gain": 1.0, "clip": True, "sizes": (3, 5), "mode": "plain", "seed": 0}

    def fit(self, cases, selection=None, on_progress=None, stop=None):
        if self.interrupt_fit:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # a model polls its stop flag between steps
                if stop.is_set():
                    break
                time.sleep(0.001)
        self.meta["train_cases"] = [c.id for c in cases]
        self.meta["selection"] = None if selection is None else selection.describe()
        self.meta["stopped"] = bool(stop is not None and stop.is_set())
        on_progress(Progress("fit", 1, 1, {}, "fitted the green model"))
        return self

    def predict_proba(self, case):
        green = case.image[..., 1].astype(np.float32) / 255 * self.settings["gain"]
        return np.clip(green, 0, 1).astype(np.float32)

    def save_files(self, folder):
        (folder / "green.txt").write_text("no arrays")

    @classmethod
    def load_files(cls, folder, meta):
        model = cls(**meta["settings"])
        model.threshold = meta["threshold"]
        model.meta = {**meta, "settings": model.settings}
        return model


@pytest.fixture
def green_kind(monkeypatch):
    store._register_builtin_kinds()  # so registering ours does not hide them
    monkeypatch.setitem(store._KINDS, "green-test", lambda: GreenModel)
    monkeypatch.setattr(GreenModel, "interrupt_fit", False)
    return GreenModel


def test_train_settings_flags_and_sampling(dataset, tmp_path, capsys, green_kind):
    out_dir = tmp_path / "models" / "g1"

    code, out, err = _run(
        capsys,
        "train",
        "green-test",
        "--data",
        dataset,
        "--out",
        out_dir,
        "--gain",
        "2.5",
        "--no-clip",
        "--sizes",
        "7,9",
        "--mode",
        "inverted",
        "--seed",
        "4",
        "--strategy",
        "random",
        "--sampling",
        "drop_fraction=0.5",
    )

    assert code == 0, err
    assert out.startswith(f"saved green-test model to {out_dir}: 1 training case(s)")
    meta = store.read_meta(out_dir)
    assert meta["settings"] == {
        "gain": 2.5,
        "clip": False,
        "sizes": [7, 9],
        "mode": "inverted",
        "seed": 4,
    }
    assert meta["train_cases"] == ["c1"]
    assert meta["selection"]["strategy"] == "random"
    assert meta["selection"]["drop_fraction"] == 0.5
    assert meta["selection"]["seed"] == 4
    assert "fitted the green model" in err


def test_train_defaults_and_bad_choice(dataset, tmp_path, capsys, green_kind):
    code, _, err = _run(
        capsys, "train", "green-test", "--data", dataset, "--out", tmp_path / "m"
    )
    assert code == 0, err
    meta = store.read_meta(tmp_path / "m")
    assert meta["settings"]["gain"] == 1.0 and meta["selection"] is None

    with pytest.raises(SystemExit) as exc:
        cli.main(
            ["train", "green-test", "--data", str(dataset), "--out", "x", "--mode", "z"]
        )
    assert exc.value.code == 2
    assert "invalid choice: 'z'" in capsys.readouterr().err


def test_train_refuses_a_taken_name_before_training(
    dataset, tmp_path, capsys, green_kind
):
    out_dir = tmp_path / "m"
    args = ("train", "green-test", "--data", dataset, "--out", out_dir)
    assert _run(capsys, *args)[0] == 0
    first = store.read_meta(out_dir)

    code, _, err = _run(capsys, *args, "--gain", "3")
    assert code == 2 and "already exists; pass --overwrite" in err
    assert store.read_meta(out_dir) == first

    code, _, err = _run(capsys, *args, "--gain", "3", "--overwrite")
    assert code == 0, err
    assert store.read_meta(out_dir)["settings"]["gain"] == 3.0


def test_train_unknown_kind_and_no_cases(dataset, tmp_path, capsys, green_kind):
    code, _, err = _run(
        capsys, "train", "nope", "--data", dataset, "--out", tmp_path / "m"
    )
    assert code == 2 and "unknown model kind 'nope'" in err

    code, _, err = _run(
        capsys,
        "train",
        "green-test",
        "--data",
        dataset,
        "--out",
        tmp_path / "m",
        "--sampling",
        "drop_fraction=0.5",
    )
    assert code == 2 and "--sampling needs --strategy" in err


def test_train_checks_the_start_model_before_reading_the_data(tmp_path, capsys):
    # the data folder does not exist either: the start model is told first
    code, _, err = _run(
        capsys,
        "train",
        "resnet34",
        "--data",
        tmp_path / "no-data",
        "--out",
        tmp_path / "m",
        "--init-from",
        tmp_path / "nowhere",
    )
    assert code == 2 and "nowhere: no such folder" in err and "no-data" not in err


def test_train_ctrl_c_stops_and_saves(dataset, tmp_path, capsys, green_kind):
    green_kind.interrupt_fit = True
    # what it was (ignored, where the suite runs in a background job)
    before = signal.getsignal(signal.SIGINT)

    code, out, err = _run(
        capsys, "train", "green-test", "--data", dataset, "--out", tmp_path / "m"
    )

    assert code == 0, err
    assert "stopped early" in out
    assert store.read_meta(tmp_path / "m")["stopped"] is True
    assert signal.getsignal(signal.SIGINT) is before  # given back


def test_evaluate_model_and_predict(dataset, tmp_path, capsys, green_kind):
    model_dir = tmp_path / "models" / "g"
    _run(capsys, "-q", "train", "green-test", "--data", dataset, "--out", model_dir)

    code, out, err = _run(
        capsys, "evaluate", "--model", model_dir, "--data", dataset, "--json", "-"
    )
    assert code == 0, err
    result = json.loads(out)
    assert [row["id"] for row in result["cases"]] == ["c2"]  # test split by default
    assert result["threshold"] == 0.25  # the model's
    assert result["seconds_per_image"] >= 0.0
    assert result["kind"] == "green-test"
    assert result["trained_on"] == [] and "optimistic" not in err

    # scored on its own training case: said, and kept in the JSON
    code, out, err = _run(
        capsys,
        "evaluate",
        "--model",
        model_dir,
        "--data",
        dataset,
        "--split",
        "train",
        "--json",
        "-",
    )
    assert code == 0, err
    assert json.loads(out)["trained_on"] == ["c1"]
    assert "1 of the 1 cases (c1) are images" in err and "optimistic" in err

    images = tmp_path / "photos"
    photo = np.zeros((10, 14, 3), np.uint8)
    photo[2:8, 2:12] = (200, 102, 30)  # green 102: probability 0.4
    photo[4, 4:9] = (200, 51, 30)  # green 51: 0.2, under the 0.25 threshold
    _png(images / "eye.png", photo)
    (images / "eye.txt").write_text("not an image")
    code, out, err = _run(
        capsys, "predict", "--model", model_dir, images, "--out", tmp_path / "out"
    )
    assert code == 0, err
    prob = np.asarray(Image.open(tmp_path / "out" / "eye_prob.png"))
    vessels = np.asarray(Image.open(tmp_path / "out" / "eye_vessels.png"))
    assert prob.shape == vessels.shape == (10, 14)
    assert prob[5, 6] == 102 and vessels[5, 6] == 255
    assert prob[4, 6] == 51 and vessels[4, 6] == 0
    assert set(np.unique(vessels)) <= {0, 255}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "eye_prob.png",
        "eye_vessels.png",
    ]

    # a bad file named among good ones costs only itself
    bad = tmp_path / "notanimage.png"
    bad.write_text("hello")
    code, out, err = _run(
        capsys,
        "predict",
        "--model",
        model_dir,
        bad,
        images / "eye.png",
        "--out",
        tmp_path / "out2",
    )
    assert code == 1
    assert "notanimage.png" in err and "not an image" in err
    assert err.count("notanimage.png") == 1  # told once
    assert "for 1 image(s)" in out
    assert (tmp_path / "out2" / "eye_prob.png").is_file()

    # nothing predicted at all: an error (2), not a "wrote 0 file(s)" line
    code, out, err = _run(
        capsys, "predict", "--model", model_dir, bad, "--out", tmp_path / "out3"
    )
    assert code == 2 and "wrote" not in out
    assert "no image could be predicted" in err and "notanimage.png" in err


def test_resnet_prediction_flags_refuse_other_models(
    dataset, tmp_path, capsys, green_kind
):
    model_dir = tmp_path / "models" / "g"
    _run(capsys, "-q", "train", "green-test", "--data", dataset, "--out", model_dir)

    code, _, err = _run(
        capsys, "evaluate", "--model", model_dir, "--data", dataset, "--flips", "4"
    )
    assert code == 2
    assert "--flips only applies to a ResNet model" in err and "green-test" in err

    code, _, err = _run(
        capsys, "evaluate", "--pred", tmp_path, "--data", dataset, "--precision", "int8"
    )
    assert code == 2 and "--precision needs --model" in err

    with pytest.raises(SystemExit):  # argparse: not one of 1, 2, 4
        cli.build_parser().parse_args(
            ["predict", "--model", "m", "x", "--out", "o", "--flips", "3"]
        )


def test_evaluate_missing_model_is_one_line(dataset, tmp_path, capsys):
    code, _, err = _run(
        capsys, "evaluate", "--model", tmp_path / "nope", "--data", dataset
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert "nope: no such folder" in err


def test_settings_flags_from_defaults(capsys):
    class Kind:
        SETTING_CHOICES = {
            "channels": ["red", "green", "blue"],
            "loss": ["bce", "dice"],
        }

        @classmethod
        def default_settings(cls):
            return {
                "n_neighbors": 5,
                "channels": ("green",),
                "loss": "bce",
                "use_clahe": False,
                "patch_size": None,
            }

    parser = cli.build_parser(Kind)
    base = ["train", "k", "--data", "d", "--out", "o"]

    args = parser.parse_args(
        base + ["--n-neighbors", "7", "--channels", "green,blue", "--use-clahe"]
    )
    assert cli._settings_from(args, Kind) == {
        "n_neighbors": 7,
        "channels": ("green", "blue"),
        "loss": "bce",
        "use_clahe": True,
        "patch_size": None,
    }
    assert parser.parse_args(base + ["--patch-size", "9"]).setting__patch_size == 9
    for bad in (["--channels", "pink"], ["--loss", "l1"], ["--n-neighbors", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(base + bad)
    assert "pink not among red, green, blue" in capsys.readouterr().err


def test_train_help_explains_each_setting(capsys):
    from vessel_core.knn import KNNModel

    with pytest.raises(SystemExit):
        cli.build_parser(KNNModel).parse_args(["train", "knn", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Run a second stage (auto-context)" in text
    assert "(default: True)" in text
