"""Tests of the ResNet34 U-Net kind: tiny synthetic cases, tiny crops, the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vessel_core import io, preprocess, store
from vessel_core._resnet_data import CropDataset, VesselLoss, network_input
from vessel_core._resnet_fit import CHECKPOINT_FILE
from vessel_core._resnet_net import (
    blend_window,
    build_unet,
    encoder_of,
    fold_for_inference,
    predict_tiled,
    resolve_pretrained,
    tile_starts,
)
from vessel_core.cases import Case
from vessel_core.resnet import (
    FINE_TUNE_LR,
    PRESETS,
    RESNET34_FILE,
    ResNetUNet,
    imagenet_weight_file,
)

ROOT = Path(__file__).resolve().parent.parent

#: Small and fast: 32-pixel crops, 4 per batch, 2 short epochs, tiny tiles.
TINY = {
    "crop_size": 32,
    "batch_size": 4,
    "epochs": 2,
    "crops_per_epoch": 12,
    "val_cases": 1,
    "threshold_train_cases": 1,
    "tile_size": 64,
    "tile_overlap": 16,
    "max_minutes": 0,
    "lr": 1e-3,
    "precision": "float32",
}

ARCH = {"last_cross": False, "self_attention": False, "blur": False}


def tiny_case(case_id: str, seed: int, shape=(96, 96)) -> Case:
    """A dark disc FOV crossed by a few darker lines (the vessels)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[:h, :w]
    fov = (rows - h / 2) ** 2 + (cols - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
    vessel = np.zeros(shape, bool)
    for _ in range(4):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.3, 0.3) * min(h, w)
        distance = (cols - w / 2) * np.cos(angle) + (rows - h / 2) * np.sin(angle)
        vessel |= np.abs(distance - offset) < 1.5
    vessel &= fov
    image = np.zeros((h, w, 3), np.uint8)
    image[fov] = (150, 90, 40)
    image[vessel] = (110, 40, 20)
    noise = rng.integers(0, 12, size=image.shape, dtype=np.uint8)
    image = np.where(fov[..., None], image + noise, 0).astype(np.uint8)
    return Case(case_id, image, fov, vessel)


@pytest.fixture(scope="module")
def empty_torch_cache(tmp_path_factory):
    """A torch hub folder without weight files, for the whole module."""
    old = torch.hub.get_dir()
    folder = tmp_path_factory.mktemp("torch_hub")
    torch.hub.set_dir(str(folder))
    yield folder
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def cases():
    return [tiny_case(f"t{i}", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def trained(cases, empty_torch_cache):
    """A model fitted for 2 tiny epochs, with every progress event it sent."""
    events = []
    model = ResNetUNet(**TINY).fit(cases, on_progress=events.append)
    return model, events


# ---------------------------------------------------------------------------
# Settings


def test_preset_fills_only_unset_settings():
    model = ResNetUNet(preset="full", epochs=3)
    assert model.settings["epochs"] == 3
    assert model.settings["crop_size"] == PRESETS["full"]["crop_size"]
    assert ResNetUNet().settings["crop_size"] == PRESETS["quick"]["crop_size"]


def test_default_settings_are_flat_and_cover_the_face():
    defaults = ResNetUNet.default_settings()
    for key in (
        "preset",
        "crop_size",
        "epochs",
        "lr",
        "batch_size",
        "vessel_crop_share",
        "pretrained",
        "val_cases",
        "seed",
    ):
        assert key in defaults
    assert defaults["pretrained"] == "auto"
    assert all(not isinstance(v, dict | list) for v in defaults.values())
    assert ResNetUNet.SETTING_CHOICES["preset"] == ["quick", "full"]
    assert ResNetUNet.kind == "resnet34"


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"crop_sise": 64}, "no setting"),
        ({"preset": "slow"}, "preset must be one of"),
        ({"crop_size": 50}, "multiple of 32"),
        ({"vessel_crop_share": 1.5}, r"vessel_crop_share must be in \[0, 1\]"),
        ({"batch_size": 32, "crops_per_epoch": 16}, "at least batch_size"),
        ({"pretrained": "maybe"}, "pretrained must be"),
        ({"epochs": 2.5}, "whole number"),
    ],
)
def test_bad_settings_raise(settings, match):
    with pytest.raises(ValueError, match=match):
        ResNetUNet(**settings)


def test_string_settings_from_a_command_line_are_parsed():
    model = ResNetUNet(pretrained="no", last_cross="true", epochs="4")
    assert model.settings["pretrained"] is False
    assert model.settings["last_cross"] is True
    assert model.settings["epochs"] == 4


# ---------------------------------------------------------------------------
# Input, crops, loss


def test_rgb_input_is_standardised_inside_the_fov():
    case = tiny_case("a", 0)
    x = network_input(case.image, case.fov_mask, "rgb")
    assert x.shape == (96, 96, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[case.fov_mask].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x[case.fov_mask].std(0), 1, atol=1e-3)


def test_green_input_repeats_one_channel():
    case = tiny_case("a", 0)
    x = network_input(case.image, case.fov_mask, "green")
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert abs(float(x[case.fov_mask, 0].mean())) < 1e-4


