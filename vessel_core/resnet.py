"""The ResNet34 U-Net model kind (``"resnet34"``): a fastai `DynamicUnet`.

The encoder is torchvision's resnet34, the decoder fastai's `DynamicUnet`, with two
output classes per pixel (background, vessel); the softmax of the vessel class is
the probability map. It trains on random crops of the loaded cases (never on files
fastai finds itself) with fastai's one-cycle schedule, keeps the weights that score
best on a few held-out cases, and predicts any image size tile by tile, at the
scale it was trained on (an image is resized so its FOV matches the training one).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vessel_core.cases import Case, fingerprint_cases, fit_cases, image_fingerprints
from vessel_core.progress import Progress, emit, warn

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
INT8_FILE = "int8_ranges.pt"

#: torchvision's ImageNet weight file for resnet34 (IMAGENET1K_V1).
RESNET34_FILE = "resnet34-b627a593.pth"

#: The largest magnitude float16 holds; a tensor beyond it is saved as float32.
_FLOAT16_MAX = 65504.0

#: What each preset fills in for the settings left at None.
PRESETS: dict[str, dict[str, Any]] = {
    # minutes on a 2-core CPU from random weights
    "quick": {
        "crop_size": 64,
        "batch_size": 8,
        "epochs": 12,
        "crops_per_epoch": 640,
        "lr": 6e-3,
        "weight_decay": 0.01,
        "vessel_crop_share": 0.7,
        "rotation": 15.0,
        "jitter": 0.1,
        "dice_weight": 1.0,
        "input": "rgb",
        "val_cases": 2,
        "threshold_train_cases": 6,
        "max_minutes": 13.5,
        "average_epochs": 0,
    },
    # 100k crops of 128 px: ~10 h on this 2-core CPU, minutes on a GPU; meant to
    # run with checkpoint_dir and be resumed
    "full": {
        "crop_size": 128,
        "batch_size": 16,
        "epochs": 50,
        "crops_per_epoch": 2000,
        "lr": 2e-3,
        "weight_decay": 0.01,
        "vessel_crop_share": 0.6,
        "rotation": 30.0,
        "jitter": 0.15,
        "dice_weight": 1.0,
        "input": "rgb",
        "val_cases": 4,
        "threshold_train_cases": 0,
        "max_minutes": 0.0,
        "average_epochs": 11,
    },
}

#: A fit from a saved model (``init_from``) with ``lr`` left to the preset takes
#: this share of the preset's: its full peak would first undo what was learned
#: (the quick preset's 0.006 took a DRIVE model from F1 0.82 to 0.73 in 2 batches).
FINE_TUNE_LR = 0.1
#: Training cases that pick the threshold of a fit with no held-out case.
NO_HELD_OUT_THRESHOLD_CASES = 6

#: Training crops whose batches measure the batch norm statistics of averaged
#: weights again (`_resnet_fit.recompute_batch_norm`).
AVERAGE_NORM_CROPS = 1024

_DEFAULTS: dict[str, Any] = {
    "preset": "quick",
    **dict.fromkeys(PRESETS["quick"]),
    "pretrained": "auto",
    "init_from": None,
    "last_cross": False,
    "self_attention": False,
    "blur": False,
    "decoder_norm": "batch",
    "tile_size": 640,
    "tile_overlap": 64,
    "match_scale": True,
    "flips": 1,
    "precision": "int8",
    "checkpoint_dir": None,
    "resume": False,
    "num_threads": 0,
    "loader_workers": -1,
    "device": "auto",
    "seed": 0,
}

_INTEGERS = ("crop_size", "batch_size", "epochs", "crops_per_epoch", "val_cases")
_INTEGERS += ("threshold_train_cases",)
_INTEGERS += ("tile_size", "tile_overlap", "num_threads", "loader_workers", "seed")
_INTEGERS += ("flips", "average_epochs")
_FLOATS = ("lr", "weight_decay", "vessel_crop_share", "rotation", "jitter")
_FLOATS += ("dice_weight", "max_minutes")
_BOOLS = ("last_cross", "self_attention", "blur", "resume", "match_scale")
#: The settings `ResNetUNet.with_prediction` may change on a trained model.
PREDICTION_SETTINGS = (
    "precision",
    "flips",
    "tile_size",
    "tile_overlap",
    "match_scale",
    "num_threads",
)
#: The most accurate prediction on a CPU: float32, four mirrored copies averaged
#: (about 5x the time of the default int8 single pass).
BEST_PREDICTION = {"precision": "float32", "flips": 4}


def imagenet_weight_file() -> Path:
    """Where torchvision keeps resnet34's ImageNet weights in the local torch cache.

    Returns
    -------
    Path
        ``<torch hub folder>/checkpoints/resnet34-b627a593.pth`` (`RESNET34_FILE`),
        whether or not the file is there. ``pretrained="auto"`` uses it when it
        is; nothing is ever downloaded.
    """
    import torch  # only when asked: importing this module stays torch-free

    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET34_FILE


class ResNetUNet:
    """A U-Net with a ResNet34 encoder (fastai `DynamicUnet`) for vessel maps.

    Parameters
    ----------
    preset : {"quick", "full"}, default="quick"
        Fills every setting left at None: ``"quick"`` trains within 14 minutes on
        a 2-core CPU (64-pixel crops in batches of 8, the schedule following the
        clock), ``"full"`` is meant for hours on a CPU or minutes on a GPU
        (128-pixel crops, 50 epochs of 2000) with ``checkpoint_dir`` and
        ``resume``.
    crop_size, batch_size, epochs, crops_per_epoch : int, optional
        Random training crops: side in pixels, per batch, epochs of the one-cycle
        schedule, crops per epoch.
    lr : float, optional
        Peak learning rate of fastai's one-cycle schedule (AdamW); None: the
        preset's (quick 0.006, full 0.002), a tenth of it with ``init_from``.
    weight_decay : float, optional
        AdamW's weight decay; None: the preset's (0.01).
    vessel_crop_share : float, optional
        Share of crops centred on the pixels the undersampling selection chose
        (vessels and the band near them); the rest are centred anywhere in the FOV.
    rotation, jitter : float, optional
        Largest arbitrary rotation (degrees) and brightness/contrast jitter; every
        crop also gets a random flip and multiple of 90 degrees.
    dice_weight : float, optional
        Loss = cross-entropy + ``dice_weight`` * (1 - soft Dice), inside the FOV.
    input : {"rgb", "green", "rgb-extended", "green-extended"}, optional
        Network input: the RGB image standardised in the FOV, or its green channel
        after CLAHE, standardised and repeated three times. ``-extended``: also
        the outside of the FOV filled from the pixels inside it, so there is no
        dark step at the FOV's edge (on DRIVE, a second cycle from an "rgb"
        model with it scored lower than one without: AUC 0.977 against 0.979).
    val_cases : int, optional
        Training cases held out (chosen with ``seed``; at most half of them, with
        a warning when fewer than asked) to pick the best epoch and
        the threshold; 0 keeps the last epoch (or the mean of the last
        ``average_epochs``) and picks the threshold on training cases (see
        ``threshold_train_cases``).
    average_epochs : int, optional
        The model keeps the mean of the weights at the end of the last this many
        epochs (stochastic weight averaging over the annealed end of the one-cycle
        schedule), batch norm statistics measured again on training crops, instead
        of the single best epoch. 0 or 1: the best epoch (by held-out F1, then
        AUC). Not done after a stop request. The full preset averages its last 11
        of 50: on DRIVE's test cases that gained about 0.0015 F1 and 0.0008 AUC
        over its best epoch (38), though the 4 held-out cases scored it 0.005 F1
        lower (the best of 50 noisy held-out figures flatters that epoch).
    threshold_train_cases : int, optional
        Training cases whose maps join the held-out ones when the final threshold
        (best pooled F1) is chosen, because two held-out cases make a noisy
        choice. 0 uses the held-out cases only; skipped after a stop request.
        With ``val_cases=0`` at least 6 training cases pick it alone (with a
        warning: the network learned from them).
    pretrained : {"auto", True, False}, default="auto"
        ImageNet weights for the encoder, only from torchvision's file already in
        the local torch cache (``torch.hub.get_dir()/checkpoints``); nothing is
        downloaded. ``"auto"`` uses it when present, else random weights.
    init_from : str, optional
        A saved resnet34 model folder whose weights the whole network starts
        from (fine-tuning: on another dataset, or a second, shorter cycle on the
        same one); ``pretrained`` is then not used, and ``lr`` left to the
        preset is a tenth of the preset's (`FINE_TUNE_LR`). Its architecture
        settings (``last_cross``, ``self_attention``, ``blur``,
        ``decoder_norm``) must be these. A warning names held-out cases that
        model trained on: their scores flatter this fit.
    last_cross, self_attention, blur : bool
        `DynamicUnet` options. ``last_cross`` adds a full-resolution residual
        block on the image concatenated to the decoder output (about 60% more
        computation); off by default.
    decoder_norm : {"batch", "none"}, default="batch"
        Batch norm in the decoder's convolutions (folded away for prediction).
    tile_size, tile_overlap : int
        Prediction tiles: largest side (a DRIVE image fits in one) and the overlap
        blended between neighbours.
    match_scale : bool, default=True
        Resize an image whose FOV diameter differs from the training images' by
        more than 15% to their scale before predicting (the map is resized back),
        so a model trained on DRIVE sees HRF's vessels as wide as it learned them.
    flips : {1, 2, 4, 8}, default=1
        Prediction averaged over this many mirrored copies of the image: 1 (the
        image only), 2 (and its left-right mirror), 4 (and the up-down and the
        double mirror), 8 (and the same four of the transposed image: all its
        rotations and reflections by multiples of 90 degrees), each turned back
        before averaging. Costs that many times the time; on DRIVE with the
        quick preset 2 added about 0.001 to F1 and AUC, 4 about 0.002
        (`bench/quality.py --resnet-flips`). Training validates without.
    precision : {"int8", "float32"}, default="int8"
        Arithmetic of CPU prediction. ``"int8"`` runs the network quantized
        (weights per channel, activations per tensor, ranges calibrated on the
        held-out cases at the end of `fit`, or by `calibrate_int8`, and saved with
        the model): on DRIVE about 1.5x faster than float32 for 0.001 less F1.
        Where the x86 quantized engine is missing, or no ranges were calibrated,
        prediction falls back to float32 with a warning. On a GPU prediction is
        always float32.
    max_minutes : float, optional
        Time budget of the whole fit (0: none); None: the preset's (quick 13.5,
        full none). The one-cycle schedule follows
        whichever is further along, the batches or the clock, so on a busy machine
        the learning rate anneals sooner and the fit ends on time, validated.
    checkpoint_dir : str, optional
        Folder for a checkpoint after every epoch; with ``resume=True`` a fit with
        the same settings and cases continues from it.
    resume : bool, default=False
    num_threads : int, default=0
        torch CPU threads; 0 follows the cores other processes leave free
        (measured every 5 s while training and at each prediction), because
        torch's threads stall each other on a core shared with another process.
    loader_workers : int, default=-1
        Processes drawing and augmenting the training crops beside the training
        loop; -1 picks none on the CPU (they would take its cores from torch) and
        up to 8 beside a GPU, which would otherwise wait for them. The crops are
        the same whatever the number.
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"``: CUDA when present, else the CPU.
    seed : int, default=0
        Fixes the held-out cases, the initial weights and every crop.

    Attributes
    ----------
    kind : str
        ``"resnet34"``.
    threshold : float
        Best F1 threshold on the held-out cases.
    meta : dict
        Settings, training cases and fingerprint, held-out scores, the per-epoch
        history, whether ImageNet weights were used, epochs run, device.

    Notes
    -----
    On DRIVE (18 training cases, 2 held out; the 20 test cases scored inside the
    FOV) the quick preset from random weights reached F1 0.784 and AUC 0.964 in
    14 minutes on a 2-core CPU shared with other processes (817 batches of 8).
    That CPU predicts a DRIVE image in 1.3 s in float32 and 0.9 s in int8 (F1
    0.0005 lower) when idle, about twice that when another process holds a core.

    With ``match_scale`` an HRF photograph (FOV about 3300 pixels across) before
    a model trained on DRIVE (about 540, ``meta["training_fov_diameter"]``) is
    predicted at 0.16 of its size (1/37 of the pixels to compute), and the map
    is resized back to the photograph's size. Training itself runs at each
    case's own scale, so training on a mix of datasets mixes vessel widths.

    Known limits: batch norm statistics come from 64-pixel crops, which hold less
    of the dark surround than whole images do.
    """

    kind = "resnet34"
    SETTING_CHOICES = {
        "preset": ["quick", "full"],
        "input": ["rgb", "green", "rgb-extended", "green-extended"],
        "decoder_norm": ["batch", "none"],
        "device": ["auto", "cpu", "cuda"],
        "precision": ["int8", "float32"],
        "flips": [1, 2, 4, 8],
    }

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"ResNetUNet has no setting(s) {unknown}; its settings are "
                f"{sorted(_DEFAULTS)}"
            )
        self.settings = _resolve({**_DEFAULTS, **settings})
        self.threshold = 0.5
        self.meta: dict[str, Any] = {"settings": dict(self.settings)}
        self.net = None
        self._fast_net = None
        self._threads = None
        self._int8_ranges = None

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """Every setting with its default; None means "from the preset"."""
        return dict(_DEFAULTS)

    # -----------------------------------------------------------------------
    # Training

    def fit(
        self,
        cases: Sequence[Case],
        selection=None,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ResNetUNet:
        """Train on ``cases`` (those with a vessel mask).

        Parameters
        ----------
        cases : sequence of Case
        selection : vessel_core.sampling.Selection, optional
            Chosen pixels per case; ``vessel_crop_share`` of the crops are centred
            on them. Default: the ``"near_vessels"`` selection with ``seed``.
        on_progress : callable, optional
            Gets a ``"batch"`` event after every batch (``loss``) and an
            ``"epoch"`` event after every epoch (``train_loss``, ``dice``, ``f1``,
            ``sensitivity``, ``specificity``, ``auc_roc``, ``threshold`` on the
            held-out cases), then ``"done"``.
        stop : threading.Event, optional
            When set, training ends within one batch; the best weights so far are
            kept and the model is usable.

        Returns
        -------
        ResNetUNet
            ``self``.
        """
        from vessel_core import _resnet_fit as rf
        from vessel_core import _resnet_net as rn

        s = self.settings
        started = time.monotonic()
        train, val = self._split(cases)
        device = self._device()
        threads = self._thread_policy(device)

        dataset = self._crop_dataset(train, selection)
        start = self._start_model(val)
        weight_file = None if start else rn.resolve_pretrained(s["pretrained"])
        if start is not None:
            source = f"{Path(s['init_from']).name}'s"
        else:
            source = "ImageNet encoder" if weight_file else "random"
        logger.info(
            "resnet34 U-Net: %s weights, %d training + %d held-out cases, %s",
            source,
            len(train),
            len(val),
            device,
        )
        net = rn.build_unet(_arch(s), weight_file, seed=s["seed"])
        if start is not None:
            net.load_state_dict(start.net.state_dict())
            del start
        net = net.to(device)
        emit(
            on_progress,
            Progress(
                "prepare",
                0,
                s["epochs"],
                {},
                f"preparing: {source} weights, {len(train)} training + {len(val)} "
                "held-out cases",
            ),
        )

        state = rf.FitState()
        identity = self._identity(train, val)
        folder = Path(s["checkpoint_dir"]) if s["checkpoint_dir"] else None
        budget = None
        if s["max_minutes"]:
            budget = (started, started + 60.0 * s["max_minutes"])
        holder: dict[str, Any] = {}

        def checkpoint(epoch: int) -> None:
            rf.save_checkpoint(folder, epoch, holder["learn"], state, identity)

        events = rf.TrainingEvents(
            dataset,
            state,
            val,
            rf.prepare_inputs(val, s["input"]),
            device,
            s["tile_size"],
            s["tile_overlap"],
            on_progress,
            stop,
            budget,
            checkpoint if folder is not None else None,
            threads,
            s["epochs"] - s["average_epochs"] + 1 if s["average_epochs"] > 1 else 0,
        )
        learn = rf.make_learner(
            net,
            dataset,
            s["batch_size"],
            device,
            self._loader_workers(device),
            s["dice_weight"],
            s["weight_decay"],
            [events],
        )
        holder["learn"] = learn

        start_epoch = 0
        if folder is not None and s["resume"]:
            data = rf.load_checkpoint(folder, identity)
            if data is not None:
                start_epoch = rf.restore(learn, state, data)
                logger.info("resuming from %s after epoch %d", folder, start_epoch)
                if s["average_epochs"] < 2:  # resumed without weight averaging
                    state.average_sum, state.averaged = None, []

        if start_epoch < s["epochs"]:
            learn.fit_one_cycle(
                s["epochs"],
                lr_max=s["lr"],
                wd=s["weight_decay"],
                start_epoch=start_epoch,
            )

        self._finish(
            net,
            state,
            val,
            device,
            stop,
            weight_file,
            train,
            started,
            dataset,
        )
        emit(
            on_progress,
            Progress(
                "done",
                state.epochs_run,
                s["epochs"],
                dict(state.best_scores),
                f"resnet34 trained {state.epochs_run} epoch(s)"
                + (f", stopped early ({state.stopped})" if state.stopped else "")
                + f"; kept {self.meta['weights']}, threshold {self.threshold:.3f}",
            ),
        )
        return self

    @classmethod
    def from_checkpoint(
        cls,
        folder: str | Path,
        cases: Sequence[Case],
        average: Sequence[str | Path] = (),
        **settings: Any,
    ) -> ResNetUNet:
        """The weights a checkpointed fit would keep so far, as a model, without
        training: its best epoch, or the mean of the epochs it has averaged
        (``average_epochs``).

        Reads ``folder``'s checkpoint and leaves it as it is, so a fit that is
        still running there goes on undisturbed.

        Parameters
        ----------
        folder : str or Path
            The ``checkpoint_dir`` of the fit.
        cases : sequence of Case
            The cases that fit was given; the held-out ones are predicted again
            for the threshold and the int8 ranges.
        average : sequence of paths, optional
            Checkpoint files of the same fit written after other epochs (copies
            of ``folder``'s kept along the way): the model is the mean of their
            epoch-end weights, whatever ``average_epochs`` says.
        **settings
            The fit's own settings (preset included); ``checkpoint_dir`` is
            ``folder``.

        Returns
        -------
        ResNetUNet
            Trained, with ``meta["snapshot_of"]`` naming ``folder``.

        Raises
        ------
        FileNotFoundError
            No checkpoint in ``folder``.
        ValueError
            The checkpoint was written by a fit with other settings or cases.
        """
        from vessel_core import _resnet_fit as rf
        from vessel_core import _resnet_net as rn

        model = cls(**{**settings, "checkpoint_dir": str(folder)})
        path = Path(folder) / rf.CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        s = model.settings
        started = time.monotonic()
        train, val = model._split(cases)
        identity = model._identity(train, val)

        def read_own(file: Path) -> dict:
            """A checkpoint file of this very fit, else ValueError naming it."""
            data = rf.read_checkpoint(file)
            mismatch = rf.identity_mismatch(data.get("identity"), identity)
            if mismatch:
                raise ValueError(f"{file} was written by {mismatch}")
            return data

        data = read_own(path)
        state = rf.FitState()
        rf.restore_state(state, data)
        if state.best_state is None:  # no held-out case: the last weights
            state.best_state = data["model"]
        del data
        if average or s["average_epochs"] < 2:
            state.average_sum, state.averaged = None, []
        for file in average:
            other = read_own(Path(file))
            rf.add_to_average(state, other["model"], int(other["epoch"]))
            del other
        device = model._device()
        policy = model._thread_policy(device)
        if policy is not None:
            policy.update(force=True)
        net = rn.build_unet(_arch(s), None, seed=s["seed"]).to(device)
        weight_file = rn.resolve_pretrained(s["pretrained"])
        model._finish(net, state, val, device, None, weight_file, train, started)
        model.meta["snapshot_of"] = str(folder)
        return model

    def check_start(self) -> dict[str, Any] | None:
        """Check the saved model ``init_from`` names without loading its weights:
        its ``model.json``, None without one. Quick: a page calls it before it
        starts a fit, so a wrong choice is told at once.

        Raises ValueError naming the folder when it is not a resnet34 model or
        was built with other architecture settings (and what to set).
        """
        folder = self.settings["init_from"]
        if folder is None:
            return None
        from vessel_core import store

        meta = store.read_meta(folder)  # ModelFolderError (a ValueError) names it
        if meta["kind"] != self.kind:
            raise ValueError(
                f"init from: {folder} holds a {meta['kind']!r} model, not a "
                f"{self.kind!r} one"
            )
        saved = meta.get("settings") or {}
        known = {k: v for k, v in saved.items() if k in _DEFAULTS}
        mine, theirs = _arch(self.settings), _arch({**_DEFAULTS, **known})
        differ = [k for k, v in mine.items() if v != theirs[k]]
        if differ:
            # the names as the Train page labels them and the flags spell them
            built = ", ".join(
                f"{k.replace('_', ' ')} {theirs[k]!r} (here {mine[k]!r})"
                for k in differ
            )
            fix = ", ".join(f"{k.replace('_', ' ')} to {theirs[k]!r}" for k in differ)
            raise ValueError(
                f"init from: {folder} was built with {built}; a fit can start only "
                f"from a network of the same shape: set {fix}, or choose no saved "
                "model"
            )
        theirs_input = known.get("input", self.settings["input"])
        if theirs_input != self.settings["input"]:
            warn(
                f"init from: {folder} learned from input {theirs_input!r}, this fit "
                f"uses input {self.settings['input']!r}: it starts from features "
                "made for another input",
                stacklevel=3,
            )
        return meta

    def _start_model(self, val: Sequence[Case]) -> ResNetUNet | None:
        """The saved model ``init_from`` names, checked (`check_start`) and
        loaded; None without one. Warns of held-out cases it trained on."""
        if self.check_start() is None:
            return None
        from vessel_core import store

        folder = self.settings["init_from"]
        start = store.load_model(folder)
        seen = set(_trained_images(start.meta))
        flattered = [
            c.id for c, f in zip(val, image_fingerprints(val), strict=True) if f in seen
        ]
        if flattered:
            warn(
                f"init from: {folder} was trained on held-out case(s) "
                f"{', '.join(flattered)}: their scores, the kept epoch and the "
                "threshold will flatter this fit",
                stacklevel=3,
            )
        return start

    def _start_record(self) -> dict[str, Any] | None:
        """What ``meta["started_from"]`` says of the ``init_from`` model."""
        folder = self.settings["init_from"]
        if folder is None:
            return None
        from vessel_core import store

        meta = store.read_meta(folder)
        return {
            "folder": folder,
            "name": meta.get("name"),
            "weights": meta.get("weights"),
            "train_fingerprint": meta.get("train_fingerprint"),
            "pretrained": bool(meta.get("pretrained")),
            "learned_images": _trained_images(meta),
        }

    def _split(self, cases: Sequence[Case]) -> tuple[list[Case], list[Case]]:
        """Training and held-out cases (``val_cases`` of them, chosen by seed)."""
        cases = fit_cases(cases)  # with a mask of both classes; warns of the rest
        for case in cases:
            if case.image.ndim != 3 or case.image.shape[2] != 3:
                raise ValueError(
                    f"case {case.id}: image must be (H, W, 3), got {case.image.shape}"
                )
            small = min(case.shape)
            if small < 32:
                raise ValueError(
                    f"case {case.id}: image is {case.shape}, at least 32 pixels a "
                    "side are needed"
                )
        # at most half the cases are held out: 2 of 3 would leave 1 to learn from
        n_val = min(self.settings["val_cases"], len(cases) // 2)
        if len(cases) > 1:
            n_val = max(n_val, min(1, self.settings["val_cases"]))
        rng = np.random.default_rng(self.settings["seed"])
        held = set(rng.permutation(len(cases))[:n_val].tolist())
        train = [c for i, c in enumerate(cases) if i not in held]
        val = [c for i, c in enumerate(cases) if i in held]
        if n_val < self.settings["val_cases"]:
            names = f" ({', '.join(c.id for c in val)})" if val else ""
            warn(
                f"val cases {self.settings['val_cases']}, but only {len(cases)} "
                f"case(s) with a vessel mask: holding out {n_val}{names}, training "
                f"on {len(train)}",
                stacklevel=3,
            )
        return train, val

    def _identity(self, train: Sequence[Case], val: Sequence[Case]) -> dict:
        """What a checkpoint must match to be resumed."""
        keep = {k: v for k, v in self.settings.items() if k not in _RUN_ONLY}
        return {
            "settings": _jsonable(keep),
            "train_fingerprint": fingerprint_cases(train),
            "val_fingerprint": fingerprint_cases(val),
        }

    def _crop_dataset(self, train: Sequence[Case], selection=None):
        """The random training crops of a fit (`_resnet_data.CropDataset`)."""
        from vessel_core._resnet_data import CropDataset

        s = self.settings
        return CropDataset(
            train,
            _crop_centres(train, selection, s["seed"]),
            s["crop_size"],
            s["crops_per_epoch"],
            s["vessel_crop_share"],
            s["rotation"],
            s["jitter"],
            s["input"],
            s["seed"],
        )

    def _finish(
        self, net, state, val, device, stop, weight_file, train, started, dataset=None
    ):
        """Load the kept weights (the best epoch's, or the mean of the last
        ``average_epochs`` epochs'), pick the threshold, fill ``meta``.

        ``dataset`` gives the crops that measure batch norm again for averaged
        weights; None: the default crops of ``train``.
        """
        from vessel_core import _resnet_fit as rf

        def held_out(net):
            """The held-out scores and maps of ``net`` as it is now."""
            inputs = rf.prepare_inputs(val, self.settings["input"])
            s = self.settings
            return rf.validate(
                net, inputs, val, device, s["tile_size"], s["tile_overlap"]
            )

        if state.best_state is None and state.epochs_run == 0 and val:
            # stopped inside the first epoch: score what there is
            scores, maps = held_out(net)
            state.best_scores = scores
            state.best_threshold = scores["threshold"]
            state.best_maps = maps
        if state.best_state is not None:
            net.load_state_dict(state.best_state)
        hurry = state.stopped == "stop requested"
        best_epoch_scores = dict(state.best_scores)
        averaged = len(state.averaged) > 1 and not hurry
        if averaged:
            net.load_state_dict(rf.averaged_weights(state))
            if dataset is None:
                dataset = self._crop_dataset(train)
            dataset.set_epoch(self.settings["epochs"])  # crops no epoch trained on
            rf.recompute_batch_norm(
                net, dataset, self.settings["batch_size"], AVERAGE_NORM_CROPS, device
            )
            if val:
                state.best_scores, state.best_maps = held_out(net)
                state.best_threshold = state.best_scores["threshold"]
            logger.info(
                "weights: mean of epochs %s (held-out F1 %.4f; best single epoch "
                "%d: %.4f)",
                _epoch_span(state.averaged),
                state.best_scores.get("f1", math.nan),
                state.best_epoch,
                best_epoch_scores.get("f1", math.nan),
            )
        # the weights as they will be saved, so a saved model predicts the same map
        net.load_state_dict(_as_saved(net.state_dict()), strict=True)
        net.eval()
        self.net = net
        self._fast_net = None
        self._int8_ranges = None
        if self.settings["precision"] == "int8":
            # after a stop request, one case: the caller is waiting
            stopped = state.stopped == "stop requested"
            self.calibrate_int8((val or train)[: 1 if stopped else 2])
        self.threshold = float(state.best_threshold) if val else 0.5
        if val:
            _warn_if_unlearned(state.best_scores)
        threshold_cases = [c.id for c in val]
        extra = self._threshold_cases(train, held_out=bool(val))
        if extra and val and not state.best_maps and state.best_state and not hurry:
            # a resumed fit whose best epoch came before the checkpoint: its
            # held-out maps were not kept, so they are predicted again
            state.best_maps = held_out(net)[1]
        if extra and val and state.best_maps and not hurry:
            self.threshold, threshold_cases = self._pooled_threshold(
                net, device, val, state.best_maps, extra
            )
        elif extra and not val and not hurry:
            warn(
                f"no held-out cases: the threshold is picked on {len(extra)} "
                "training case(s), which the network learned from",
                stacklevel=3,
            )
            self.threshold, threshold_cases = self._pooled_threshold(
                net, device, [], [], extra
            )
        self.meta = {
            "settings": dict(self.settings),
            "train_cases": [c.id for c in train] + [c.id for c in val],
            "train_fingerprint": fingerprint_cases(list(train) + list(val)),
            "train_images": image_fingerprints(list(train) + list(val)),
            "fit_cases": [c.id for c in train],
            "val_cases": [c.id for c in val],
            "scores": {"val": dict(state.best_scores)} if val else {},
            "val_threshold": float(state.best_threshold) if val else None,
            "threshold_cases": threshold_cases,
            "history": list(state.history),
            "best_epoch": state.best_epoch,
            "best_epoch_scores": best_epoch_scores,
            "averaged_epochs": list(state.averaged) if averaged else [],
            "weights": _kept_weights(state, averaged),
            "epochs_run": state.epochs_run,
            "batches_run": state.batches_run,
            "stopped_early": state.stopped,
            "pretrained": weight_file is not None,
            "pretrained_file": str(weight_file) if weight_file else None,
            "started_from": self._start_record(),
            "device": str(device),
            "fit_seconds": round(time.monotonic() - started, 1),
            "training_fov_diameter": _median_fov_diameter(list(train) + list(val)),
        }

    def _threshold_cases(
        self, train: Sequence[Case], held_out: bool = True
    ) -> list[Case]:
        """The training cases (chosen with the seed) that help pick the threshold.

        Without held-out cases (``held_out`` False) they pick it alone: at least
        `NO_HELD_OUT_THRESHOLD_CASES` of them, else 0.5 would be used blind.
        """
        n = self.settings["threshold_train_cases"]
        if not held_out:
            n = max(n, NO_HELD_OUT_THRESHOLD_CASES)
        n = min(n, len(train))
        order = np.random.default_rng([self.settings["seed"], 1]).permutation(
            len(train)
        )
        return [train[i] for i in sorted(order[:n])]

    def _pooled_threshold(self, net, device, val, val_maps, extra):
        """Best F1 threshold over the held-out maps and those of a few training cases.

        Two held-out DRIVE cases alone gave thresholds up to 0.15 away from the
        test set's best (0.004 F1 lost); pooling six training cases, which a
        14-minute fit has not overfitted, halved that gap.
        """
        from vessel_core import _resnet_fit as rf
        from vessel_core import metrics

        _, extra_maps = rf.validate(
            net,
            rf.prepare_inputs(extra, self.settings["input"]),
            extra,
            device,
            self.settings["tile_size"],
            self.settings["tile_overlap"],
        )
        cases = list(val) + list(extra)
        threshold = metrics.best_threshold(
            [c.vessel_mask for c in cases],
            list(val_maps) + list(extra_maps),
            [c.fov_mask for c in cases],
            quiet=True,
        )
        if not val:  # no held-out case has said whether it learned anything
            pooled = metrics.evaluate(extra, extra_maps, threshold, quiet=True).pooled
            _warn_if_unlearned({**pooled, "threshold": threshold}, "the training cases")
        alone = f" (held-out alone: {self.threshold:.3f})" if val else ""
        logger.info(
            "threshold %.3f on %d held-out + %d training cases%s",
            threshold,
            len(val),
            len(extra),
            alone,
        )
        return float(threshold), [c.id for c in cases]

    # -----------------------------------------------------------------------
    # Prediction

    def predict_proba(self, case_or_image: Case | NDArray) -> NDArray[np.float32]:
        """The vessel probability map of a case or an RGB image.

        Parameters
        ----------
        case_or_image : Case or (H, W, 3) uint8 ndarray
            An image without a case gets its FOV from
            `vessel_core.io.estimate_fov`.

        Returns
        -------
        (H, W) float32 ndarray
            Probabilities in [0, 1], exactly the input's size; 0 outside the FOV.

        Notes
        -----
        With ``match_scale``, an image whose FOV diameter differs from
        ``meta["training_fov_diameter"]`` by more than 15% is resized to that
        scale first and its map resized back
        (`vessel_core.preprocess.predict_at_scale`). The FOV's bounding box is
        predicted in tiles of at most ``tile_size`` pixels a side (one tile for
        a DRIVE image), overlapping by ``tile_overlap`` pixels blended with
        raised-cosine weights; tiles with no FOV pixel are skipped. Memory is
        bounded by one tile.
        """
        from vessel_core import preprocess as pp

        if self.net is None:
            raise ValueError(
                "this ResNetUNet is not trained: call fit or load it first"
            )
        image, fov = _image_and_fov(case_or_image)
        factor = 1.0
        if self.settings["match_scale"]:
            factor = pp.scale_factor(fov, self.meta.get("training_fov_diameter"))
        return pp.predict_at_scale(self._predict_native, image, fov, factor)

    def _predict_native(self, image: NDArray, fov: NDArray) -> NDArray[np.float32]:
        """The map of an image at its own size (tiled); 0 outside the FOV."""
        import torch

        from vessel_core import _resnet_net as rn
        from vessel_core._resnet_data import network_input

        net = self._inference_net()
        device = next(net.parameters()).device
        policy = self._thread_policy(device)
        if policy is not None:
            policy.update(force=True)
        x = network_input(image, fov, self.settings["input"])
        prob = np.zeros(fov.shape, np.float32)
        copies = _COPIES[: self.settings["flips"]]
        with torch.inference_mode():
            for copy in copies:
                one = rn.predict_tiled(
                    net,
                    _turned(x, copy),
                    _turned(fov, copy),
                    self.settings["tile_size"],
                    self.settings["tile_overlap"],
                    device=device,
                    channels_last=device.type == "cpu",
                )
                prob += _turned_back(one, copy)
        prob /= len(copies)
        prob[~fov] = 0.0
        return np.clip(prob, 0.0, 1.0).astype(np.float32, copy=False)

    def prepare(self) -> ResNetUNet:
        """Build the network prediction runs (int8, or float32 with batch norm
        folded) now, not on the first image, so that image's time is its own.

        A few seconds on a CPU; `predict_proba` does it itself when needed.
        """
        if self.net is not None:
            self._inference_net()
        return self

    def _inference_net(self):
        """The network prediction runs (cached): int8, or float32 with BN folded."""
        from vessel_core import _resnet_net as rn

        if self._fast_net is not None:
            return self._fast_net
        device = next(self.net.parameters()).device
        if self.settings["precision"] == "int8" and device.type == "cpu":
            if self._int8_ranges is None:
                warn(
                    "precision='int8' but this model holds no calibrated int8 ranges "
                    "(call calibrate_int8 with a few cases); predicting in float32",
                    stacklevel=3,
                )
            else:
                from vessel_core import _resnet_int8 as q

                try:
                    self._fast_net = q.quantized_from(
                        self._fresh_net(), self._int8_ranges
                    )
                    return self._fast_net
                except (RuntimeError, ValueError, NotImplementedError) as exc:
                    warn(
                        f"int8 prediction is not available here ({exc}); "
                        "predicting in float32",
                        stacklevel=3,
                    )
        net = self._fresh_net().to(device)
        self._fast_net = rn.fold_for_inference(net)
        return self._fast_net

    def with_prediction(self, **settings: Any) -> ResNetUNet:
        """This model predicting with other prediction settings: a copy that shares
        the trained weights (and the int8 ranges), so both can be used at once.

        Only `PREDICTION_SETTINGS` may change: how a map is computed, not what
        was learned.
        """
        import copy

        wrong = sorted(set(settings) - set(PREDICTION_SETTINGS))
        if wrong:
            raise ValueError(
                f"{wrong} cannot change after training; the prediction settings "
                f"are {list(PREDICTION_SETTINGS)}"
            )
        other = copy.copy(self)
        other.settings = _resolve({**self.settings, **settings})
        other.meta = {**self.meta, "settings": dict(other.settings)}
        if other.settings["precision"] != self.settings["precision"]:
            other._fast_net = None  # the network built for the other precision
        if other.settings["num_threads"] != self.settings["num_threads"]:
            other._threads = None
        return other

    def _fresh_net(self):
        """A new CPU copy of the trained network (eval mode)."""
        from vessel_core import _resnet_net as rn

        net = rn.build_unet(_arch(self.settings))
        net.load_state_dict(self.net.state_dict())
        return net.eval()

    def calibrate_int8(self, cases: Sequence[Case]) -> bool:
        """Calibrate int8 prediction on crops of up to two cases; True if it worked.

        `fit` does it on the held-out cases when ``precision="int8"``; the ranges
        are saved with the model.
        """
        if self.net is None:
            raise ValueError(
                "this ResNetUNet is not trained: call fit or load it first"
            )
        self._int8_ranges = self._calibrate(cases)
        self._fast_net = None
        return self._int8_ranges is not None

    def _calibrate(self, cases: Sequence[Case]):
        """int8 activation ranges from crops of up to two cases (CPU, a few seconds)."""
        import torch

        from vessel_core import _resnet_int8 as q
        from vessel_core._resnet_data import network_input

        inputs = [
            network_input(c.image, c.fov_mask, self.settings["input"])
            for c in cases[:2]
        ]
        policy = self._thread_policy(torch.device("cpu"))
        if policy is not None:
            policy.update(force=True)
        try:
            observed = q.prepare(self._fresh_net(), torch.zeros(1, 3, 64, 64))
            q.calibrate(observed, inputs)
            return q.observer_state(observed)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            # int8 is an option of prediction; training has succeeded regardless
            warn(
                f"int8 calibration failed ({exc}); int8 prediction is off", stacklevel=3
            )
            return None

    # -----------------------------------------------------------------------
    # Saving

    def save_files(self, folder: Path) -> None:
        """Write ``weights.pt``: the state_dict, floating tensors as float16.

        A tensor float16 cannot hold (beyond +-65504) stays float32. The int8
        activation ranges, when calibrated, go to ``int8_ranges.pt``.
        """
        import torch

        if self.net is None:
            raise ValueError("this ResNetUNet is not trained: there is nothing to save")
        torch.save(_as_saved(self.net.state_dict()), Path(folder) / WEIGHTS_FILE)
        if self._int8_ranges is not None:
            torch.save(self._int8_ranges, Path(folder) / INT8_FILE)

    @classmethod
    def load_files(cls, folder: Path, meta: dict[str, Any]) -> ResNetUNet:
        """Rebuild the network from ``meta["settings"]`` and load ``weights.pt``.

        Files are read with `vessel_core.store.load_weights` (no pickled code).
        """
        from vessel_core import _resnet_net as rn
        from vessel_core import store

        settings = {k: v for k, v in meta.get("settings", {}).items() if k in _DEFAULTS}
        if settings.get("device") == "cuda" and not _cuda_available():
            # trained on a GPU: it predicts here on the CPU
            logger.info("%s was trained with device='cuda'; no GPU here: CPU", folder)
            settings["device"] = "auto"
        model = cls(**settings)
        state = store.load_weights(folder, WEIGHTS_FILE)
        net = rn.build_unet(_arch(model.settings))
        reference = net.state_dict()
        state = {
            k: v.to(reference[k].dtype) if k in reference and hasattr(v, "to") else v
            for k, v in state.items()
        }
        net.load_state_dict(state)
        net.to(model._device()).eval()
        model.net = net
        if (Path(folder) / INT8_FILE).is_file():
            model._int8_ranges = store.load_weights(folder, INT8_FILE)
        model.threshold = float(meta.get("threshold", 0.5))
        model.meta = {
            k: v for k, v in meta.items() if k not in ("kind", "name", "threshold")
        }
        return model

    # -----------------------------------------------------------------------

    def _device(self):
        import torch

        wanted = self.settings["device"]
        if wanted == "cuda" and not _cuda_available():
            raise ValueError("device='cuda' but torch sees no CUDA device; use 'auto'")
        if wanted == "auto":
            wanted = "cuda" if _cuda_available() else "cpu"
        return torch.device(wanted)

    def _loader_workers(self, device) -> int:
        """Crop-drawing processes: the setting, or for -1 none on the CPU, else <= 8."""
        wanted = self.settings["loader_workers"]
        if wanted >= 0:
            return wanted
        return 0 if device.type == "cpu" else min(8, max((os.cpu_count() or 1) - 1, 0))

    def _thread_policy(self, device):
        """The CPU thread policy (None on a GPU): fixed, or following free cores."""
        from vessel_core._resnet_threads import ThreadPolicy

        if device.type != "cpu":
            return None
        if getattr(self, "_threads", None) is None:
            self._threads = ThreadPolicy(self.settings["num_threads"])
        return self._threads


#: The copies `flips` averages over, as (transposed first, axes then flipped: rows
#: 0, columns 1): the image, its mirrors, then (8) the same of its transpose, which
#: together are its 8 rotations and reflections by multiples of 90 degrees.
_COPIES: tuple[tuple[bool, tuple[int, ...]], ...] = tuple(
    (transposed, axes)
    for transposed in (False, True)
    for axes in ((), (1,), (0,), (0, 1))
)


#: Below this held-out AUC a fit is said not to have learned (chance is 0.5).
UNLEARNED_AUC = 0.7


def _warn_if_unlearned(
    scores: dict[str, float], who: str = "the held-out cases"
) -> None:
    """Warn when ``who`` say the kept weights tell nothing apart."""
    auc = scores.get("auc_roc", math.nan)
    if not auc >= UNLEARNED_AUC:  # NaN too: one class only in its maps
        warn(
            f"{who} score AUC {auc:.2f} (threshold "
            f"{scores.get('threshold', math.nan):.3f}): this model has barely "
            "learned to tell vessels from background; train longer (more epochs or "
            "crops) before using it",
            stacklevel=4,
        )


def _kept_weights(state, averaged: bool) -> str:
    """``meta["weights"]``: which weights the model kept, in words."""
    if averaged:
        return f"the mean of epochs {_epoch_span(state.averaged)}"
    if state.best_epoch < 1:
        return f"those after {state.batches_run} batch(es), inside epoch 1"
    return f"epoch {state.best_epoch}"


def _epoch_span(epochs: Sequence[int]) -> str:
    """``"40-50"`` for consecutive epochs, else them all: ``"3, 5, 6"``."""
    epochs = sorted(epochs)
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}"
    return ", ".join(map(str, epochs))


def _turned(array: NDArray, copy: tuple[bool, tuple[int, ...]]) -> NDArray:
    """One of `_COPIES` of ``array`` (rows and columns first), contiguous."""
    transposed, axes = copy
    if transposed:
        array = np.swapaxes(array, 0, 1)
    return np.ascontiguousarray(np.flip(array, axes) if axes else array)


def _turned_back(array: NDArray, copy: tuple[bool, tuple[int, ...]]) -> NDArray:
    """`_turned` undone: flipped back, then transposed back."""
    transposed, axes = copy
    if axes:
        array = np.flip(array, axes)
    return np.ascontiguousarray(np.swapaxes(array, 0, 1) if transposed else array)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# settings that change how a fit runs, not what it computes
_RUN_ONLY = ("checkpoint_dir", "resume", "num_threads", "max_minutes", "device")
_RUN_ONLY += ("loader_workers",)
_RUN_ONLY += ("tile_size", "tile_overlap", "match_scale", "flips")
# which weights are kept at the end: the training itself is the same
_RUN_ONLY += ("average_epochs",)


def _resolve(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with the preset filled in, typed and checked."""
    preset = settings["preset"]
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    out = dict(settings)
    for key, value in PRESETS[preset].items():
        if out[key] is None:
            out[key] = value
            if key == "lr" and out["init_from"] not in (None, ""):
                out[key] = value * FINE_TUNE_LR
    for key in _INTEGERS:
        if out[key] is not None:
            out[key] = _number(key, out[key], int)
    for key in _FLOATS:
        if out[key] is not None:
            out[key] = _number(key, out[key], float)
    for key in _BOOLS:
        out[key] = _boolean(key, out[key])
    out["pretrained"] = _pretrained(out["pretrained"])
    for key, allowed in ResNetUNet.SETTING_CHOICES.items():
        if out[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {out[key]!r}")

    positive = ("crop_size", "batch_size", "epochs", "crops_per_epoch")
    for key in positive:
        if out[key] < 1:
            raise ValueError(f"{key} must be at least 1, got {out[key]!r}")
    if out["tile_size"] < 64 or out["tile_size"] % 32:
        raise ValueError(
            "tile_size must be a multiple of 32 (the encoder's stride), at least "
            f"64, got {out['tile_size']!r}"
        )
    if out["tile_overlap"] > out["tile_size"] // 2:
        raise ValueError(
            f"tile_overlap ({out['tile_overlap']}) must be at most half of "
            f"tile_size ({out['tile_size']})"
        )
    if out["crop_size"] % 32:
        raise ValueError(
            f"crop_size must be a multiple of 32 (the encoder's stride), got "
            f"{out['crop_size']!r}"
        )
    if out["crops_per_epoch"] < out["batch_size"]:
        raise ValueError(
            f"crops_per_epoch ({out['crops_per_epoch']}) must be at least batch_size "
            f"({out['batch_size']}): an epoch drops its last incomplete batch"
        )
    if not 0.0 <= out["vessel_crop_share"] <= 1.0:
        raise ValueError(
            f"vessel_crop_share must be in [0, 1], got {out['vessel_crop_share']!r}"
        )
    for key in ("lr", "weight_decay", "rotation", "jitter", "dice_weight"):
        if out[key] < 0 or not math.isfinite(out[key]):
            raise ValueError(f"{key} must be a finite number >= 0, got {out[key]!r}")
    if out["lr"] == 0:
        warn("lr 0: the network's weights will not change; it learns nothing")
    for key in (
        "val_cases",
        "threshold_train_cases",
        "tile_overlap",
        "num_threads",
        "average_epochs",
    ):
        if out[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {out[key]!r}")
    if out["loader_workers"] < -1:
        raise ValueError(
            f"loader_workers must be -1 (automatic) or >= 0, got "
            f"{out['loader_workers']!r}"
        )
    if out["max_minutes"] is not None and (
        out["max_minutes"] < 0 or not math.isfinite(out["max_minutes"])
    ):
        raise ValueError(
            f"max_minutes must be >= 0 (0: no limit), got {out['max_minutes']!r}"
        )
    if out["init_from"] in ("", None):
        out["init_from"] = None
    else:
        out["init_from"] = os.fspath(out["init_from"])
    if out["checkpoint_dir"] in ("", None):
        out["checkpoint_dir"] = None
    else:
        out["checkpoint_dir"] = os.fspath(out["checkpoint_dir"])
    return out


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {value!r}") from None
    if kind is int and number != float(value):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{key} must be True or False, got {value!r}")


def _pretrained(value: Any) -> bool | str:
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        return _boolean("pretrained", value)
    except ValueError:
        raise ValueError(
            f"pretrained must be 'auto', True or False, got {value!r}"
        ) from None


def _arch(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        k: settings[k] for k in ("last_cross", "self_attention", "blur", "decoder_norm")
    }


def _as_saved(state: dict) -> dict:
    """The state_dict as ``weights.pt`` holds it: float16 where it fits, on the CPU.

    Loaded back (cast to float32) it gives what ``load_files`` gives.
    """

    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point():
            if value.numel() and float(value.abs().max()) > _FLOAT16_MAX:
                out[key] = value.float()
            else:
                out[key] = value.half()
        else:
            out[key] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _crop_centres(cases: Sequence[Case], selection, seed: int) -> dict[str, NDArray]:
    """Per case, the pixels a vessel-centred crop may be centred on."""
    from vessel_core import sampling

    if selection is None:
        selection = sampling.select(cases, "near_vessels", seed=seed)
    centres = {}
    for case in cases:
        chosen = selection.per_case.get(case.id)
        if chosen is not None and len(chosen.coords):
            centres[case.id] = np.asarray(chosen.coords, dtype=np.int32)
        else:
            centres[case.id] = np.argwhere(case.vessel_mask & case.fov_mask).astype(
                np.int32
            )
    return centres


def _image_and_fov(case_or_image: Case | NDArray) -> tuple[NDArray, NDArray]:
    """The RGB image and FOV mask of a case, or of an image (FOV estimated)."""
    if isinstance(case_or_image, Case):
        image, fov = case_or_image.image, case_or_image.fov_mask
    else:
        image = np.asarray(case_or_image)
        fov = None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got {image.dtype}")
    if fov is None:
        from vessel_core.io import estimate_fov

        fov = estimate_fov(image)
    fov = np.asarray(fov, dtype=bool)
    if fov.shape != image.shape[:2]:
        raise ValueError(
            f"FOV mask is {fov.shape}, the image {image.shape[:2]}; they must match"
        )
    return image, fov


def _trained_images(meta: dict[str, Any]) -> list[str]:
    """The image fingerprints a saved ResNet's weights learned from: its fit
    cases (the first ``len(fit_cases)`` of ``train_images``; not its held-out
    ones) and those of the model it started from (``started_from``)."""
    images = meta.get("train_images") or []
    own = images[: len(meta.get("fit_cases") or images)]
    earlier = (meta.get("started_from") or {}).get("learned_images") or []
    return list(dict.fromkeys([*own, *earlier]))


def _median_fov_diameter(cases: Sequence[Case]) -> float:
    """Median diameter (pixels) of the discs with the cases' FOV areas."""
    areas = [float(np.count_nonzero(c.fov_mask)) for c in cases]
    return float(np.median([2.0 * math.sqrt(a / math.pi) for a in areas]))
