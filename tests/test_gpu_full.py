"""bench/gpu_full.sh: the model's pieces come back from two calls and are rejoined."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from synthetic import write_drive_like

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_full.sh"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def calls(tmp_path):
    """Two calls' folders as the GPU machine returns them: pieces 00-02, 03-05."""
    weights = os.urandom(6 * 1000 + 123)
    first, second = tmp_path / "call1", tmp_path / "call2"
    first.mkdir()
    second.mkdir()
    for i in range(6):
        folder = first if i < 3 else second
        piece = weights[i * 1000 : (i + 1) * 1000 if i < 5 else None]
        (folder / f"weights.pt.part{i:02d}").write_bytes(piece)
    digest = hashlib.sha256(weights).hexdigest()
    (first / "SHA256SUMS").write_text(f"{digest}  weights.pt\n")
    (first / "model.json").write_text('{"kind": "resnet34"}')
    return first, second, weights


def test_assemble_joins_the_pieces_of_both_calls_in_order(calls, tmp_path):
    first, second, weights = calls
    target = tmp_path / "models" / "resnet34-full"
    result = run("assemble", str(second), str(first), str(target))  # either order
    assert result.returncode == 0, result.stderr
    assert (target / "weights.pt").read_bytes() == weights
    assert (target / "model.json").read_text() == '{"kind": "resnet34"}'


def test_assemble_refuses_a_damaged_piece_and_writes_no_model(calls, tmp_path):
    first, second, _ = calls
    piece = second / "weights.pt.part04"
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    target = tmp_path / "models" / "resnet34-full"
    result = run("assemble", str(first), str(second), str(target))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert not target.exists()


def test_assemble_refuses_a_missing_piece(calls, tmp_path):
    first, second, _ = calls
    (second / "weights.pt.part05").unlink()
    result = run("assemble", str(first), str(second), str(tmp_path / "m"))
    assert result.returncode != 0
    assert not (tmp_path / "m").exists()


def test_the_gpu_steps_refuse_to_run_outside_the_gpu_machine():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    for step in ("train", "rest"):
        result = subprocess.run(
            ["bash", str(SCRIPT), step], capture_output=True, text=True, env=env
        )
        assert result.returncode != 0
        assert "OUT is not set" in result.stderr


def test_an_unknown_step_prints_the_usage():
    result = run("bogus")
    assert result.returncode == 2
    assert "prepare|train|rest|assemble" in result.stderr


@pytest.mark.slow
def test_the_train_rest_and_assemble_steps_bring_back_a_model_that_loads(tmp_path):
    """The GPU machine's two calls, run here on the CPU with tiny settings."""
    import sys

    device_dir, keep = tmp_path / "device", tmp_path / "keep"
    (device_dir / "wheels").mkdir(parents=True)
    write_drive_like(device_dir / "DRIVE")
    bin_dir = tmp_path / "bin"  # stand-ins for the GPU machine's programs
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        "#!/bin/bash\n"
        '[[ "$1 $2" == "-m pip" ]] && exit 0  # the packages are here already\n'
        f'exec {sys.executable} "$@"\n'
    )
    (bin_dir / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: (a test)'\n")
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "GPU_FULL_DEVICE_DIR": str(device_dir),
        "GPU_FULL_KEEP": str(keep),
    }
    tiny = "device=cpu crop_size=32 batch_size=4 epochs=1 crops_per_epoch=8"
    tiny += " val_cases=1 tile_size=64 tile_overlap=16"
    first, second = tmp_path / "out1", tmp_path / "out2"
    first.mkdir()
    second.mkdir()
    sets = [arg for pair in tiny.split() for arg in ("--set", pair)]
    result = subprocess.run(
        ["bash", str(SCRIPT), "train", *sets],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env, "OUT": str(first)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    returned = sorted(p.name for p in first.iterdir())
    assert returned == [
        "SHA256SUMS",
        "int8_ranges.pt",
        "model.json",
        "train.log",
        "weights.pt.part00",
        "weights.pt.part01",
        "weights.pt.part02",
    ]
    assert sum(p.stat().st_size for p in first.iterdir()) < 64 * 2**20
    assert "DRIVE test" in (first / "train.log").read_text()

    result = run("rest", env={**env, "OUT": str(second)})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in second.iterdir())[0] == "weights.pt.part03"

    target = tmp_path / "models" / "resnet34-full"
    result = run("assemble", str(first), str(second), str(target))
    assert result.returncode == 0, result.stderr

    from vessel_core import store
    from vessel_core.io import discover

    model = store.load_model(target)
    case = discover(device_dir / "DRIVE").cases[-1]
    assert model.predict_proba(case).shape == case.shape