def test_extended_input_fills_beyond_the_fov_without_a_step():
    import cv2

    from vessel_core._resnet_data import EXTEND_RIM, extend_beyond_fov

    case = tiny_case("a", 0, shape=(90, 120))
    plain = network_input(case.image, case.fov_mask, "rgb")
    x = network_input(case.image, case.fov_mask, "rgb-extended")
    kept = cv2.erode(
        case.fov_mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=EXTEND_RIM
    ).astype(bool)
    np.testing.assert_array_equal(x[kept], plain[kept])  # the inside, less the rim
    # every filled value is an average of kept ones: within their range
    low, high = plain[kept].min(0), plain[kept].max(0)
    assert np.all(x >= low - 1e-5) and np.all(x <= high + 1e-5)
    # plain: a step of several standard deviations at the FOV's edge; extended: none
    fov = case.fov_mask.astype(np.uint8)
    edge = case.fov_mask & ~cv2.erode(fov, None).astype(bool)
    ring = cv2.dilate(fov, None).astype(bool) & ~case.fov_mask

    def step(a):
        return abs(float(a[edge].mean() - a[ring].mean()))

    assert step(plain) > 1.0 and step(x) < 0.3 * step(plain)
    # a constant inside fills the whole image with that constant, any channel count
    flat = np.full((50, 70, 1), 2.5, np.float32)
    flat[~case.fov_mask[:50, :70]] = -7.0
    filled = extend_beyond_fov(flat, case.fov_mask[:50, :70])
    np.testing.assert_allclose(filled, 2.5, atol=1e-5)
    green = network_input(case.image, case.fov_mask, "green-extended")
    np.testing.assert_array_equal(green[..., 0], green[..., 2])
    with pytest.raises(ValueError, match="input must be one of"):
        network_input(case.image, case.fov_mask, "rgb-stretched")


def test_crops_hold_class_indices_and_repeat_by_seed_and_epoch():
    case = tiny_case("a", 0)
    centres = {"a": np.argwhere(case.vessel_mask).astype(np.int32)}
    ds = CropDataset([case], centres, 32, 8, 1.0, 0.0, 0.1, "rgb", seed=3)
    x, y, fov = ds[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (32, 32) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1}
    assert fov.dtype == torch.float32
    # every crop is centred on a vessel pixel (a flip moves the centre by one)
    for i in range(8):
        assert ds[i][1][15:17, 15:17].any()
    torch.testing.assert_close(ds[5][0], x)
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], x)


def test_rotated_crops_keep_labels_binary():
    case = tiny_case("a", 0)
    ds = CropDataset([case], {}, 32, 4, 0.0, 30.0, 0.1, "green", seed=0)
    for i in range(4):
        assert set(torch.unique(ds[i][1]).tolist()) <= {0, 1}


def test_loss_by_hand():
    # four FOV pixels, all vessel, predicted 0.5: CE = ln 2, Dice = 5 / 7
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.ones(1, 2, 2, dtype=torch.long)
    fov = torch.ones(1, 2, 2)
    loss = VesselLoss()(logits, target, fov)
    assert float(loss) == pytest.approx(math.log(2) + 2 / 7, rel=1e-6)


def test_loss_ignores_pixels_outside_the_fov():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, generator=rng)
    target = torch.randint(0, 2, (2, 4, 4), generator=rng)
    fov = torch.ones(2, 4, 4)
    fov[:, 0] = 0
    changed = logits.clone()
    changed[:, :, 0] = 50.0
    loss = VesselLoss()
    assert float(loss(logits, target, fov)) == pytest.approx(
        float(loss(changed, target, fov)), rel=1e-6
    )


# ---------------------------------------------------------------------------
# Training


def test_fit_sends_batch_and_epoch_events_and_the_loss_goes_down(trained):
    model, events = trained
    batches = [e for e in events if e.step == "batch"]
    epochs = [e for e in events if e.step == "epoch"]
    assert len(batches) == 2 * 3  # 2 epochs of 12 crops in batches of 4
    assert [e.done for e in batches] == list(range(1, 7))
    # each says where it is within its epoch (the Train page's status line)
    assert [(e.metrics["epoch"], e.metrics["batch"]) for e in batches] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
    ]
    assert {(e.metrics["epochs"], e.metrics["batches"]) for e in batches} == {(2, 3)}
    assert len(epochs) == 2
    # said before the first batch, and before each epoch's held-out scoring
    steps = [e.step for e in events if e.step != "batch"]
    assert steps == ["prepare", "validate", "epoch", "validate", "epoch", "done"]
    assert events[0].message.startswith("preparing: random weights, 2 training + 1")
    for key in ("dice", "f1", "sensitivity", "specificity", "auc_roc"):
        assert key in epochs[-1].metrics
    losses = [e.metrics["loss"] for e in batches]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert events[-1].step == "done"


def test_fit_fills_meta(trained, cases):
    model, _ = trained
    meta = model.meta
    assert meta["pretrained"] is False
    assert sorted(meta["train_cases"]) == ["t0", "t1", "t2"]
    assert len(meta["val_cases"]) == 1
    assert meta["epochs_run"] == 2
    assert meta["device"] == "cpu"
    assert set(meta["scores"]["val"]) >= {"f1", "auc_roc", "threshold"}
    assert 0.0 <= model.threshold <= 1.0
    assert meta["val_threshold"] == meta["scores"]["val"]["threshold"]
    # the threshold pools the held-out case and one training case
    assert meta["threshold_cases"][0] == meta["val_cases"][0]
    assert len(meta["threshold_cases"]) == 2
    assert meta["threshold_cases"][1] in meta["fit_cases"]
    json.dumps(meta)  # model.json must hold it


