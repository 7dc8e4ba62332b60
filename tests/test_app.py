"""The app's pages through Streamlit's AppTest: widgets driven by key.

Each test starts a fresh app session on the built-in sample or on two DRIVE cases;
models are saved into a temporary folder ($VESSEL_MODELS_DIR).
"""

from __future__ import annotations

import io as io_module
import re
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from vessel_core import io, samples, sampling, store
from vessel_core.cases import split_cases

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DRIVE_FILES = (
    "training/images/21_training.tif",
    "training/1st_manual/21_manual1.gif",
    "training/mask/21_training_mask.gif",
    "test/images/01_test.tif",
    "test/1st_manual/01_manual1.gif",
    "test/mask/01_test_mask.gif",
)


@pytest.fixture(autouse=True)
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def sample():
    return samples.builtin_sample()


@pytest.fixture
def drive_uploads(drive_root):
    """Two DRIVE cases (21 train, 01 test) as a browser uploads them: bare names."""
    return [
        (Path(name).name, (drive_root / name).read_bytes(), "image/tiff")
        for name in DRIVE_FILES
    ]


#: Seconds one page run may take before AppTest fails it: generous, because a run
#: beside a fit on a busy 2-core machine once took over 60 s.
RUN_TIMEOUT = 180


def app(page: str | None = None, **state) -> AppTest:
    """A fresh app session, with ``state`` in session_state, run on ``page``."""
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def as_drawn(elements) -> str:
    """The elements' text as drawn: Markdown's backslash escapes gone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", texts(elements))


def run_until(at: AppTest, done, timeout: float = 120.0) -> AppTest:
    """Rerun the app (as the page's timer would) until ``done(at)`` or timeout."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, "timed out: " + texts(at.markdown)
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception
    return at


def score(at: AppTest) -> AppTest:
    """Press *Score the models* and rerun (as the progress timer would) until the
    scoring, which runs in a thread of its own, is shown or has failed."""
    at.button(key="cmp_run").click().run()
    return scored(at)


def scored(at: AppTest) -> AppTest:
    return run_until(
        at,
        lambda at: (
            "Accuracy alone misleads" in texts(at.warning)
            or "Scoring stopped" in texts(at.warning)
            or at.error
        ),
        timeout=300,
    )


QUICK_KNN = {"k_max": 5, "n_folds": 3, "max_train_samples": 2000, "threshold_cases": 3}


@pytest.fixture(scope="module")
def sample_models(sample, tmp_path_factory):
    """The classic filters and a quick KNN fitted on the sample, in their folder."""
    from vessel_core.classic import ClassicFilters
    from vessel_core.knn import KNNModel

    folder = tmp_path_factory.mktemp("models")
    train = split_cases(sample, "train")
    selection = sampling.select(train, "near_vessels")
    store.save_model(ClassicFilters().fit(train, selection), folder / "classic-sample")
    store.save_model(KNNModel(**QUICK_KNN).fit(train, selection), folder / "knn-sample")
    return folder


def _sidebar_deleter():
    """The sidebar's model deleter alone (AppTest draws the sidebar on a first
    run only)."""
    import streamlit as st

    from pages import _ui

    _ui._delete_models(_ui.model_refs())
    st.markdown("\n".join(r.name for r in _ui.model_refs()))


def test_the_sidebar_deletes_saved_models_but_not_the_shipped_one(
    sample, models_dir, monkeypatch
):
    from vessel_core.classic import ClassicFilters

    train = split_cases(sample, "train")
    for name in ("old-a", "old-b"):
        model = ClassicFilters(pixels_per_case=500).fit(train)
        store.save_model(model, models_dir / name)
    at = AppTest.from_function(_sidebar_deleter, default_timeout=RUN_TIMEOUT).run()
    assert not at.exception, at.exception
    chooser = at.multiselect(key="delete_models_0")
    assert chooser.options == ["old-a (classic)", "old-b (classic)"]
    chooser.set_value(["old-a (classic)"]).run()
    assert at.button(key="delete_go").disabled  # not confirmed yet
    at.checkbox(key="delete_sure_0").check().run()
    at.button(key="delete_go").click().run()
    assert not at.error, as_drawn(at.error)
    assert sorted(p.name for p in models_dir.iterdir()) == ["old-b"]
    assert "old-a" not in texts(at.markdown)
    # the form starts afresh: nothing chosen, not ticked, so nothing to press
    chooser = at.multiselect(key="delete_models_1")
    assert chooser.options == ["old-b (classic)"] and chooser.value == []
    assert not at.checkbox(key="delete_sure_1").value
    assert at.button(key="delete_go").disabled
    # in the project's own folder, the shipped model is never offered
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(store.DEFAULT_MODELS_DIR))
    at = AppTest.from_function(_sidebar_deleter, default_timeout=RUN_TIMEOUT).run()
    assert "resnet34-full" in texts(at.markdown)
    offered = at.multiselect[0].options if at.multiselect else []
    assert not [o for o in offered if o.startswith("resnet34-full")]


def test_home_says_what_to_do_and_the_sidebar_shows_the_data(sample):
    at = app()
    assert "Retinal vessel extraction" in texts(at.title)
    assert "Data" in texts(at.markdown)
    assert "Nothing yet." in texts(at.sidebar.markdown)

    at = app(cases=sample, dataset="built-in sample")
    sidebar = texts(at.sidebar.markdown)
    assert "5 cases" in sidebar and "3 train / 2 test" in sidebar
    assert "1 without a vessel mask" in sidebar


