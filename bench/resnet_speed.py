"""Speed of the ResNet34 U-Net on this machine: prediction and training.

    python bench/resnet_speed.py [--model models/resnet34-quick] [--repeat 3]

Prints, in one run:

- the baseline: one plain eager forward pass of the network over the whole DRIVE
  image (padded to 608x576), float32, NCHW, batch norm unfolded (with
  ``--variants``, also fastai's default decoder, which adds a full-resolution
  residual block, and a TorchScript version, neither of which is used);
- the steps `predict_proba` takes one at a time (batch norm folded, channels-last,
  only the FOV's box), and `predict_proba` itself (input normalisation and CLAHE
  included) in float32 and in int8, in seconds per DRIVE image;
- training throughput in crops per second (forward, loss, backward and the AdamW
  step through the fastai Learner) at the quick preset's crop and batch size.

The machine is shared: each figure is the fastest of ``--repeat`` runs, and the
load average and the CPU time other processes took during the run are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vessel_core import _resnet_net as rn  # noqa: E402
from vessel_core import io, store  # noqa: E402
from vessel_core._resnet_data import network_input  # noqa: E402
from vessel_core._resnet_threads import ThreadPolicy  # noqa: E402
from vessel_core.cases import split_cases  # noqa: E402
from vessel_core.resnet import PRESETS, ResNetUNet, _arch  # noqa: E402


def drive_dir() -> Path:
    env = os.environ.get("VESSEL_DRIVE_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "DRIVE"


POLICY = ThreadPolicy(interval=1.0)


def fastest(fn, repeat: int) -> tuple[float, int]:
    """Seconds of the fastest of ``repeat`` calls after a warm-up, and its threads.

    Before each call the thread count follows the free cores, as in the model.
    """
    POLICY.update(force=True)
    fn()
    best, threads = float("inf"), 0
    for _ in range(repeat):
        POLICY.update(force=True)
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, threads = seconds, torch.get_num_threads()
    return best, threads


def other_cpu_seconds() -> float:
    """CPU seconds used by every process but this one (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def load_model(folder: Path | None) -> ResNetUNet:
    if folder is not None and folder.is_dir():
        return store.load_model(folder)
    model = ResNetUNet(pretrained=False)
    model.net = rn.build_unet(_arch(model.settings), seed=0).eval()
    return model


def prediction(
    model: ResNetUNet, case, repeat: int, calibration, variants: bool = False
) -> list[tuple[str, tuple[float, int]]]:
    """Seconds per DRIVE image: the baseline, each step of predict_proba, the call."""
    rows = []
    x = network_input(case.image, case.fov_mask, model.settings["input"])
    h, w = x.shape[:2]
    full = np.pad(x, ((0, -h % 32), (0, -w % 32), (0, 0)), mode="edge")
    full = torch.from_numpy(full.transpose(2, 0, 1).copy())[None]

    if variants:
        default = rn.build_unet(
            {**_arch(model.settings), "last_cross": True, "decoder_norm": "none"}
        ).eval()
        with torch.no_grad():
            rows.append(
                (
                    "(reference) fastai's default decoder (last_cross, no decoder "
                    "BN), random weights, plain eager, whole image",
                    fastest(lambda: default(full), repeat),
                )
            )
        del default

    plain = rn.build_unet(_arch(model.settings))
    plain.load_state_dict(model.net.state_dict())
    plain.eval()
    with torch.no_grad():
        rows.append(
            (
                f"baseline: plain eager forward, whole image {tuple(full.shape[-2:])}",
                fastest(lambda: plain(full), repeat),
            )
        )

    model = model.with_prediction(precision="float32")
    fast = model._inference_net()
    fast_in = full.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        rows.append(
            (
                "+ batch norm folded, in-place ReLU, channels-last, whole image",
                fastest(lambda: fast(fast_in), repeat),
            )
        )
        box = lambda: rn.predict_tiled(  # noqa: E731
            fast,
            x,
            case.fov_mask,
            model.settings["tile_size"],
            model.settings["tile_overlap"],
            channels_last=True,
        )
        rows.append(
            ("+ only the FOV's box (+16 px margin), one tile", fastest(box, repeat))
        )
    if variants:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(fast, fast_in, check_trace=False))
            traced = torch.jit.optimize_for_inference(traced)
            rows.append(
                (
                    "(tried) TorchScript trace + freeze + optimize_for_inference",
                    fastest(lambda: traced(fast_in), repeat),
                )
            )
    rows.append(
        (
            "predict_proba, float32 (adds input normalisation, CLAHE)",
            fastest(lambda: model.predict_proba(case), repeat),
        )
    )
    if model.calibrate_int8(calibration) if model._int8_ranges is None else True:
        quantized = model.with_prediction(precision="int8")
        rows.append(
            (
                "predict_proba, int8 (quantized FX graph)",
                fastest(lambda: quantized.predict_proba(case), repeat),
            )
        )
    return rows


def training(cases, repeat_batches: int = 6) -> tuple[float, float]:
    """Crops per second and seconds per batch at the quick preset's sizes.

    The fit's own thread policy applies (`make_learner` gets a `TrainingEvents`
    only in `fit`; here the count is set once, before the run).
    """
    from fastai.callback.core import Callback

    from vessel_core._resnet_data import CropDataset
    from vessel_core._resnet_fit import make_learner

    quick = PRESETS["quick"]
    batch = quick["batch_size"]
    ds = CropDataset(
        cases,
        {},
        quick["crop_size"],
        batch * (repeat_batches + 1),
        0.0,
        quick["rotation"],
        quick["jitter"],
        quick["input"],
        0,
    )
    net = rn.build_unet(_arch(ResNetUNet().settings), seed=0)
    stamps = []

    class Clock(Callback):
        def after_batch(self):
            stamps.append(time.perf_counter())

        def before_validate(self):
            from fastai.learner import CancelValidException

            raise CancelValidException()

    learn = make_learner(net, ds, batch, torch.device("cpu"), 0, 1.0, 0.01, [Clock()])
    POLICY.update(force=True)
    learn.fit_one_cycle(1, lr_max=quick["lr"])
    gaps = np.diff(stamps)  # the first batch (warm-up) is not timed
    return batch / float(np.median(gaps)), float(np.median(gaps))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "resnet34-quick")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-training", action="store_true")
    p.add_argument(
        "--variants", action="store_true", help="also time what did not help (jit)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    found = io.discover(drive_dir())
    test = split_cases(found.cases, "test")
    train = split_cases(found.cases, "train")[:4]
    model = load_model(args.model)
    trained = "trained" if model.meta.get("epochs_run") else "random weights"

    load_before, others_before, start = (
        os.getloadavg()[0],
        other_cpu_seconds(),
        time.time(),
    )
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, model: {trained}")
    print(f"DRIVE test case {test[0].id}, {test[0].shape[0]}x{test[0].shape[1]}")
    rows = prediction(model, test[0], args.repeat, train[:2], args.variants)
    for name, (seconds, threads) in rows:
        print(f"  {seconds:6.2f} s/image  {threads} thread(s)  {name}")
    if not args.no_training:
        rate, per_batch = training(train)
        quick = PRESETS["quick"]
        side = quick["crop_size"]
        print(
            f"  training: {rate:6.1f} crops/s ({side}x{side} crops, batch "
            f"{quick['batch_size']}: {per_batch:.2f} s/batch, "
            f"{torch.get_num_threads()} thread(s))"
        )
    wall = time.time() - start
    others = other_cpu_seconds() - others_before
    print(
        f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}; other processes "
        f"used {others / wall:.2f} of the {os.cpu_count()} cores during the run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