def test_settings_that_cannot_work_are_refused_naming_the_setting():
    for bad, says in (
        ({"tile_size": 16}, "tile_size must be a multiple of 32"),
        ({"tile_size": 100}, "tile_size must be a multiple of 32"),
        ({"tile_size": 640, "tile_overlap": 700}, r"tile_overlap \(700\) must be"),
        ({"max_minutes": -3}, r"max_minutes must be >= 0 \(0: no limit\)"),
        ({"lr": -1e-3}, "lr must be a finite number >= 0"),
    ):
        with pytest.raises(ValueError, match=says):
            ResNetUNet(**bad)
    assert ResNetUNet(tile_size=96, tile_overlap=48).settings["tile_size"] == 96


def test_small_sets_hold_out_at_most_half_their_cases():
    few = [tiny_case(f"s{i}", seed=i) for i in range(5)]
    model = ResNetUNet(**{**TINY, "val_cases": 2})
    for n, held in ((5, 2), (4, 2), (3, 1), (2, 1), (1, 0)):
        if held < 2:
            named = r" \(s\d\)" if held else ""
            with pytest.warns(
                UserWarning, match=f"holding out {held}{named}, training on {n - held}"
            ):
                train, val = model._split(few[:n])
        else:
            train, val = model._split(few[:n])
        assert (len(train), len(val)) == (n - held, held)
    # asked for none: none, whatever the count
    assert len(ResNetUNet(**{**TINY, "val_cases": 0})._split(few)[1]) == 0


def test_a_fit_with_no_held_out_case_picks_its_threshold_on_training_cases(cases):
    from vessel_core import metrics

    settings = {**TINY, "epochs": 1, "val_cases": 0, "threshold_train_cases": 0}
    with pytest.warns(UserWarning, match="no held-out cases: the threshold is picked"):
        model = ResNetUNet(**settings).fit(cases)
    meta = model.meta
    assert meta["val_cases"] == [] and meta["val_threshold"] is None
    # all 3 (fewer than NO_HELD_OUT_THRESHOLD_CASES), not a blind 0.5
    assert sorted(meta["threshold_cases"]) == ["t0", "t1", "t2"]
    maps = [model.predict_proba(c) for c in cases]
    best = metrics.best_threshold(
        [c.vessel_mask for c in cases], maps, [c.fov_mask for c in cases]
    )
    assert model.threshold == pytest.approx(best, abs=0.002)
    # nothing held out says a network learned nothing: those cases do
    settings["lr"] = 1e-9
    with pytest.warns(UserWarning, match="the training cases score AUC 0.[3-6]"):
        ResNetUNet(**settings).fit(cases)


def test_stop_request_ends_within_one_batch_and_keeps_a_usable_model(cases):
    stop = threading.Event()
    events = []

    def listen(event):
        events.append(event)
        if event.step == "batch" and event.done == 2:
            stop.set()

    model = ResNetUNet(**{**TINY, "pretrained": False}).fit(
        cases, on_progress=listen, stop=stop
    )
    assert [e.done for e in events if e.step == "batch"] == [1, 2]
    assert model.meta["stopped_early"] == "stop requested"
    assert model.meta["weights"] == "those after 2 batch(es), inside epoch 1"
    prob = model.predict_proba(cases[0])
    assert prob.shape == cases[0].shape


def test_checkpoint_resume_runs_only_the_missing_epochs(cases, tmp_path):
    # one torch thread: the maps compared below are then the same to 1e-6 (torch's
    # threads follow the free cores, and another count sums in another order)
    settings = {**TINY, "pretrained": False, "checkpoint_dir": str(tmp_path)}
    settings["num_threads"] = 1
    stop = threading.Event()

    def stop_after_first_epoch(event):
        if event.step == "epoch":
            stop.set()

    first = ResNetUNet(**settings).fit(
        cases, on_progress=stop_after_first_epoch, stop=stop
    )
    assert first.meta["epochs_run"] == 1
    assert (tmp_path / CHECKPOINT_FILE).is_file()

    # the checkpoint as a model, without training: the fit's own best epoch
    written = (tmp_path / CHECKPOINT_FILE).read_bytes()
    snap = ResNetUNet.from_checkpoint(tmp_path, cases, **settings)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == written
    assert snap.meta["snapshot_of"] == str(tmp_path)
    assert snap.meta["best_epoch"] == first.meta["best_epoch"]
    assert snap.threshold == pytest.approx(first.threshold)
    np.testing.assert_allclose(
        snap.predict_proba(cases[0]), first.predict_proba(cases[0]), atol=1e-6
    )
    with pytest.raises(ValueError, match=r"seed=0 \(here 1\)"):
        ResNetUNet.from_checkpoint(tmp_path, cases, **{**settings, "seed": 1})
    with pytest.raises(ValueError, match="other training cases"):
        ResNetUNet.from_checkpoint(tmp_path, cases[1:], **settings)
    with pytest.raises(FileNotFoundError, match="checkpoint.pt does not exist"):
        ResNetUNet.from_checkpoint(tmp_path / "none", cases, **settings)

    events = []
    second = ResNetUNet(**settings, resume=True).fit(cases, on_progress=events.append)
    batches = [e.done for e in events if e.step == "batch"]
    assert batches == [4, 5, 6]  # epoch 2 only
    assert second.meta["epochs_run"] == 2
    assert [h["epoch"] for h in second.meta["history"]] == [1, 2]