def test_data_page_loads_the_builtin_sample_and_keeps_a_split_change():
    at = app("pages/data.py")
    at.button(key="load_sample").click().run()
    assert not at.exception
    assert "Loaded 5 cases" in texts(at.success)
    assert "1 case (retina) has no manual vessel mask: it can be segmented" in (
        texts(at.info)
    )
    table = at.dataframe[0].value
    assert list(table["id"]) == [
        "synth-01",
        "synth-02",
        "synth-03",
        "synth-04",
        "retina",
    ]
    assert list(table["split"]) == ["train", "train", "train", "test", "test"]
    assert table.loc[4, "vessel mask"] == "none" and table.loc[4, "FOV estimated"]

    # move synth-01 to test through the editor's edit state
    at.session_state["split_editor_1"] = {
        "edited_rows": {0: {"split": "test"}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    cases = at.session_state["cases"]
    assert [c.split for c in cases] == ["test", "train", "train", "test", "test"]

    at.switch_page("pages/home.py").run()
    at.switch_page("pages/data.py").run()
    assert list(at.dataframe[0].value["split"])[:2] == ["test", "train"]


def test_data_page_pairs_uploaded_drive_files_and_lists_refused_ones(drive_uploads):
    at = app("pages/data.py")
    at.radio(key="data_source").set_value("Upload files").run()
    uploads = [*drive_uploads, ("notes.txt", b"not an image", "text/plain")]
    at.file_uploader(key="upload_files").set_value(uploads).run()
    at.button(key="load_uploads").click().run()
    assert not at.exception and not at.error, as_drawn(at.error)

    assert "Loaded 2 cases (DRIVE): 1 train, 1 test." in texts(at.success)
    cases, refused = at.dataframe[0].value, at.dataframe[1].value
    assert list(cases["id"]) == ["01", "21"]
    assert list(cases["size"]) == ["565 x 584", "565 x 584"]
    assert list(cases["FOV mask"]) == ["01_test_mask.gif", "21_training_mask.gif"]
    assert list(refused["file"]) == ["notes.txt"]  # as the user named it
    assert "not an image" in refused.loc[0, "why"]


def test_data_page_opens_an_uploaded_zip_of_a_dataset(drive_root):
    buffer = io_module.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in DRIVE_FILES:
            zf.writestr(f"DRIVE/{name}", (drive_root / name).read_bytes())
    at = app("pages/data.py")
    at.radio(key="data_source").set_value("Upload files").run()
    at.file_uploader(key="upload_files").set_value(
        ("drive.zip", buffer.getvalue(), "application/zip")
    ).run()
    at.button(key="load_uploads").click().run()
    assert not at.error, as_drawn(at.error)
    assert "Loaded 2 cases (DRIVE): 1 train, 1 test." in texts(at.success)


def test_data_page_names_a_bad_file_and_keeps_what_was_loaded(sample):
    at = app("pages/data.py", cases=sample, dataset="built-in sample")
    at.radio(key="data_source").set_value("Upload files").run()
    at.file_uploader(key="upload_files").set_value(
        [("21_training.tif", b"garbage", "image/tiff")]
    ).run()
    at.button(key="load_uploads").click().run()
    assert not at.exception
    assert "21_training.tif" in as_drawn(at.error)
    assert len(at.session_state["cases"]) == 5


def test_data_page_says_when_the_data_folder_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("VESSEL_DATA_DIR", str(tmp_path / "nowhere"))
    at = app("pages/data.py")
    at.radio(key="data_source").set_value("Folder on the server").run()
    warned = as_drawn(at.warning)
    assert f"The data folder `{tmp_path / 'nowhere'}` does not exist" in warned
    assert "VESSEL_DATA_DIR=/path/to/data make run" in warned


def test_data_page_opens_a_server_folder_only_under_the_data_folder(
    drive_root, tmp_path, monkeypatch
):
    # a DRIVE-shaped folder holding two cases, under an allowed data folder
    data = tmp_path / "data"
    for name in DRIVE_FILES:
        target = data / "DRIVE2" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((drive_root / name).read_bytes())
    monkeypatch.setenv("VESSEL_DATA_DIR", str(data))

    at = app("pages/data.py")
    at.radio(key="data_source").set_value("Folder on the server").run()
    at.text_input(key="server_folder").set_value("../..").run()
    at.button(key="load_folder").click().run()
    assert "outside the data folder" in as_drawn(at.error)
    assert "cases" not in at.session_state

    at.text_input(key="server_folder").set_value("DRIVE2").run()
    at.button(key="load_folder").click().run()
    assert not at.error, as_drawn(at.error)
    assert "Loaded 2 cases (DRIVE)" in texts(at.success)


def test_undersampling_page_stores_the_choice_and_counts_the_pixels(sample):
    at = app("pages/undersampling.py", cases=sample, dataset="built-in sample")
    assert not at.error
    assert at.selectbox(key="us_strategy").value == "near_vessels"

    at.selectbox(key="us_strategy").set_value("ratio").run()
    at.number_input(key="us_ratio_background_per_vessel").set_value(2.0).run()
    at.number_input(key="us_ratio_max_per_case").set_value(3000).run()
    assert not at.exception
    choice = at.session_state["sampling_choice"]
    assert choice == {
        "strategy": "ratio",
        "settings": {"background_per_vessel": 2.0, "max_per_case": 3000},
        "seed": 0,
    }
    # 3 training cases, each capped at 3000 pixels: 1000 vessel + 2000 background
    assert "Training pixels: **9,000**" in texts(at.markdown)
    assert "vessel share" in texts(at.markdown) and "**33%** after" in texts(
        at.markdown
    )
    assert len(at.get("plotly_chart")) == 2

    # the choice survives a page switch
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/undersampling.py").run()
    assert at.selectbox(key="us_strategy").value == "ratio"
    assert at.number_input(key="us_ratio_max_per_case").value == 3000


@pytest.mark.parametrize("address, allowed", [("127.0.0.1", True), ("0.0.0.0", False)])
def test_server_folders_are_off_when_listening_beyond_this_machine(
    address, allowed, monkeypatch
):
    from streamlit import config

    from pages import _ui

    monkeypatch.delenv("VESSEL_DATA_DIR", raising=False)
    before = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        root = _ui.data_root()
    finally:
        config.set_option("server.address", before)
    assert (
        (root == (ROOT.parent / "shared" / "data").resolve())
        if allowed
        else root is None
    )


def test_allowed_folder_refuses_links_out_of_the_data_folder(tmp_path):
    from pages import _ui

    (tmp_path / "data" / "DRIVE").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "sneaky").symlink_to(tmp_path / "outside")
    root = (tmp_path / "data").resolve()
    assert _ui.allowed_folder("DRIVE", root) == root / "DRIVE"
    assert _ui.allowed_folder(str(root / "DRIVE"), root) == root / "DRIVE"
    with pytest.raises(ValueError, match="outside the data folder"):
        _ui.allowed_folder("sneaky", root)
    with pytest.raises(ValueError, match="does not exist"):
        _ui.allowed_folder("STARE", root)


def test_train_page_fits_a_knn_in_the_background_and_saves_it(sample, models_dir):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    assert at.radio(key="train_kind").value == "knn"
    for name, value in {**QUICK_KNN, "n_folds": 4}.items():  # 4 folds, 3 cases
        at.number_input(key=f"train_knn_{name}").set_value(value)
    at.text_input(key="train_name_knn").set_value("my knn")
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, as_drawn(at.error)

    # switching pages while it trains neither stops nor restarts it, and the
    # settings are still there on the way back
    at.switch_page("pages/data.py").run()
    at.switch_page("pages/train.py").run()
    assert at.number_input(key="train_knn_k_max").value == QUICK_KNN["k_max"]
    run_until(at, lambda at: "Finished" in texts(at.success))

    assert "saved as **my-knn**" in texts(at.success)
    assert "'my knn' was changed to 'my-knn'" in texts(at.info)
    assert (models_dir / "my-knn" / "model.json").is_file()
    assert len(at.get("plotly_chart")) >= 1  # the CV chart
    cv = texts(at.caption)
    assert "The best mean is at k = " in cv and "one standard error" in cv
    assert "Only 3 folds: one per training case, fewer than *n folds* (4)." in cv
    from pages import _ui

    jobs = _ui._job_manager(str(models_dir)).jobs(at.session_state["session_id"])
    assert [j.status for j in jobs] == ["done"]
    assert {e.step for e in jobs[0].events()} >= {"features", "cv", "context", "done"}
    # each setting explains itself, from the model's own documentation
    assert "second stage" in at.checkbox(key="train_knn_context").help


def test_status_line_says_the_epoch_and_batch_after_every_resnet_batch():
    from pages import _ui
    from vessel_core.progress import Progress

    counts = {"epoch": 2, "epochs": 12, "batch": 7, "batches": 80, "lr": 1e-3}
    quiet = Progress("batch", 87, 960, {"loss": 0.51234, **counts})  # no message
    assert _ui.status_line(quiet) == "epoch 2/12 batch 7/80: loss 0.5123"
    folds = Progress("cv", 3, 10, {"k": 5.0}, "k=5 fold 3")
    assert _ui.status_line(folds) == "k=5 fold 3"
    assert _ui.status_line(Progress("features", 1, 4, {})) == "features 1/4"
    assert _ui.status_line(None) == "Starting..."


def test_a_comparison_starts_with_one_model_of_each_kind_first():
    from pages import _ui

    def ref(name, kind, variant=False):
        settings = (("flips", 4),) if variant else ()
        return _ui.ModelRef(name, name, kind, "saved", Path(name), "", settings)

    refs = [
        ref("knn-a", "knn"),
        ref("knn-b", "knn"),
        ref("knn-c", "knn"),
        ref("knn-d", "knn"),
        ref("classic-x", "classic"),
        ref("resnet34-full", "resnet34"),
        ref("resnet34-full best", "resnet34", variant=True),
    ]
    # four KNN fits no longer push the shipped ResNet out
    assert _ui.default_models(refs) == [
        "knn-a (knn)",
        "knn-b (knn)",
        "classic-x (classic)",
        "resnet34-full (resnet34)",
    ]
    assert _ui.default_models(refs[:2]) == ["knn-a (knn)", "knn-b (knn)"]

    # nor four fine-tuned ResNets the shipped one they came from (same kind)
    tuned = [ref(f"ft-{i}", "resnet34") for i in range(4)]
    shipped = _ui.ModelRef(
        "full",
        "resnet34-full",
        "resnet34",
        "saved",
        store.DEFAULT_MODELS_DIR / "resnet34-full",
    )
    elsewhere = _ui.ModelRef(  # the same name in another folder is not shipped
        "copy", "resnet34-full", "resnet34", "saved", Path("/elsewhere/resnet34-full")
    )
    assert _ui.default_models([*tuned, elsewhere, shipped]) == [
        "ft-0 (resnet34)",
        "ft-1 (resnet34)",
        "ft-2 (resnet34)",
        "resnet34-full (resnet34)",
    ]
    assert _ui.is_shipped(shipped) and not _ui.is_shipped(elsewhere)

    # Results' one model: this session's first, else the shipped one, else the first
    scratch = ref("B-scratch", "resnet34")
    assert _ui.first_model([scratch, shipped]) == "resnet34-full (resnet34)"
    mine = _ui.ModelRef("job:1", "mine", "knn", "this session only", None, "1")
    assert _ui.first_model([scratch, shipped, mine]) == "mine (knn, this session only)"
    assert _ui.first_model([scratch]) == "B-scratch (resnet34)"

    # this session's newest fits come first: the model just trained is in
    def own(name, kind):
        return _ui.ModelRef(f"job:{name}", name, kind, "saved this session", None)

    session = [own(f"rn-{i}", "resnet34") for i in range(4)] + [own("knn-1", "knn")]
    assert _ui.default_models([*session, shipped]) == [
        "rn-2 (resnet34, saved this session)",
        "rn-3 (resnet34, saved this session)",
        "knn-1 (knn, saved this session)",
        "resnet34-full (resnet34)",
    ]
    assert _ui.first_model([*session, shipped]) == "knn-1 (knn, saved this session)"


def test_train_page_fits_the_classic_baseline(sample, models_dir):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    at.radio(key="train_kind").set_value("classic").run()
    at.selectbox(key="train_classic_ridge").set_value("frangi")
    at.button(key="train_start").click().run()
    run_until(at, lambda at: "Finished" in texts(at.success) or at.error)
    assert "saved as **classic-built-in-sample**" in texts(at.success)
    meta = store.read_meta(models_dir / "classic-built-in-sample")
    assert meta["kind"] == "classic" and meta["settings"]["ridge"] == "frangi"


def test_train_page_says_where_the_resnet_imagenet_weights_are(sample, tmp_path):
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache: random start, said so
    try:
        at = app("pages/train.py", cases=sample, dataset="built-in sample")
        at.radio(key="train_kind").set_value("resnet34").run()
    finally:
        torch.hub.set_dir(old)
    assert not at.exception, at.exception
    wanted = tmp_path / "checkpoints" / "resnet34-b627a593.pth"
    assert f"No local ImageNet weight file (`{wanted}`)" in texts(at.info)


def test_train_page_stop_ends_the_fit_and_says_so(sample, models_dir):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    at.text_input(key="train_name_knn").set_value("to-stop")
    at.button(key="train_start").click().run()
    stop = next(b for b in at.button if b.key and b.key.startswith("stop_"))
    stop.click().run()
    run_until(at, lambda at: "stopped" in texts(at.markdown))
    assert "no model was fitted" in texts(at.warning)
    assert not (models_dir / "to-stop").exists()


def test_train_page_warns_of_a_resnet_stopped_inside_its_first_epoch(
    sample, models_dir
):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    at.radio(key="train_kind").set_value("resnet34").run()
    at.text_input(key="train_name_resnet34").set_value("early")
    at.button(key="train_start").click().run()
    stop = next(b for b in at.button if b.key and b.key.startswith("stop_"))
    stop.click().run()
    run_until(at, lambda at: "Finished" in texts(at.success) or at.error, 300)
    assert not at.error, as_drawn(at.error)
    assert "stopped before its first epoch ended" in texts(at.warning)
    assert store.read_meta(models_dir / "early")["epochs_run"] == 0


def test_train_page_starts_a_resnet_from_a_saved_one_and_shows_its_warnings(
    sample, models_dir
):
    from vessel_core.resnet import ResNetUNet

    tiny = {"crop_size": 32, "batch_size": 4, "crops_per_epoch": 8, "epochs": 1}
    start = ResNetUNet(**tiny, val_cases=0, tile_size=128, precision="float32")
    store.save_model(start.fit(split_cases(sample, "train")), models_dir / "start-rn")

    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    at.radio(key="train_kind").set_value("resnet34").run()
    chooser = at.selectbox(key="train_resnet34_init_from")
    assert chooser.options == ["no saved model: random or ImageNet weights", "start-rn"]
    chooser.set_value("start-rn")
    for name, value in tiny.items():
        at.number_input(key=f"train_resnet34_{name}").set_value(value)
    at.number_input(key="train_resnet34_tile_size").set_value(128)
    # a saved model of another shape is refused when the form is sent
    at.selectbox(key="train_resnet34_decoder_norm").set_value("none")
    at.button(key="train_start").click().run()
    refused = as_drawn(at.error)
    assert "start-rn was built with decoder norm 'batch' (here 'none')" in refused
    assert "set decoder norm to 'batch', or choose no saved model" in refused
    from pages import _ui

    assert not _ui._job_manager(str(models_dir)).jobs(at.session_state["session_id"])
    at.selectbox(key="train_resnet34_decoder_norm").set_value("batch")
    at.text_input(key="train_name_resnet34").set_value("tuned")
    with pytest.warns(UserWarning, match="flatter this fit"):  # the server log's
        at.button(key="train_start").click().run()
        run_until(at, lambda at: "Finished" in texts(at.success) or at.error, 300)
    assert not at.error, as_drawn(at.error)
    # the start trained on every case: the two held out flatter the fit, said here
    warned = as_drawn(at.warning)
    assert "was trained on held-out case(s) synth-0" in warned, warned
    started = store.read_meta(models_dir / "tuned")["started_from"]
    assert started["name"] == "start-rn"
    assert started["folder"] == str(models_dir / "start-rn")


def test_compare_page_scores_models_next_to_the_all_background_baseline(
    sample, sample_models, monkeypatch
):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    assert at.multiselect(key="cmp_models").value == [
        "classic-sample (classic)",
        "knn-sample (knn)",
    ]
    assert at.multiselect(key="cmp_cases").value == ["synth-04"]
    score(at)
    assert not at.exception and not at.error, as_drawn(at.error)

    table = at.table[0].value
    assert list(table.index) == ["classic-sample", "knn-sample", "all background"]
    knn, background = table.loc["knn-sample"], table.loc["all background"]
    assert float(knn["F1 (Dice)"]) > 0.5
    assert float(background["sensitivity"]) == 0.0
    assert float(background["accuracy"]) > 0.8  # high, having found nothing
    assert float(knn["s / image"]) > 0 and background["s / image"] == "n/a"
    assert "Accuracy alone misleads" in texts(at.warning)
    assert len(at.get("plotly_chart")) == 4  # ROC, PR, per case, seconds

    at.radio(key="cmp_which").set_value("pooled").run()
    pooled = at.table[0].value.loc["knn-sample"]
    assert pooled["sensitivity"] != "n/a"


def test_results_page_shows_reconstruction_errors_and_downloads(
    sample, sample_models, monkeypatch
):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/results.py", cases=sample, dataset="built-in sample")
    assert at.selectbox(key="res_case").value == "synth-04"
    assert not at.error, as_drawn(at.error)
    # original, manual mask, reconstruction, errors; the probability map
    assert len(at.get("image")) == 5
    f1 = {m.label: m.value for m in at.metric}["F1 (Dice)"]
    assert float(f1) > 0.5
    downloads = [b.key for b in at.get("download_button")]
    assert downloads == ["res_dl_png", "res_dl_csv", "res_dl_zip"]

    slider = next(s for s in at.slider if s.key.startswith("res_threshold_"))
    slider.set_value(0.99).run()
    assert {m.label: m.value for m in at.metric}["F1 (Dice)"] != f1
    # the map is not computed again, and the time shown says so
    assert "The map is kept on the server: this model does not compute it again" in (
        texts(at.caption)
    )

    at.selectbox(key="res_case").set_value("retina").run()
    assert not at.error, as_drawn(at.error)
    assert "no manual vessel mask" in texts(at.info)
    assert not at.metric
    assert len(at.get("image")) == 3  # original, reconstruction, probability map
    assert [b.key for b in at.get("download_button")] == ["res_dl_png", "res_dl_zip"]


def test_drive_cases_from_training_to_results(drive_root, models_dir):
    # KNN needs two training cases (it leaves one out to fit its screen): 21, 22
    files = [*DRIVE_FILES, *(n.replace("21", "22") for n in DRIVE_FILES[:3])]
    cases = io.load_files([(n, (drive_root / n).read_bytes()) for n in files]).cases
    assert [(c.id, c.split) for c in cases] == [
        ("01", "test"),
        ("21", "train"),
        ("22", "train"),
    ]
    at = app("pages/train.py", cases=cases, dataset="DRIVE")
    at.number_input(key="train_knn_n_folds").set_value(2)
    at.number_input(key="train_knn_k_max").set_value(5)
    at.number_input(key="train_knn_max_train_samples").set_value(3000)
    at.button(key="train_start").click().run()
    run_until(at, lambda at: "Finished" in texts(at.success) or at.error)
    assert not at.error, as_drawn(at.error)

    at.switch_page("pages/compare.py").run()
    assert at.multiselect(key="cmp_cases").value == ["01"]
    score(at)
    assert not at.error, as_drawn(at.error)
    table = at.table[0].value
    assert list(table.index) == ["knn-DRIVE", "all background"]
    assert float(table.loc["knn-DRIVE", "F1 (Dice)"]) > 0.5

    at.switch_page("pages/results.py").run()
    assert at.selectbox(key="res_case").value == "01"
    assert float({m.label: m.value for m in at.metric}["sensitivity"]) > 0.3


def test_undersampling_page_legend_and_caption_tell_what_is_kept_and_used(sample):
    at = app("pages/undersampling.py", cases=sample, dataset="built-in sample")
    at.selectbox(key="us_strategy").set_value("ratio").run()
    at.number_input(key="us_ratio_max_per_case").set_value(500).run()
    assert not at.exception and not at.warning, texts(at.warning)
    legend = next(m.value for m in at.markdown if "kept vessel" in m.value)
    for label in sampling.OVERLAY_LABELS.values():
        assert label in legend
    for colour in sampling.OVERLAY_COLOURS.values():
        assert f"rgb{colour}" in legend
    caption = texts(at.caption)
    assert "`max_train_samples` (default 10,000)" in caption
    assert "classic filters baseline does not use this choice" in caption


def test_undersampling_page_warns_when_a_class_is_left_out(sample):
    at = app("pages/undersampling.py", cases=sample, dataset="built-in sample")
    assert not at.warning
    at.selectbox(key="us_strategy").set_value("random").run()
    at.slider(key="us_random_drop_fraction").set_value(1.0).run()
    assert not at.exception
    assert "keeps no background pixel" in texts(at.warning)


def test_data_page_says_a_load_replaces_the_cases_loaded_before(sample, drive_uploads):
    at = app("pages/data.py", cases=sample, dataset="built-in sample")
    at.radio(key="data_source").set_value("Upload files").run()
    at.file_uploader(key="upload_files").set_value(drive_uploads[:3]).run()
    assert "replaces the 5 cases in use now" in texts(at.caption)
    at.button(key="load_uploads").click().run()
    assert not at.error, as_drawn(at.error)
    assert (
        "Loaded 1 case (DRIVE): 1 train, 0 test; the 5 cases loaded before were "
        "replaced." in texts(at.success)
    )
    # beside the success it would read as undone; on the next run it is back
    assert "replaces" not in texts(at.caption)
    at.run()
    assert "replaces the 1 case in use now" in texts(at.caption)

    # the first load replaces nothing and says nothing about it
    at = app("pages/data.py")
    assert "replaces" not in texts(at.caption)
    at.button(key="load_sample").click().run()
    assert "replaced" not in texts(at.success)


def test_data_page_warns_of_refused_files_and_forgets_them_on_the_next_load(
    drive_uploads,
):
    # not named as images (one so named would stop the load: the test below)
    html_name = "<img src=x onerror=alert(1)>.html"
    refused = [
        ("fake.txt", b"just text, renamed", "text/plain"),
        ("empty.dat", b"", "application/octet-stream"),
        (html_name, b"<b>text</b>", "text/html"),
    ]
    at = app("pages/data.py")
    at.radio(key="data_source").set_value("Upload files").run()
    at.file_uploader(key="upload_files").set_value([*drive_uploads, *refused]).run()
    at.button(key="load_uploads").click().run()
    assert not at.error, as_drawn(at.error)
    assert "Loaded 2 cases" in texts(at.success)
    warning = texts(at.warning)
    assert "3 files not used" in warning
    shown = warning.replace("\\", "")  # Markdown escapes, gone once drawn
    assert "- fake.txt: " in shown and "- empty.dat: " in shown
    assert f"- {html_name}: " in shown
    assert "\\<img src\\=x" in warning  # escaped: text, never HTML
    assert "3 file(s) not used" in texts(at.subheader)

    # a failed load keeps the cases but not the last load's refused files
    truncated = ("21_training.tif", drive_uploads[0][1][:3000], "image/tiff")
    at.file_uploader(key="upload_files").set_value([truncated, *refused]).run()
    at.button(key="load_uploads").click().run()
    error = as_drawn(at.error)
    assert (
        "Loading 4 uploaded file(s) failed: nothing was loaded, because of 1 problem:"
        in error
    )
    assert error.count("uploaded file(s)") == 1, error
    assert len(at.session_state["cases"]) == 2
    assert "not used" not in texts(at.subheader)
    assert len(at.dataframe) == 1  # the cases; no table of refused files

    # a text file named as an image stops the load too, and says so
    fake = ("02_test.tif", b"just text, renamed", "image/tiff")
    at.file_uploader(key="upload_files").set_value([*drive_uploads, fake]).run()
    at.button(key="load_uploads").click().run()
    error = as_drawn(at.error)
    assert "'02_test.tif': not an image: the content is text" in error
    assert len(at.session_state["cases"]) == 2


def test_allowed_folder_takes_a_path_from_the_project_folder_too(tmp_path, monkeypatch):
    from pages import _ui

    root = tmp_path / "shared" / "data"
    (root / "DRIVE").mkdir(parents=True)
    (tmp_path / "shared" / "private").mkdir()
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "link").symlink_to(tmp_path / "shared" / "private")
    monkeypatch.chdir(tmp_path / "main")
    root = root.resolve()
    # as the README writes it, from the project folder
    assert _ui.allowed_folder("../shared/data/DRIVE", root) == root / "DRIVE"
    assert _ui.allowed_folder("DRIVE", root) == root / "DRIVE"  # data folder first
    for outside in ("../shared/private", "link", "../main"):
        with pytest.raises(ValueError, match="outside the data folder"):
            _ui.allowed_folder(outside, root)
    with pytest.raises(ValueError, match="does not exist"):
        _ui.allowed_folder("../shared/data/STARE", root)


