"""bench/train_resnet.py --snapshot (`ResNetUNet.from_checkpoint`): the best epoch
so far, the fit left alone."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_drive_like

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("fastai", reason="fastai is missing")


def bench_main():
    spec = importlib.util.spec_from_file_location(
        "train_resnet", ROOT / "bench" / "train_resnet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_snapshot_scores_the_best_epoch_and_leaves_the_checkpoint(tmp_path, capsys):
    from vessel_core import store
    from vessel_core.io import discover

    data, checkpoints = tmp_path / "DRIVE", tmp_path / "ckpt"
    write_drive_like(data)
    tiny = [
        "device=cpu",
        "crop_size=32",
        "batch_size=4",
        "epochs=2",
        "crops_per_epoch=8",
        "val_cases=1",
        "tile_size=64",
        "tile_overlap=16",
        f"checkpoint_dir={checkpoints}",
        "num_threads=1",  # maps compared to 1e-6: one thread, the same float sums
    ]
    sets = [arg for pair in tiny for arg in ("--set", pair)]
    main = bench_main()
    base = ["--preset", "quick", "--data", str(data), *sets]
    assert main([*base, "--out", str(tmp_path / "trained")]) == 0
    checkpoint = checkpoints / "checkpoint.pt"
    before = digest(checkpoint)
    capsys.readouterr()

    assert main([*base, "--snapshot", "--out", str(tmp_path / "snap")]) == 0
    printed = capsys.readouterr().out
    assert f"snapshot of {checkpoints}" in printed and "DRIVE test" in printed
    assert digest(checkpoint) == before  # the fit's own checkpoint is untouched
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint.pt"]

    # another fit's settings: refused, not a model of random weights
    other = [*base, "--set", "crops_per_epoch=12", "--snapshot"]
    with pytest.raises(SystemExit, match="written by a fit with other settings") as e:
        main([*other, "--out", str(tmp_path / "wrong")])
    assert "crops_per_epoch=8 (here 12)" in str(e.value)  # it says what differs
    assert not (tmp_path / "wrong").exists()
    assert digest(checkpoint) == before

    trained = store.load_model(tmp_path / "trained")
    snap = store.load_model(tmp_path / "snap")
    assert snap.meta["snapshot_of"] == str(checkpoints)
    for key, value in [("checkpoint_dir", str(checkpoints)), ("max_minutes", 13.5)]:
        assert snap.settings[key] == snap.meta["settings"][key] == value
    assert snap.meta["best_epoch"] == trained.meta["best_epoch"]
    # the held-out maps of the best epoch are predicted again (a checkpoint does
    # not keep them) from the weights as saved: the same threshold, nearly
    assert snap.meta["threshold_cases"] == trained.meta["threshold_cases"]
    assert len(snap.meta["threshold_cases"]) > 1  # held-out and training cases
    assert snap.threshold == pytest.approx(trained.threshold, abs=0.01)
    case = discover(data).cases[-1]
    np.testing.assert_allclose(
        snap.predict_proba(case), trained.predict_proba(case), atol=1e-6
    )


def test_a_snapshot_needs_a_checkpoint(tmp_path):
    main = bench_main()
    write_drive_like(tmp_path / "DRIVE")
    base = ["--data", str(tmp_path / "DRIVE"), "--snapshot"]
    with pytest.raises(SystemExit, match="needs --set checkpoint_dir"):
        main(base)
    with pytest.raises(SystemExit, match="checkpoint.pt does not exist"):
        main([*base, "--set", f"checkpoint_dir={tmp_path / 'none'}"])
    with pytest.raises(SystemExit, match="--average needs --snapshot"):
        main(["--data", str(tmp_path / "DRIVE"), "--average", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file: .*epoch-7.pt"):
        main([*base, "--average", str(tmp_path / "epoch-7.pt")])


def test_bad_settings_and_data_end_in_one_line_naming_the_problem(tmp_path):
    main = bench_main()
    write_drive_like(tmp_path / "DRIVE")
    base = ["--data", str(tmp_path / "DRIVE")]
    with pytest.raises(SystemExit, match="^error: epochs must be a number, got 'abc'"):
        main([*base, "--set", "epochs=abc"])
    with pytest.raises(SystemExit, match=r"^error: .*nowhere: no such folder$"):
        main([*base, "--set", f"init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(SystemExit, match="no such folder or file .*give the DRIVE"):
        main(["--data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="holds 3 training and 0 test case"):
        main(["--data", str(tmp_path / "DRIVE" / "training")])