def test_init_from_starts_the_fit_at_a_saved_models_weights(trained, cases, tmp_path):
    model, _ = trained
    folder = store.save_model(model, tmp_path / "start")
    # lr=0: the weights cannot move, so they must still be the saved model's
    settings = {**TINY, "epochs": 1, "crops_per_epoch": 4, "lr": 0.0}
    settings["num_threads"] = 1
    with pytest.warns(UserWarning, match="lr 0: the network's weights will not"):
        tuned = ResNetUNet(**settings, init_from=str(folder)).fit(cases)
        fresh = ResNetUNet(**settings, pretrained=False).fit(cases)
    start = dict(model.net.named_parameters())
    differ_from_random = 0
    for name, value in tuned.net.named_parameters():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)
        fresh_value = dict(fresh.net.named_parameters())[name]
        differ_from_random += not torch.equal(value, fresh_value)
    assert differ_from_random > 50  # a fit without init_from starts elsewhere

    record = tuned.meta["started_from"]
    assert record["folder"] == str(folder) and record["name"] == "start"
    # what the start learned from: its fit cases, not its held-out one
    fit_images = model.meta["train_images"][: len(model.meta["fit_cases"])]
    assert record["learned_images"] == fit_images
    assert tuned.meta["pretrained"] is False
    assert fresh.meta["started_from"] is None
    json.dumps(tuned.meta)


def test_init_from_takes_a_tenth_of_the_presets_learning_rate():
    for preset in ("quick", "full"):
        wanted = PRESETS[preset]["lr"] * FINE_TUNE_LR
        tuned = ResNetUNet(preset=preset, init_from="models/x")
        assert tuned.settings["lr"] == pytest.approx(wanted)
        assert ResNetUNet(preset=preset).settings["lr"] == PRESETS[preset]["lr"]
    assert ResNetUNet(init_from="models/x", lr=0.01).settings["lr"] == 0.01