def test_train_page_says_what_each_kind_trains_on(sample):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    knn = texts(at.caption)
    assert "draws *max train samples* (default 10,000) of the pixels kept by" in knn
    assert "(under More settings, default 10,000) more for the second stage" in knn
    at.radio(key="train_kind").set_value("classic").run()
    classic = texts(at.caption)
    assert "drawn uniformly in the FOV (*pixels per case*, default 5,000)" in classic
    assert "does not use the undersampling" in classic
    assert "kept by the undersampling" not in classic


def test_train_page_refuses_a_one_class_undersampling_for_the_knn(sample, models_dir):
    one_class = {
        "strategy": "random",
        "settings": {"drop_fraction": 1.0},
        "seed": 0,
    }
    at = app(
        "pages/train.py",
        cases=sample,
        dataset="built-in sample",
        sampling_choice=one_class,
    )
    at.button(key="train_start").click().run()
    assert not at.exception
    assert "keeps no background pixel" in as_drawn(at.error)
    from pages import _ui

    assert _ui._job_manager(str(models_dir)).jobs(at.session_state["session_id"]) == []
    assert "Training runs" not in texts(at.subheader)


def _forms(block):
    """Every st.form block under ``block``, depth first."""
    for child in block.children.values():
        if getattr(child, "type", None) == "form":
            yield child
        if hasattr(child, "children"):
            yield from _forms(child)


