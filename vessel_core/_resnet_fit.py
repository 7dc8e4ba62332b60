# ruff: noqa: E402  (fastai is imported after its warnings are silenced)
"""The fastai side of `ResNetUNet.fit`: learner, progress, validation, checkpoints."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vessel_core._resnet_net import silence_libraries

silence_libraries()  # before fastai is imported: its imports warn
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import CancelFitException, CancelValidException, Learner
from fastai.optimizer import OptimWrapper

from vessel_core import metrics
from vessel_core._resnet_data import CropDataset, VesselLoss, network_input
from vessel_core._resnet_net import predict_tiled
from vessel_core._resnet_threads import ThreadPolicy
from vessel_core.cases import Case
from vessel_core.progress import Progress, emit

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"

#: Figures each epoch's validation reports (F1 is the Dice coefficient).
EPOCH_KEYS = ("dice", "f1", "sensitivity", "specificity", "auc_roc", "threshold")


@dataclass
class FitState:
    """What a fit has reached: the best weights so far and every epoch's figures."""

    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = -1
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_threshold: float = 0.5
    best_scores: dict[str, float] = field(default_factory=dict)
    best_maps: list[np.ndarray] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    batches_run: int = 0
    stopped: str = ""
    #: The sum of the epoch-end weights of the epochs in ``averaged`` (weight
    #: averaging, `add_to_average`), None before the first of them.
    average_sum: dict[str, torch.Tensor] | None = None
    averaged: list[int] = field(default_factory=list)


def add_to_average(state: FitState, weights: dict[str, torch.Tensor], epoch: int):
    """Add one epoch's end weights (a CPU state dict) to ``state``'s running sum.

    Integer entries (batch norm's batch counters) are not averaged: the latest
    is kept.
    """
    if epoch in state.averaged:
        return
    if state.average_sum is None:
        state.average_sum = {
            k: v.detach().to("cpu", copy=True) for k, v in weights.items()
        }
    else:
        for key, value in weights.items():
            total = state.average_sum[key]
            if total.is_floating_point():
                total += value.to(total.dtype)
            else:
                total.copy_(value)
    state.averaged.append(int(epoch))


def averaged_weights(state: FitState) -> dict[str, torch.Tensor]:
    """The mean of the weights added by `add_to_average`."""
    n = len(state.averaged)
    return {
        k: v / n if v.is_floating_point() else v.clone()
        for k, v in state.average_sum.items()
    }