def test_a_model_that_has_not_learned_is_warned_of():
    from vessel_core.resnet import _warn_if_unlearned

    with pytest.warns(
        UserWarning,
        match=r"AUC 0\.52 \(threshold 0\.000\): .* "
        "barely learned",
    ):
        _warn_if_unlearned({"auc_roc": 0.52, "threshold": 0.0})
    with pytest.warns(UserWarning, match="AUC nan"):
        _warn_if_unlearned({"auc_roc": float("nan"), "threshold": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_unlearned({"auc_roc": 0.9, "threshold": 0.4})


def test_init_from_warns_when_the_held_out_cases_were_trained_on(
    trained, cases, tmp_path
):
    model, _ = trained  # seed 0 held out t2 and trained on t0 and t1
    folder = store.save_model(model, tmp_path / "start")
    settings = {**TINY, "epochs": 1, "crops_per_epoch": 4, "init_from": str(folder)}
    with pytest.warns(UserWarning, match=r"held-out case\(s\) t0: .* flatter"):
        ResNetUNet(**settings, seed=1).fit(cases)  # seed 1 holds t0 out


def test_init_from_refuses_another_kind_or_shape_naming_the_folder(
    trained, cases, tmp_path
):
    model, _ = trained
    folder = store.save_model(model, tmp_path / "start")
    meta_file = folder / "model.json"
    meta = json.loads(meta_file.read_text())
    settings = {**TINY, "epochs": 1, "crops_per_epoch": 4, "init_from": str(folder)}

    meta_file.write_text(
        json.dumps({**meta, "settings": {**meta["settings"], "last_cross": True}})
    )
    with pytest.raises(
        ValueError,
        match=r"start was built with last cross True \(here False\); .* set "
        r"last cross to True, or choose no saved model",
    ):
        ResNetUNet(**settings).fit(cases)
    meta_file.write_text(json.dumps({**meta, "kind": "classic"}))
    with pytest.raises(ValueError, match=r"start holds a 'classic' model"):
        ResNetUNet(**settings).fit(cases)
    with pytest.raises(ValueError, match=r"nowhere: no such folder"):
        ResNetUNet(**{**settings, "init_from": str(tmp_path / "nowhere")}).fit(cases)


def test_average_epochs_keeps_the_mean_of_the_last_epochs(cases, tmp_path):
    import shutil

    from vessel_core._resnet_fit import read_checkpoint

    folder = tmp_path / "ckpt"
    settings = {**TINY, "pretrained": False, "epochs": 3, "checkpoint_dir": str(folder)}
    settings["num_threads"] = 1  # the same float sums in both paths compared below

    def keep_previous(event):  # epoch N's event comes before its checkpoint
        if event.step == "epoch" and event.done > 1:
            shutil.copy(folder / CHECKPOINT_FILE, tmp_path / f"e{event.done - 1}.pt")

    model = ResNetUNet(**settings, average_epochs=2).fit(
        cases, on_progress=keep_previous
    )
    shutil.copy(folder / CHECKPOINT_FILE, tmp_path / "e3.pt")
    assert model.meta["averaged_epochs"] == [2, 3]
    assert model.meta["weights"] == "the mean of epochs 2-3"
    assert model.meta["scores"]["val"]["f1"] >= 0  # scored as averaged
    assert set(model.meta["best_epoch_scores"]) >= {"f1", "auc_roc"}

    ends = [read_checkpoint(tmp_path / f"e{n}.pt")["model"] for n in (2, 3)]
    kept = model.net.state_dict()
    conv = "layers.0.0.weight"  # the stem convolution
    mean = (ends[0][conv] + ends[1][conv]) / 2
    assert not torch.allclose(ends[0][conv], ends[1][conv])
    torch.testing.assert_close(kept[conv], mean, atol=2e-3, rtol=1e-3)  # float16
    norm = "layers.0.1.running_var"  # measured again, not the epochs' mean
    for end in ends:
        assert not torch.allclose(kept[norm], end[norm], rtol=0.01)
    mean_norm = (ends[0][norm] + ends[1][norm]) / 2
    assert not torch.allclose(kept[norm], mean_norm, rtol=0.01)  # beyond float16

    # the same model from kept checkpoint files, as bench/train_resnet --average
    snap = ResNetUNet.from_checkpoint(
        folder, cases, [tmp_path / "e2.pt", tmp_path / "e3.pt"], **settings
    )
    assert snap.meta["weights"] == "the mean of epochs 2-3"
    np.testing.assert_allclose(
        snap.predict_proba(cases[0]), model.predict_proba(cases[0]), atol=1e-5
    )
    # averaging off: the best single epoch, and the checkpoint's sum is ignored
    best = ResNetUNet.from_checkpoint(folder, cases, **settings)
    assert best.meta["averaged_epochs"] == []
    assert best.meta["weights"] == f"epoch {model.meta['best_epoch']}"
    other = tmp_path / "other"
    ResNetUNet(**{**settings, "checkpoint_dir": str(other), "epochs": 1}).fit(cases)
    with pytest.raises(ValueError, match="other.*checkpoint.pt was written by"):
        ResNetUNet.from_checkpoint(
            folder, cases, [tmp_path / "e2.pt", other / CHECKPOINT_FILE], **settings
        )


def test_loader_workers_draw_the_same_batches(cases):
    """Crops drawn in 2 worker processes are those drawn in-process, epoch by epoch."""
    from vessel_core._resnet_fit import make_learner

    dataset = CropDataset(cases, {}, 32, 12, 0.0, 15.0, 0.1, "rgb", seed=0)
    net = build_unet({**ARCH, "decoder_norm": "batch"}, seed=0)
    drawn = {}
    for workers in (0, 2):
        learn = make_learner(net, dataset, 4, torch.device("cpu"), workers, 1, 0, [])
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            drawn[workers, epoch] = [[t.clone() for t in b] for b in learn.dls.train]
    assert len(drawn[0, 0]) == 3
    for key in ((2, 0), (2, 1)):
        for ours, theirs in zip(drawn[key], drawn[0, key[1]], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(drawn[0, 0][0][0], drawn[0, 1][0][0])

    # and a fit with them trains as one without (one thread: the same sums)
    settings = {**TINY, "pretrained": False, "val_cases": 0, "num_threads": 1}
    losses = {}
    for workers in (0, 2):
        events = []
        ResNetUNet(**settings, loader_workers=workers).fit(
            cases, on_progress=events.append
        )
        losses[workers] = [e.metrics["loss"] for e in events if e.step == "batch"]
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-5)


def test_loader_workers_default_to_none_on_the_cpu_and_do_not_change_a_checkpoint(
    cases,
):
    model = ResNetUNet(**TINY)
    assert model.settings["loader_workers"] == -1
    assert model._loader_workers(torch.device("cpu")) == 0
    assert 0 <= model._loader_workers(torch.device("cuda")) <= 8
    other = ResNetUNet(**TINY, loader_workers=3)
    assert other._loader_workers(torch.device("cuda")) == 3
    assert model._identity(cases[:2], cases[2:]) == other._identity(
        cases[:2], cases[2:]
    )
    with pytest.raises(ValueError, match="loader_workers"):
        ResNetUNet(loader_workers=-2)


# ---------------------------------------------------------------------------
# Prediction


@pytest.mark.parametrize("shape", [(37, 53), (101, 67), (150, 131)])
def test_prediction_has_exactly_the_input_size(trained, shape):
    model, _ = trained
    case = tiny_case("odd", 7, shape)
    prob = model.predict_proba(case)
    assert prob.shape == shape and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert not prob[~case.fov_mask].any()


def test_prediction_of_a_bare_image_estimates_the_fov(trained):
    model, _ = trained
    case = tiny_case("bare", 8, (90, 110))
    prob = model.predict_proba(case.image)
    assert prob.shape == (90, 110)


@pytest.fixture
def tiled_inputs(monkeypatch):
    """The (H, W) of every image the tiled predictor receives (then it runs)."""
    from vessel_core import _resnet_net

    seen = []

    def spy(net, x, fov, *args, **kwargs):
        seen.append(tuple(x.shape[:2]))
        assert fov.shape == x.shape[:2]
        return predict_tiled(net, x, fov, *args, **kwargs)

    monkeypatch.setattr(_resnet_net, "predict_tiled", spy)
    return seen


def test_an_image_at_twice_the_training_scale_is_predicted_at_it(trained, tiled_inputs):
    model, _ = trained
    assert model.settings["match_scale"] is True  # the default
    # the tiny training cases are 96 pixels square: this one is twice their scale
    case = tiny_case("big", 9, (192, 192))
    factor = model.meta["training_fov_diameter"] / preprocess.fov_diameter(
        case.fov_mask
    )
    assert factor == pytest.approx(0.5, abs=0.01)
    prob = model.predict_proba(case)
    assert tiled_inputs == [(96, 96)]
    assert prob.shape == (192, 192) and prob.dtype == np.float32
    assert not prob[~case.fov_mask].any()
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_an_image_within_15_percent_of_the_training_scale_keeps_its_size(
    trained, tiled_inputs
):
    model, _ = trained
    model.predict_proba(tiny_case("near", 9, (106, 106)))  # 1.1 times the scale
    model.predict_proba(tiny_case("far", 9, (125, 125)))  # 1.3 times
    assert tiled_inputs == [(106, 106), (96, 96)]


def test_match_scale_false_predicts_at_the_native_size(trained, tiled_inputs):
    native = trained[0].with_prediction(match_scale=False)
    prob = native.predict_proba(tiny_case("big", 9, (192, 192)))
    assert tiled_inputs == [(192, 192)]
    assert prob.shape == (192, 192)


def test_match_scale_survives_saving_and_an_old_model_json_loads(
    trained, tmp_path, tiled_inputs
):
    model, _ = trained
    off = model.with_prediction(match_scale="false")
    folder = store.save_model(off, tmp_path / "off")
    loaded = store.load_model(folder)
    assert loaded.settings["match_scale"] is False

    # a model saved before the setting existed: it defaults to True
    folder = store.save_model(model, tmp_path / "old")
    meta = json.loads((folder / "model.json").read_text())
    del meta["settings"]["match_scale"]
    (folder / "model.json").write_text(json.dumps(meta))
    old = store.load_model(folder)
    assert old.settings["match_scale"] is True
    prob = old.predict_proba(tiny_case("big", 9, (192, 192)))
    assert tiled_inputs == [(96, 96)] and prob.shape == (192, 192)


def test_match_scale_does_not_change_what_a_checkpoint_must_match(cases):
    first = ResNetUNet(**TINY)._identity(cases[:2], cases[2:])
    other = ResNetUNet(**TINY, match_scale=False)._identity(cases[:2], cases[2:])
    assert first == other


def _box_logits(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: a 7x7 box filter with zero padding (border effects)."""
    kernel = torch.full((1, x.shape[1], 7, 7), 1.0 / (49 * x.shape[1]))
    vessel = torch.nn.functional.conv2d(x, kernel, padding=3)
    return torch.cat([torch.zeros_like(vessel), vessel], dim=1)


def test_flips_average_the_maps_of_the_mirrored_images(trained, cases):
    model, _ = trained
    case = cases[0]
    plain = model.predict_proba(case)
    mirrored = Case("m", case.image[:, ::-1].copy(), case.fov_mask[:, ::-1].copy())
    mirror_map = model.predict_proba(mirrored)[:, ::-1]
    two = model.with_prediction(flips=2).predict_proba(case)
    np.testing.assert_allclose(two, (plain + mirror_map) / 2, atol=1e-6)
    four = model.with_prediction(flips=4).predict_proba(case)
    assert four.shape == case.shape and four.dtype == np.float32
    assert not np.allclose(four, plain)
    assert np.all(four[~case.fov_mask] == 0)


def test_eight_copies_add_the_transposed_image_on_a_non_square_one(trained):
    model, _ = trained
    case = tiny_case("wide", 5, (80, 112))  # not square: a wrong turn cannot fit
    native = {"match_scale": False}  # no resizing, whose rounding is not symmetric
    four = model.with_prediction(flips=4, **native).predict_proba(case)
    turned = Case("t", case.image.transpose(1, 0, 2).copy(), case.fov_mask.T.copy())
    turned_four = model.with_prediction(flips=4, **native).predict_proba(turned).T
    eight = model.with_prediction(flips=8, **native).predict_proba(case)
    assert eight.shape == case.shape
    np.testing.assert_allclose(eight, (four + turned_four) / 2, atol=1e-6)
    assert not np.allclose(eight, four, atol=1e-4)


def test_command_line_predicts_with_the_prediction_flags(trained, tmp_path, capsys):
    from PIL import Image

    from vessel_core import cli

    model, _ = trained
    folder = store.save_model(model, tmp_path / "m")
    case = tiny_case("eye", 7)
    photo = tmp_path / "in" / "eye.png"
    photo.parent.mkdir()
    Image.fromarray(case.image).save(photo)

    def written(*flags):
        out = tmp_path / "out" / "-".join(flags or ("plain",))
        code = cli.main(
            [
                "-q",
                "predict",
                "--model",
                str(folder),
                str(photo),
                "--out",
                str(out),
                *flags,
            ]
        )
        assert code == 0, capsys.readouterr().err
        return np.asarray(Image.open(out / "eye_prob.png")).astype(int)

    four = written("--flips", "4")
    plain = written()
    # predict estimates the FOV of a photograph
    eye = Case("eye", case.image, io.estimate_fov(case.image))
    expected = store.load_model(folder).with_prediction(flips=4).predict_proba(eye)
    assert np.abs(four - np.round(expected * 255)).max() <= 1
    assert np.abs(four - plain).max() > 2  # the flag changed the map


def test_flips_must_be_1_2_4_or_8_and_do_not_change_a_checkpoint(cases):
    with pytest.raises(ValueError, match="flips"):
        ResNetUNet(flips=3)
    first = ResNetUNet(**TINY)._identity(cases[:2], cases[2:])
    assert first == ResNetUNet(**TINY, flips=4)._identity(cases[:2], cases[2:])


def test_tiles_blend_without_seams_on_a_constant_image():
    x = np.full((200, 170, 3), 0.7, np.float32)
    shapes = []

    def forward(t):
        shapes.append(tuple(t.shape[-2:]))
        return _box_logits(t)

    prob = predict_tiled(forward, x, None, tile_size=64, overlap=16)
    expected = 1 / (1 + math.exp(-0.7))
    assert len(shapes) > 4
    assert all(s[0] <= 64 and s[1] <= 64 for s in shapes)
    np.testing.assert_allclose(prob, expected, atol=2e-4)


def test_tiles_without_overlap_would_show_seams():
    # the control of the test above: hard tile edges see the zero padding
    x = np.full((200, 170, 3), 0.7, np.float32)
    prob = predict_tiled(_box_logits, x, None, tile_size=64, overlap=0)
    assert np.abs(prob - 1 / (1 + math.exp(-0.7))).max() > 0.01


def test_tile_starts_and_window_by_hand():
    assert tile_starts(50, 64, 16) == [0]
    assert tile_starts(160, 64, 16) == [0, 48, 96]  # 3 tiles overlapping 16
    w = blend_window(20, 8)
    np.testing.assert_allclose(w, w[::-1])
    # the outer 8 // 4 = 2 pixels get the floor, then a cosine over 6 pixels
    np.testing.assert_allclose(w[:2], 1e-3)
    assert w[2] == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.5 / 6))
    assert w[8] == pytest.approx(1.0)


def test_skipped_tiles_outside_the_fov_are_never_computed():
    x = np.zeros((300, 300, 3), np.float32)
    fov = np.zeros((300, 300), bool)
    fov[10:40, 10:40] = True
    shapes = []

    def forward(t):
        shapes.append(tuple(t.shape[-2:]))
        return _box_logits(t)

    prob = predict_tiled(forward, x, fov, tile_size=64, overlap=16)
    assert shapes == [(64, 64)]  # the FOV's box only
    assert not prob[100:].any()


def test_folding_batch_norm_keeps_the_output():
    torch.manual_seed(0)
    net = build_unet({**ARCH, "decoder_norm": "batch"})
    # give the BNs non-trivial statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, 64, 64))
    net.eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        before = net(x).clone()
        fast = build_unet({**ARCH, "decoder_norm": "batch"})
        fast.load_state_dict(net.state_dict())
        after = fold_for_inference(fast)(
            x.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(after.float(), before.float(), atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------
# Saving


def test_save_and_load_give_the_same_map_here_and_in_a_fresh_process(
    trained, cases, tmp_path
):
    model, _ = trained
    folder = store.save_model(model, tmp_path / "rn")
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(
        v.dtype == torch.float16 for v in state.values() if v.is_floating_point()
    )

    loaded = store.load_model(folder)
    assert loaded.kind == "resnet34"
    assert loaded.threshold == pytest.approx(model.threshold)
    assert loaded._fast_net is None  # built on the first image, or by ready()
    assert store.ready(loaded) is loaded and loaded._fast_net is not None
    case = cases[0]
    here = loaded.predict_proba(case)
    # a fitted model already holds its weights rounded as saved: the same map
    np.testing.assert_allclose(here, model.predict_proba(case), atol=1e-5)

    np.save(tmp_path / "image.npy", case.image)
    np.save(tmp_path / "fov.npy", case.fov_mask)
    script = (
        "import sys, numpy as np\n"
        "from vessel_core import store\n"
        "from vessel_core.cases import Case\n"
        "d = sys.argv[1]\n"
        "m = store.load_model(d + '/rn')\n"
        "c = Case('x', np.load(d + '/image.npy'), np.load(d + '/fov.npy'))\n"
        "np.save(d + '/map.npy', m.predict_proba(c))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    np.testing.assert_allclose(np.load(tmp_path / "map.npy"), here, atol=1e-5)


def test_a_model_trained_on_a_gpu_loads_and_predicts_on_the_cpu(
    trained, cases, tmp_path
):
    model, _ = trained
    folder = store.save_model(model, tmp_path / "rn")
    meta = json.loads((folder / "model.json").read_text())
    meta["settings"]["device"] = "cuda"  # as bench/gpu_full.sh trains it
    (folder / "model.json").write_text(json.dumps(meta))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the model would stay on it")
    loaded = store.load_model(folder)
    assert loaded.settings["device"] == "auto"
    np.testing.assert_allclose(
        loaded.predict_proba(cases[0]), model.predict_proba(cases[0]), atol=1e-5
    )


def test_load_without_weights_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="weights.pt: missing"):
        ResNetUNet.load_files(tmp_path, {"settings": {}})


# ---------------------------------------------------------------------------
# ImageNet weights from the local torch cache only


def test_pretrained_weights_come_from_the_torch_cache(cases, tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        import torchvision

        torch.manual_seed(123)
        reference = torchvision.models.resnet34(weights=None).state_dict()
        (tmp_path / "checkpoints").mkdir()
        torch.save(reference, tmp_path / "checkpoints" / RESNET34_FILE)

        path = resolve_pretrained("auto")
        assert path == tmp_path / "checkpoints" / RESNET34_FILE
        assert imagenet_weight_file() == path
        net = build_unet({**ARCH, "decoder_norm": "batch"}, path, seed=0)
        encoder = encoder_of(net)
        torch.testing.assert_close(encoder[0].weight, reference["conv1.weight"])
        torch.testing.assert_close(
            encoder[6][0].conv1.weight, reference["layer3.0.conv1.weight"]
        )

        settings = {**TINY, "epochs": 1, "crops_per_epoch": 4, "val_cases": 0}
        model = ResNetUNet(**settings).fit(cases)
        assert model.meta["pretrained"] is True
        assert model.meta["pretrained_file"] == str(path)
    finally:
        torch.hub.set_dir(old)


def test_imagenet_weight_file_is_public_and_loads_no_torch():
    # the Train page asks for the path; importing the kind must not load torch
    code = (
        "import sys; from vessel_core.resnet import imagenet_weight_file; "
        "print('torch' in sys.modules); print(imagenet_weight_file().name)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", RESNET34_FILE]


def test_pretrained_true_without_the_file_refuses_to_download(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        assert resolve_pretrained("auto") is None
        with pytest.raises(ValueError, match="nothing is downloaded"):
            resolve_pretrained(True)
    finally:
        torch.hub.set_dir(old)


# ---------------------------------------------------------------------------
# int8 prediction, threads, float16 weights


def test_int8_network_follows_the_float_one_and_survives_saving(
    trained, cases, tmp_path
):
    model, _ = trained
    case = cases[0]
    x = network_input(case.image, case.fov_mask, model.settings["input"])
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        exact = model._fresh_net()(t)
    assert model.calibrate_int8(cases)
    quick_model = model.with_prediction(precision="int8")
    with torch.no_grad():
        quick = quick_model._inference_net()(t)
    assert type(quick) is torch.Tensor and quick.shape == exact.shape
    # a barely trained network's probabilities hardly vary, so compare logits
    r = np.corrcoef(quick.flatten(), exact.flatten())[0, 1]
    assert r > 0.98
    assert float((quick - exact).abs().mean()) < 0.1 * float(exact.std())

    prob = quick_model.predict_proba(case)
    folder = store.save_model(quick_model, tmp_path / "q")
    assert (folder / "int8_ranges.pt").is_file()
    loaded = store.load_model(folder)
    assert loaded.settings["precision"] == "int8"
    np.testing.assert_allclose(loaded.predict_proba(case), prob, atol=1e-6)
    assert model.settings["precision"] == "float32"  # the copy changed alone


def test_int8_without_calibration_falls_back_to_float32(trained, cases):
    model = ResNetUNet(**{**TINY, "precision": "int8"})
    model.net = trained[0].net
    with pytest.warns(UserWarning, match="no calibrated int8 ranges"):
        prob = model.predict_proba(cases[0])
    np.testing.assert_allclose(prob, trained[0].predict_proba(cases[0]), atol=1e-5)


def test_with_prediction_checks_what_it_changes(trained):
    with pytest.raises(ValueError, match="precision must be one of"):
        trained[0].with_prediction(precision="float16")
    with pytest.raises(ValueError, match=r"\['epochs'\] cannot change after training"):
        trained[0].with_prediction(epochs=3)


def test_with_prediction_shares_the_weights_and_leaves_the_model_alone(trained, cases):
    model, _ = trained
    before = model.predict_proba(cases[0])
    four = model.with_prediction(flips=4, tile_size=96)
    assert four.net is model.net and four.threshold == model.threshold
    assert (four.settings["flips"], model.settings["flips"]) == (4, 1)
    tiles = [m.meta["settings"]["tile_size"] for m in (four, model)]
    assert tiles == [96, 64]
    assert not np.allclose(four.predict_proba(cases[0]), before)
    np.testing.assert_array_equal(model.predict_proba(cases[0]), before)


def test_thread_policy_leaves_the_busy_cores_alone():
    from vessel_core._resnet_threads import ThreadPolicy

    policy = ThreadPolicy()
    policy.cores = 2
    policy.others = 1.0  # another process holds a whole core
    assert policy.threads() == 1
    policy.others = 0.1
    assert policy.threads() == 2
    policy.others = 5.0
    assert policy.threads() == 1
    assert ThreadPolicy(fixed=3).threads() == 3


def test_saved_weights_are_float16_unless_too_large():
    from vessel_core.resnet import _as_saved

    state = {
        "w": torch.tensor([0.1, -2.0]),
        "v": torch.tensor([1e6]),
        "n": torch.tensor(3),
    }
    saved = _as_saved(state)
    assert saved["w"].dtype == torch.float16
    assert saved["v"].dtype == torch.float32  # 1e6 is beyond float16's 65504
    assert saved["n"].dtype == torch.int64