def test_train_page_form_does_not_submit_on_enter(sample):
    at = app("pages/train.py", cases=sample, dataset="built-in sample")
    forms = list(_forms(at.main))
    assert [f.proto.form.form_id for f in forms] == ["train_form_knn"]
    assert forms[0].proto.form.enter_to_submit is False


def test_results_page_says_when_its_model_was_deleted_meanwhile(
    sample, sample_models, tmp_path, monkeypatch
):
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(sample_models, folder)
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(folder))
    at = app("pages/results.py", cases=sample, dataset="built-in sample")
    at.selectbox(key="res_model").set_value("knn-sample (knn)").run()
    store.delete_model(folder / "knn-sample")  # from another tab's sidebar
    at.run()
    assert not at.error, as_drawn(at.error)
    said = as_drawn(at.info)
    assert "knn-sample (knn) is no longer among the models; showing" in said
    assert at.selectbox(key="res_model").value == "classic-sample (classic)"


def test_results_page_threshold_reads_as_used_and_returns_to_the_models(
    sample, sample_models, monkeypatch
):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/results.py", cases=sample, dataset="built-in sample")
    model = at.selectbox(key="res_model").value.split(" ")[0]
    own = float(store.read_meta(sample_models / model)["threshold"])
    slider = next(s for s in at.slider if s.key.startswith("res_threshold_"))
    assert slider.value == pytest.approx(own)
    assert f"the model's own: {own:.3f})" in slider.label
    assert slider.proto.step == pytest.approx(0.001)
    f1 = {m.label: m.value for m in at.metric}["F1 (Dice)"]

    slider.set_value(0.9).run()
    assert {m.label: m.value for m in at.metric}["F1 (Dice)"] != f1
    at.button(key="res_threshold_reset").click().run()
    slider = next(s for s in at.slider if s.key.startswith("res_threshold_"))
    assert slider.value == pytest.approx(own)
    assert {m.label: m.value for m in at.metric}["F1 (Dice)"] == f1
    assert "training cases" not in texts(at.warning)  # synth-04 is a test case

    at.selectbox(key="res_case").set_value("synth-01").run()
    assert "synth\\-01 was one of this model's training cases: its scores are " in (
        texts(at.warning)
    )