def recompute_batch_norm(
    net: torch.nn.Module,
    dataset: CropDataset,
    batch_size: int,
    crops: int,
    device: torch.device,
) -> None:
    """Batch norm statistics of ``net`` measured again on ``crops`` training crops.

    Averaged weights need it: the running statistics of each epoch belong to
    that epoch's weights, and their mean does not describe the mean network.
    The crops are ``dataset``'s first ``crops`` of its current epoch: the caller
    sets one the fit never trained on.
    """
    norms = [
        m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain mean over the batches
    was_training = net.training
    net.train()
    crops = min(int(crops), len(dataset))
    try:
        with torch.no_grad():
            for start in range(0, crops - batch_size + 1, batch_size):
                items = [dataset[i] for i in range(start, start + batch_size)]
                net(torch.stack([x for x, _, _ in items]).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)


def state_copy(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the network's state_dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def validate(
    net: torch.nn.Module,
    inputs: Sequence[np.ndarray],
    cases: Sequence[Case],
    device: torch.device,
    tile_size: int,
    overlap: int,
    stop: threading.Event | None = None,
) -> tuple[dict[str, float], list[np.ndarray]] | None:
    """Scores of ``net`` on held-out cases at their best F1 threshold, and the maps.

    None when ``stop`` was set before every case was predicted.
    """
    was_training = net.training
    net.eval()
    maps = []
    try:
        with torch.no_grad():
            for x, case in zip(inputs, cases, strict=True):
                if stop is not None and stop.is_set():
                    return None
                prob = predict_tiled(
                    net, x, case.fov_mask, tile_size, overlap, device=device
                )
                maps.append(np.where(case.fov_mask, prob, 0.0).astype(np.float32))
    finally:
        net.train(was_training)
    # an untrained network may call every pixel a vessel: NaN figures are fine
    threshold = metrics.best_threshold(
        [c.vessel_mask for c in cases], maps, [c.fov_mask for c in cases], quiet=True
    )
    pooled = metrics.evaluate(cases, maps, threshold, quiet=True).pooled
    scores = {
        "dice": float(pooled["f1"]),
        "f1": float(pooled["f1"]),
        "sensitivity": float(pooled["sensitivity"]),
        "specificity": float(pooled["specificity"]),
        "auc_roc": float(pooled["auc_roc"]),
        "threshold": float(threshold),
    }
    return scores, maps


class TrainingEvents(Callback):
    """Feeds `on_progress`, honours stop requests and the time budget, validates.

    After every batch: a ``"batch"`` event with the loss, then the stop flag is
    checked (`CancelFitException` ends the fit within one batch). After every
    epoch: the held-out cases are predicted whole and scored inside their FOV; the
    best weights (by F1, then AUC) are kept; an ``"epoch"`` event carries the
    figures; a checkpoint is written when a folder was given.

    With a time budget the one-cycle schedule runs on whichever is further along,
    the batches or the clock: on a busy machine the learning rate anneals early
    and the fit ends, validated, when the time is up.
    """

    order = 55  # before fastai's ParamScheduler (60) reads pct_train

    def __init__(
        self,
        dataset: CropDataset,
        state: FitState,
        val_cases: Sequence[Case],
        val_inputs: Sequence[np.ndarray],
        device: torch.device,
        tile_size: int,
        overlap: int,
        on_progress: Callable[[Progress], None] | None,
        stop: threading.Event | None,
        budget: tuple[float, float] | None,
        checkpoint: Callable[[int], None] | None,
        threads: ThreadPolicy | None = None,
        average_from: int = 0,
    ) -> None:
        self.dataset = dataset
        self.state = state
        self.val_cases = list(val_cases)
        self.val_inputs = list(val_inputs)
        self.device = device
        self.tile_size = tile_size
        self.overlap = overlap
        self.on_progress = on_progress
        self.stop = stop
        self.budget = budget
        self.checkpoint = checkpoint
        self.threads = threads
        self.average_from = int(average_from)
        self.thread_count = 0
        self.trained_this_epoch = False
        self.loss_sum = 0.0
        self.loss_count = 0

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            self.state.stopped = "stop requested"
            logger.info("stop requested: ending the fit, keeping the best weights")
            raise CancelFitException()

    def _time_fraction(self) -> float:
        """Share of the time budget used (0 without a budget)."""
        if self.budget is None:
            return 0.0
        start, end = self.budget
        return (time.monotonic() - start) / max(end - start, 1e-9)

    def before_epoch(self) -> None:
        self.dataset.set_epoch(self.epoch)
        self.trained_this_epoch = False
        self.loss_sum, self.loss_count = 0.0, 0

    def before_train(self) -> None:
        self.trained_this_epoch = True
        self._check_stop()

    def before_batch(self) -> None:
        if not self.training:
            return
        self._check_stop()
        if self.threads is not None:
            count = self.threads.update()
            if count != self.thread_count:
                logger.info(
                    "torch CPU threads: %d (other processes busy on %.1f of %d cores)",
                    count,
                    self.threads.others,
                    self.threads.cores,
                )
                self.thread_count = count
        used = self._time_fraction()
        if used >= 1.0:
            logger.info("time budget used up: validating and ending the fit")
            self.state.stopped = "time budget"
            if self.loss_count:
                self._end_of_epoch()
            raise CancelFitException()
        if used > self.learn.pct_train:
            self.learn.pct_train = used

    def after_batch(self) -> None:
        if not self.training:
            return
        loss = float(self.learn.loss.detach())
        self.loss_sum += loss
        self.loss_count += 1
        self.state.batches_run += 1
        done = self.epoch * self.n_iter + self.iter + 1
        total = self.n_epoch * self.n_iter
        last = self.iter + 1 == self.n_iter
        message = ""
        if last or (self.iter + 1) % 10 == 0:
            message = (
                f"epoch {self.epoch + 1}/{self.n_epoch} batch {self.iter + 1}/"
                f"{self.n_iter}: loss {loss:.4f}"
            )
        lr = float(self.opt.hypers[-1]["lr"])
        emit(
            self.on_progress,
            Progress(
                "batch",
                done,
                total,
                {
                    "loss": loss,
                    "epoch": self.epoch + 1,
                    "epochs": self.n_epoch,
                    "batch": self.iter + 1,
                    "batches": self.n_iter,
                    "lr": lr,
                },
                message,
            ),
        )
        self._check_stop()

    def before_validate(self) -> None:
        # the held-out cases are scored whole in after_epoch, not by fastai's loop
        raise CancelValidException()

    def after_epoch(self) -> None:
        if not self.trained_this_epoch or self.state.stopped:
            return  # an epoch skipped on resume, or one ended early
        self._end_of_epoch()
        if self.checkpoint is not None:
            self.checkpoint(self.epoch + 1)
        self._check_stop()

    def _end_of_epoch(self) -> None:
        """Validate, keep the best weights, send the ``"epoch"`` event."""
        self.state.epochs_run = self.epoch + 1
        figures: dict[str, float] = {
            "train_loss": self.loss_sum / max(self.loss_count, 1)
        }
        if self.val_cases:
            emit(
                self.on_progress,
                Progress(
                    "validate",
                    self.epoch + 1,
                    self.n_epoch,
                    {},
                    f"epoch {self.epoch + 1}/{self.n_epoch}: scoring the "
                    f"{len(self.val_cases)} held-out case(s)",
                ),
            )
            result = validate(
                self.model,
                self.val_inputs,
                self.val_cases,
                self.device,
                self.tile_size,
                self.overlap,
                self.stop,
            )
            if result is None:
                self._check_stop()
                return
            scores, maps = result
            figures.update(scores)
            key = tuple(
                -math.inf if math.isnan(v) else v
                for v in (scores["f1"], scores["auc_roc"])
            )
            if key > self.state.best_key:
                self.state.best_key = key
                self.state.best_state = state_copy(self.model)
                self.state.best_epoch = self.epoch + 1
                self.state.best_threshold = scores["threshold"]
                self.state.best_scores = dict(scores)
                self.state.best_maps = maps
        else:
            # nothing held out: the latest weights are the ones kept
            self.state.best_state = state_copy(self.model)
            self.state.best_epoch = self.epoch + 1
        if self.average_from and self.epoch + 1 >= self.average_from:
            add_to_average(self.state, state_copy(self.model), self.epoch + 1)
        figures["epoch"] = self.epoch + 1
        figures["batches"] = self.loss_count
        self.state.history.append(figures)

        shown = [
            f"{k} {figures[k]:.4f}" for k in ("train_loss", *EPOCH_KEYS) if k in figures
        ]
        partial_note = "" if self.loss_count == self.n_iter else " (cut short)"
        emit(
            self.on_progress,
            Progress(
                "epoch",
                self.epoch + 1,
                self.n_epoch,
                figures,
                f"epoch {self.epoch + 1}/{self.n_epoch}{partial_note}: "
                + ", ".join(shown),
            ),
        )


def make_learner(
    net: torch.nn.Module,
    dataset: CropDataset,
    batch_size: int,
    device: torch.device,
    workers: int,
    dice_weight: float,
    weight_decay: float,
    callbacks: Sequence[Callback],
) -> Learner:
    """A fastai `Learner` over random crops, with no printing and no progress bar.

    ``workers`` processes draw the crops (0: the training loop draws them); each
    crop depends only on (seed, epoch, index), so the batches are the same.
    """
    train_dl = DataLoader(
        dataset,
        bs=batch_size,
        shuffle=False,
        drop_last=True,
        device=device,
        num_workers=workers,
    )
    dls = DataLoaders(train_dl, train_dl, device=device)
    dls.n_inp = 1  # batches are (image, vessel mask, FOV): one input, two targets
    learn = Learner(
        dls,
        net,
        loss_func=VesselLoss(dice_weight),
        opt_func=partial(OptimWrapper, opt=_adamw),
        wd=weight_decay,
        cbs=list(callbacks),
        train_bn=False,  # nothing is frozen; OptimWrapper would ignore it anyway
    )
    learn.logger = _no_log
    for cb in list(learn.cbs):
        if type(cb).__name__ == "ProgressCallback":
            learn.remove_cb(cb)
    return learn


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """torch's fused AdamW: one kernel for all 41M weights.

    fastai's own Adam updates parameter by parameter; on a 2-core CPU its step
    took about 4 s against 0.25 s for this one, longer than a batch's forward and
    backward passes on 64-pixel crops.
    """
    return torch.optim.AdamW(params, fused=True, **kwargs)


def _no_log(*args: Any, **kwargs: Any) -> None:
    """fastai's Recorder prints a table per epoch; the events carry it instead."""


# ---------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    folder: Path, epoch: int, learn: Learner, state: FitState, identity: dict
) -> None:
    """Write the fit's state after ``epoch`` epochs to ``folder`` (atomic replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "epoch": int(epoch),
        "identity": identity,
        "model": state_copy(learn.model),
        "opt": _plain(learn.opt.state_dict()),
        "best_state": state.best_state,
        "best_epoch": state.best_epoch,
        "best_key": list(state.best_key),
        "best_threshold": state.best_threshold,
        "best_scores": state.best_scores,
        "history": state.history,
        "average_sum": state.average_sum,
        "averaged": state.averaged,
    }
    tmp = folder / f".{CHECKPOINT_FILE}.tmp"
    torch.save(data, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)


def load_checkpoint(folder: Path, identity: dict) -> dict | None:
    """The checkpoint in ``folder`` if it was written by the same fit, else None.

    "The same fit" means the same settings and training cases (``identity``);
    another one is ignored with a warning in the log.
    """
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    data = read_checkpoint(path)
    mismatch = identity_mismatch(data.get("identity"), identity)
    if mismatch:
        logger.warning("%s was written by %s; starting afresh", path, mismatch)
        return None
    return data


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file's contents (tensors on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def identity_mismatch(found: dict | None, wanted: dict) -> str:
    """How the fit that wrote a checkpoint (``found``) differs from ``wanted``:
    ``""`` when it is the same fit, else a phrase naming what differs."""
    if found == wanted:
        return ""
    if not isinstance(found, dict):
        return "an unknown fit"
    have, want = found.get("settings") or {}, wanted["settings"]
    differ = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    parts = [f"{k}={have.get(k)!r} (here {want.get(k)!r})" for k in differ[:6]]
    if len(differ) > 6:
        parts.append("...")
    if found.get("train_fingerprint") != wanted["train_fingerprint"]:
        parts.append("other training cases")
    if found.get("val_fingerprint") != wanted["val_fingerprint"]:
        parts.append("other held-out cases")
    return "a fit with other settings or cases: " + ", ".join(parts or ["?"])


def restore(learn: Learner, state: FitState, data: dict) -> int:
    """Load a checkpoint into the learner and ``state``; the epochs already run."""
    learn.model.load_state_dict(data["model"])
    learn.create_opt()
    learn.opt.load_state_dict(data["opt"])  # torch moves the state to the weights
    return restore_state(state, data)


def restore_state(state: FitState, data: dict) -> int:
    """Load a checkpoint's best epoch and history into ``state``; the epochs run."""
    state.best_state = data["best_state"]
    state.best_epoch = int(data["best_epoch"])
    state.best_key = tuple(float(v) for v in data["best_key"])
    state.best_threshold = float(data["best_threshold"])
    state.best_scores = dict(data["best_scores"])
    state.history = list(data["history"])
    state.average_sum = data.get("average_sum")  # absent before weight averaging
    state.averaged = [int(e) for e in data.get("averaged") or []]
    state.epochs_run = int(data["epoch"])
    return int(data["epoch"])


def _plain(value: Any) -> Any:
    """Numpy scalars as Python numbers, so ``weights_only`` loading accepts them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def prepare_inputs(cases: Sequence[Case], kind: str) -> list[np.ndarray]:
    """The network input of each case (computed once per fit)."""
    return [network_input(c.image, c.fov_mask, kind) for c in cases]
