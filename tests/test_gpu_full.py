"""bench/gpu_full.sh: the model's pieces come back from two calls and are rejoined."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

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