def test_compare_page_warns_of_training_cases_and_adds_new_models(
    sample, sample_models, tmp_path, monkeypatch
):
    import shutil

    folder = tmp_path / "few"
    shutil.copytree(sample_models / "knn-sample", folder / "knn-sample")
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(folder))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    assert at.multiselect(key="cmp_models").value == ["knn-sample (knn)"]
    at.multiselect(key="cmp_cases").set_value(["synth-01", "synth-04"]).run()
    score(at)
    warned = texts(at.warning)
    assert "knn\\-sample** was scored on 1 of its own training cases (synth\\-01)" in (
        warned
    )

    # a model saved since the page last looked joins the comparison, and is said so
    shutil.copytree(sample_models / "classic-sample", folder / "classic-sample")
    at.run()
    assert at.multiselect(key="cmp_models").value == [
        "knn-sample (knn)",
        "classic-sample (classic)",
    ]
    assert "Added to the comparison: classic\\-sample" in texts(at.caption)
    at.run()
    assert "Added to the comparison" not in texts(at.caption)  # said once

    # no test case loaded: the training cases are offered, and the page says so
    trains = [c for c in sample if c.split == "train"]
    at = app("pages/compare.py", cases=trains, dataset="built-in sample")
    assert "No test case with a vessel mask is loaded" in texts(at.info)
    assert at.multiselect(key="cmp_cases").value == [c.id for c in trains]


