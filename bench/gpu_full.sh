#!/usr/bin/env bash
# Train the ResNet34 full preset on a lent GPU machine and bring the model back.
#
# The GPU machine (the `device` tool of this workplace) has python3 with torch and
# torchvision but no fastai, cannot reach the internet, and does not see
# ../shared. At most 64 MiB travel there and 64 MiB (8 files of 16 MiB) come back
# per call, while the model's float16 weights are 82 MB, so it takes four steps:
#
#   1. here:  bash bench/gpu_full.sh prepare
#      fills the git-ignored .device/ with pure-Python wheels of fastai and the
#      packages it imports that the GPU machine lacks (versions of this .venv),
#      and a copy of DRIVE ($VESSEL_DRIVE_DIR or ../shared/data/DRIVE), ~35 MB.
#   2. there: run(command="bash bench/gpu_full.sh train", carry=[".device"],
#                 timeout_s=600)
#      trains `--preset full` on CUDA (max_minutes=7 as a safety net: the
#      one-cycle schedule follows the clock if the GPU is slower than planned),
#      scores DRIVE test, returns the log, model.json, int8 ranges and the
#      first pieces of weights.pt; keeps the rest in /tmp/keep on that machine.
#   3. there, at once (the machine stays warm only ~30 s after a call):
#      run(command="bash bench/gpu_full.sh rest", timeout_s=60)
#   4. here:  bash bench/gpu_full.sh assemble DIR1 DIR2 [models/resnet34-full]
#      with the two calls' files_at folders: joins the pieces, checks their
#      SHA-256, writes the model folder. Then score it on this CPU:
#      .venv/bin/python bench/quality.py --rows resnet --resnet-model models/resnet34-full
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# what travels, and where the GPU machine keeps what the first call cannot return
# (both overridable, for tests/test_gpu_full.py)
DEVICE_DIR="${GPU_FULL_DEVICE_DIR:-$ROOT/.device}"
KEEP="${GPU_FULL_KEEP:-/tmp/keep}"
PIECE=15M
# fastai and what it imports that the GPU machine's image does not hold
WHEELS=(fastai fastcore fastdownload fastprogress fasttransform plum-dispatch
        python-fasthtml starlette itsdangerous python-multipart beartype)

prepare() {
    local venv="$ROOT/.venv/bin/python" drive="${VESSEL_DRIVE_DIR:-$ROOT/../shared/data/DRIVE}"
    [[ -x "$venv" ]] || { echo "no $venv: run 'make test' (or make .venv) first" >&2; exit 1; }
    [[ -d "$drive/training" && -d "$drive/test" ]] || {
        echo "no DRIVE at $drive (training/ and test/): set VESSEL_DRIVE_DIR" >&2; exit 1; }
    rm -rf "$DEVICE_DIR" && mkdir -p "$DEVICE_DIR/wheels"
    local pins
    pins=$("$venv" -c 'import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}")
    "$venv" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$DEVICE_DIR/wheels" $pins
    cp -r "$drive" "$DEVICE_DIR/DRIVE"
    du -sh "$DEVICE_DIR"
    echo "ready: run bench/gpu_full.sh train on the GPU machine with carry=['.device']"
}

train() {
    : "${OUT:?OUT is not set: this step runs on the GPU machine}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site "$DEVICE_DIR"/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi -L | tee "$OUT/train.log"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
        | tee -a "$OUT/train.log"
    rm -rf "$KEEP" && mkdir -p "$KEEP/pieces"
    python3 "$ROOT/bench/train_resnet.py" --preset full --data "$DEVICE_DIR/DRIVE" \
        --out "$KEEP/resnet34-full" --set device=cuda --set max_minutes=7 \
        "$@" 2>&1 | tee -a "$OUT/train.log"
    local model="$KEEP/resnet34-full"
    cp "$model/model.json" "$OUT/"
    if [[ -f "$model/int8_ranges.pt" ]]; then cp "$model/int8_ranges.pt" "$OUT/"; fi
    (cd "$model" && sha256sum weights.pt) > "$OUT/SHA256SUMS"
    split -b "$PIECE" -d -a 2 "$model/weights.pt" "$KEEP/pieces/weights.pt.part"
    ls -l "$KEEP/pieces"
    local n=0 part
    for part in "$KEEP"/pieces/weights.pt.part*; do
        if (( n < 3 )); then mv "$part" "$OUT/"; fi
        n=$((n + 1))
    done
    echo "returned 3 of $n pieces; now run: bash bench/gpu_full.sh rest"
}

rest() {
    : "${OUT:?OUT is not set: this step runs on the GPU machine}"
    mv "$KEEP"/pieces/weights.pt.part* "$OUT/"
    ls -l "$OUT"
}

assemble() {
    (( $# >= 2 )) || { echo "usage: gpu_full.sh assemble DIR1 DIR2 [OUT_FOLDER]" >&2; exit 2; }
    local first second target="${3:-$ROOT/models/resnet34-full}" tmp
    first=$(realpath "$1") && second=$(realpath "$2")
    tmp=$(mktemp -d)
    # the pieces in the order of their numbers, whichever call brought them
    ls "$first"/weights.pt.part* "$second"/weights.pt.part* \
        | awk -F/ '{print $NF, $0}' | sort | cut -d' ' -f2- \
        | while read -r part; do cat "$part"; done > "$tmp/weights.pt"
    # the train call's folder holds the checksum and the model's other files
    local meta="$first"
    [[ -f "$meta/SHA256SUMS" ]] || meta="$second"
    (cd "$tmp" && sha256sum -c "$meta/SHA256SUMS") || { rm -rf "$tmp"; exit 1; }
    cp "$meta/model.json" "$tmp/"
    if [[ -f "$meta/int8_ranges.pt" ]]; then cp "$meta/int8_ranges.pt" "$tmp/"; fi
    rm -rf "$target" && mkdir -p "$(dirname "$target")" && mv "$tmp" "$target"
    chmod 755 "$target" && chmod 644 "$target"/*
    ls -l "$target"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    train) shift; train "$@" ;;
    rest) shift; rest "$@" ;;
    assemble) shift; assemble "$@" ;;
    *) echo "usage: gpu_full.sh prepare|train|rest|assemble (see the top of this file)" >&2
       exit 2 ;;
esac