def test_compare_page_adds_a_model_saved_while_the_session_was_away(
    sample, sample_models, tmp_path, monkeypatch
):
    import shutil

    from pages import _ui

    folder = tmp_path / "few"
    shutil.copytree(sample_models / "knn-sample", folder / "knn-sample")
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(folder))
    app("pages/compare.py", cases=sample)  # the pickers are drawn in this server
    # a session that last saw the Compare page offer the KNN alone (set up front:
    # app.py remembers it on the first run)
    knn = ["knn-sample (knn)"]
    at = app(cases=sample, cmp_models=knn, **{_ui.COMPARE_SEEN: knn})

    # a model is saved meanwhile (by the CLI, another session), then a reload
    shutil.copytree(sample_models / "classic-sample", folder / "classic-sample")
    again = reloaded(at, "pages/compare.py")
    chosen = again.multiselect(key="cmp_models").value
    assert chosen == [*knn, "classic-sample (classic)"]
    assert "Added to the comparison: classic\\-sample" in texts(again.caption)


def test_train_page_names_training_cases_whose_masks_hold_one_class(sample):
    from dataclasses import replace

    first = next(c for c in sample if c.split == "train")
    blank = replace(first, vessel_mask=np.zeros_like(first.vessel_mask))
    cases = [blank if c is first else c for c in sample]
    at = app("pages/train.py", cases=cases, dataset="built-in sample")
    assert f"Left out of training: {first.id}" in texts(at.warning).replace("\\", "")
    assert first.id not in texts(at.caption).split("Trains on")[1].split(")")[0]

    # none left: the page says so instead of blaming the undersampling
    trains = [
        replace(c, vessel_mask=np.zeros_like(c.vessel_mask))
        for c in sample
        if c.vessel_mask is not None
    ]
    at = app("pages/train.py", cases=trains, dataset="built-in sample")
    assert "No training case has a vessel mask showing vessels and background" in (
        texts(at.warning)
    )


def test_compare_page_notes_name_the_model_they_concern(
    sample, sample_models, monkeypatch
):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    score(at)
    assert not at.exception and not at.error, as_drawn(at.error)
    notes = next(e for e in at.expander if "on undefined figures" in e.label)
    assert notes.label.endswith("from all background")
    shown = texts(notes.markdown).replace("\\", "")  # Markdown escapes
    assert "**all background** (the baseline that calls every pixel background)" in (
        shown
    )
    assert "- all background, case synth-04: precision" in shown
    assert all(
        line.startswith("- all background, ")
        for line in shown.splitlines()
        if line.startswith("- ")
    )


def reloaded(at: AppTest, page: str = "pages/home.py", **params) -> AppTest:
    """A new session at ``at``'s address, as a browser reload starts one."""
    again = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    again.query_params = {**at.query_params, **params}
    again.run()
    if page != "pages/home.py":
        again.switch_page(page).run()
    assert not again.exception, again.exception
    return again


def test_a_reload_keeps_the_loaded_data_the_undersampling_and_the_jobs(
    sample, models_dir
):
    # AppTest runs app.py (which remembers the session) on an AppTest's first run
    # only; later runs run the page alone, so the state is set up front here
    choice = {"strategy": "random", "settings": {"drop_fraction": 0.5}, "seed": 3}
    at = app(cases=sample, dataset="built-in sample", sampling_choice=choice)
    sid = at.session_state["session_id"]
    assert at.query_params["session"] == sid
    at.switch_page("pages/train.py").run()
    at.radio(key="train_kind").set_value("classic").run()
    at.button(key="train_start").click().run()
    assert not at.error, as_drawn(at.error)

    again = reloaded(at)
    assert again.session_state["session_id"] == sid
    assert [c.id for c in again.session_state["cases"]] == [c.id for c in sample]
    assert again.session_state["sampling_choice"] == choice
    assert "5 cases" in texts(again.sidebar.markdown)
    assert "Welcome back: kept 5 loaded cases and this session's 1 fit." in texts(
        again.toast
    )
    # the fit started before the reload is this session's, and finishes here
    again.switch_page("pages/train.py").run()
    run_until(again, lambda at: "Finished" in texts(at.success))
    from pages import _ui

    jobs = _ui._job_manager(str(models_dir)).jobs(sid)
    assert [j.kind for j in jobs] == ["classic"]


def test_a_reload_keeps_the_settings_widgets_values(sample, sample_models, monkeypatch):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    # the pages note their settings widgets as they draw them
    drawn = app("pages/results.py", cases=sample, dataset="built-in sample")
    threshold_key = drawn.slider[0].key
    drawn.switch_page("pages/undersampling.py").run()
    # AppTest remembers on a session's first run only: the values are set up front
    at = app(
        cases=sample,
        dataset="built-in sample",
        res_case="synth-02",
        **{threshold_key: 0.321, "us_seed": 7, "cmp_run": True},
    )

    again = reloaded(at, page="pages/results.py")
    assert again.selectbox(key="res_case").value == "synth-02"
    assert again.slider(key=threshold_key).value == pytest.approx(0.321)
    assert "Reconstruction at 0.321" in texts(again.markdown)
    again.switch_page("pages/undersampling.py").run()
    assert again.number_input(key="us_seed").value == 7
    assert "cmp_run" not in again.session_state  # a button's press is not kept


def test_an_address_with_an_unknown_session_starts_afresh(sample):
    at = app(cases=sample, dataset="built-in sample")
    for made_up in ("0" * 32, "not an id", at.session_state["session_id"][::-1]):
        again = reloaded(at, session=made_up)
        assert again.session_state["session_id"] not in (made_up, "")
        assert again.query_params["session"] == again.session_state["session_id"]
        assert "Nothing yet." in texts(again.sidebar.markdown)


def test_compare_page_pickers_start_from_the_kept_comparison(
    sample, sample_models, monkeypatch
):
    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    at.multiselect(key="cmp_models").set_value(["knn-sample (knn)"])
    at.multiselect(key="cmp_cases").set_value(["synth-01", "synth-04"])
    score(at)
    kept = at.session_state["compare_result"]

    # a reload brings the result back, but not the pickers' own state
    again = app("pages/compare.py", cases=sample, compare_result=kept)
    assert again.multiselect(key="cmp_models").value == ["knn-sample (knn)"]
    assert again.multiselect(key="cmp_cases").value == ["synth-01", "synth-04"]
    assert "earlier choice" not in texts(again.warning)
    assert list(again.table[0].value.index) == ["knn-sample", "all background"]


def test_compare_page_chooses_the_new_cases_after_another_load(
    sample, sample_models, monkeypatch
):
    from dataclasses import replace

    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    at.multiselect(key="cmp_models").set_value(["knn-sample (knn)"]).run()
    assert at.multiselect(key="cmp_cases").value == ["synth-04"]

    # another dataset: none of the chosen cases exists any more
    other = [replace(c, id=f"new-{c.id}") for c in sample]
    at.session_state["cases"] = other
    at.run()
    assert at.multiselect(key="cmp_cases").value == ["new-synth-04"]  # its test case
    assert at.multiselect(key="cmp_models").value == ["knn-sample (knn)"]  # kept
    assert not at.warning or "default value" not in texts(at.warning)

    # a choice the user emptied stays empty
    at.multiselect(key="cmp_cases").set_value([]).run()
    at.run()
    assert at.multiselect(key="cmp_cases").value == []


def test_a_comparison_being_scored_goes_on_across_a_reload(
    sample, sample_models, monkeypatch
):
    import threading

    from pages import _ui
    from vessel_core import compare

    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    sid = at.session_state["session_id"]
    label = "knn-sample (knn)"
    model = store.load_model(sample_models / "knn-sample")
    gate = threading.Event()

    class Held:  # the model, held back until the reload has found the scoring
        threshold = model.threshold

        def predict_proba(self, case):
            gate.wait(30)
            return model.predict_proba(case)

    # as the button starts it; the page that started it is gone (a reload)
    test_cases = [c for c in sample if c.id == "synth-04"]
    task = compare.Scoring(
        {"knn-sample": Held()},
        test_cases,
        label={"models": [label], "cases": ["synth-04"]},
    )
    _ui._scorings()[sid] = task
    threading.Timer(1.0, gate.set).start()
    again = scored(reloaded(at, page="pages/compare.py"))
    assert again.session_state["session_id"] == sid
    assert task.finished and sid not in _ui._scorings()
    assert list(again.table[0].value.index) == ["knn-sample", "all background"]
    assert again.session_state["compare_result"]["models"] == [label]

    # stopped (before its second map at the latest): said so, nothing kept from it
    # (AppTest remembers a session on its first run only: the memory is not checked)
    gate.clear()
    two = [c for c in sample if c.id in ("synth-03", "synth-04")]
    task = compare.Scoring({"knn-sample": Held()}, two, label=task.label)
    _ui._scorings()[sid] = task
    task.stop()
    gate.set()
    again = scored(reloaded(again, page="pages/compare.py"))
    assert "Scoring stopped" in texts(again.warning)
    assert sid not in _ui._scorings()


def test_stop_is_told_in_the_tab_that_pressed_it_once_the_scoring_ends(
    sample, sample_models, monkeypatch
):
    import threading

    from pages import _ui
    from vessel_core import compare

    monkeypatch.setenv("VESSEL_MODELS_DIR", str(sample_models))
    at = app("pages/compare.py", cases=sample, dataset="built-in sample")
    model = store.load_model(sample_models / "knn-sample")
    gate = threading.Event()

    class Held:
        threshold = model.threshold

        def predict_proba(self, case):
            gate.wait(30)
            return model.predict_proba(case)

    # a scoring another tab started (this tab is only watching it)
    two = [c for c in sample if c.id in ("synth-03", "synth-04")]
    label = {"models": ["knn-sample (knn)"], "cases": ["synth-03", "synth-04"]}
    task = compare.Scoring({"knn-sample": Held()}, two, label=label)
    _ui._scorings()[at.session_state["session_id"]] = task
    at.run()
    at.button(key="cmp_stop").click().run()
    gate.set()
    assert task.wait(30) and task.result.stopped
    scored(at)
    assert "Scoring stopped" in texts(at.warning)
    assert not [b for b in at.button if b.key == "cmp_stop"]  # told after the end


def test_a_load_is_kept_for_a_reload_as_soon_as_it_is_done():
    from pages import _ui

    at = app("pages/data.py")
    at.button(key="load_sample").click().run()
    # written by the load itself, before the page draws its table (AppTest runs
    # the page alone here, so the end-of-run write does not happen)
    kept = _ui._memory().recall(at.session_state["session_id"])
    assert len(kept["cases"]) == 5 and kept["dataset"] == "built-in sample"


def test_an_address_naming_the_session_twice_keeps_it_once(sample):
    at = app(cases=sample, dataset="built-in sample")
    sid = at.session_state["session_id"]
    again = reloaded(at, session=["garbage", sid])
    assert again.session_state["session_id"] == sid
    assert again.query_params["session"] == sid
    assert "5 cases" in texts(again.sidebar.markdown)


def test_an_error_is_drawn_as_written_with_its_lists_apart():
    from pages import _ui

    text = (
        "Loading failed: nothing was loaded, because of 1 problem:\n"
        "  - '*star*.png': truncated\n"
        "Also not used (these alone would not stop a load):\n"
        "  - notes.png: text\n"
        "  ... and 2 more"
    )
    drawn = _ui.as_text(text)
    assert drawn.split("\n") == [
        _ui.plain("Loading failed: nothing was loaded, because of 1 problem:"),
        "- " + _ui.plain("'*star*.png': truncated"),
        "",  # the list ends: the next line is not part of its last item
        _ui.plain("Also not used (these alone would not stop a load):"),
        "- " + _ui.plain("notes.png: text"),
        "",
        _ui.plain("... and 2 more"),
    ]
    assert "\\*star\\*" in drawn  # a name, not italics


@pytest.fixture(scope="module")
def resnet_models(sample, tmp_path_factory):
    """An untrained ResNet (int8, one pass) saved like a trained one: its maps
    vary more than those of a few tiny batches, which saturate on the sample."""
    from vessel_core import _resnet_net
    from vessel_core.resnet import ResNetUNet, _arch

    folder = tmp_path_factory.mktemp("resnet_models")
    # one torch thread, here and in the app: another count sums in another order
    model = ResNetUNet(pretrained=False, num_threads=1)
    model.net = _resnet_net.build_unet(_arch(model.settings), seed=0).eval()
    assert model.calibrate_int8(split_cases(sample, "train"))
    store.save_model(model, folder / "tiny-resnet")
    return folder


def test_a_resnet_is_also_offered_with_its_best_prediction(
    sample, resnet_models, monkeypatch
):
    from pages import _ui
    from vessel_core import metrics
    from vessel_core.resnet import BEST_PREDICTION

    monkeypatch.setenv("VESSEL_MODELS_DIR", str(resnet_models))
    plain = "tiny-resnet (resnet34)"
    best = "tiny-resnet, float32, 4 mirrored copies (resnet34)"
    at = app(cases=sample, dataset="built-in sample")
    listed = texts(at.sidebar.markdown)  # the models there: the variant is none
    assert "tiny-resnet *(resnet34, saved)*" in listed and "mirrored" not in listed
    at.switch_page("pages/compare.py").run()
    picker = at.multiselect(key="cmp_models")
    assert picker.options == [plain, best]
    assert picker.value == [plain]  # the slower variant only when asked for
    picker.set_value([plain, best]).run()
    score(at)
    assert not at.error, as_drawn(at.error)
    table = at.table[0].value
    names = ["tiny-resnet", "tiny-resnet, float32, 4 mirrored copies"]
    assert list(table.index) == [*names, "all background"]

    at.switch_page("pages/results.py").run()
    at.selectbox(key="res_model").set_value(best).run()
    assert not at.error, as_drawn(at.error)
    case = next(c for c in sample if c.id == at.selectbox(key="res_case").value)
    model = store.load_model(resnet_models / "tiny-resnet")
    assert model.settings["precision"] == "int8"  # the saved model is unchanged
    wanted = model.with_prediction(**BEST_PREDICTION).predict_proba(case)
    assert np.abs(wanted - model.predict_proba(case)).max() > 0.1

    def missing():
        raise AssertionError("the page did not predict with the variant")

    key = (f"{_ui._folder_key(resnet_models / 'tiny-resnet')}|best", case.fingerprint())
    shown_map, _ = _ui._maps().get(key, missing)
    np.testing.assert_allclose(shown_map, wanted, atol=1e-6)
    with warnings.catch_warnings():  # it calls no pixel a vessel: no precision
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        got = metrics.score(case.vessel_mask, wanted, case.fov_mask, model.threshold)
    assert {m.label: m.value for m in at.metric}["AUC ROC"] == _ui.fmt(got["auc_roc"])


def test_download_names_have_no_commas_or_spaces():
    from pages import _ui

    def stem(name):
        return _ui.ModelRef("key", name, "resnet34", "saved").file_stem

    assert stem("resnet34-full, float32, 4 mirrored copies") == (
        "resnet34-full-float32-4-mirrored-copies"
    )
    assert stem("knn-DRIVE") == "knn-DRIVE"
    assert stem("my model (2)") == "my-model-2"
    assert stem("copy-of-classic") == "copy-of-classic"  # no word is dropped
    assert _ui.file_part("eye 1, left") == "eye-1-left"  # case ids too
