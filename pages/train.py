"""Train: fit a model in the background and watch its progress live."""

from __future__ import annotations

import streamlit as st

from pages import _ui
from vessel_core import store
from vessel_core.jobs import FAILED, STOPPED, Job

_ui.through_app()

EPOCH_SHOWN = ("dice", "f1", "sensitivity", "specificity", "auc_roc")

#: Settings shown up front per kind (the others go under "More settings").
MAIN_SETTINGS = {
    "knn": [
        "features",
        "patch_size",
        "k_min",
        "k_max",
        "n_folds",
        "n_neighbors",
        "max_train_samples",
        "rebuild",
        "context",
    ],
    "resnet34": [
        "preset",
        "crop_size",
        "epochs",
        "lr",
        "batch_size",
        "input",
        "pretrained",
        "init_from",
        "max_minutes",
    ],
}
EXTRA_CHOICES = {
    "resnet34": {"pretrained": ["auto", True, False], "loader_workers": (-1, 32)}
}
#: Kinds whose classifier learns from the selection's labels (both classes needed).
NEEDS_BOTH_CLASSES = ("knn",)


def _hints(kind: str) -> dict:
    """For settings left to the model (None): their type and what None means."""
    if kind == "knn":
        return {"n_neighbors": (1, "chosen by cross-validation in [k min, k max]")}
    if kind != "resnet34":
        return {}
    from vessel_core.resnet import FINE_TUNE_LR, PRESETS

    quick, full = PRESETS["quick"], PRESETS["full"]
    return {
        name: (quick[name], f"from the preset (quick {quick[name]}, full {full[name]})")
        for name in quick
    } | {
        "init_from": ("", "no saved model: random or ImageNet weights"),
        "lr": (
            quick["lr"],
            f"from the preset (quick {quick['lr']}, full {full['lr']}; times "
            f"{FINE_TUNE_LR:g} with init from)",
        ),
    }


def _choices(kind: str, cls: type) -> dict:
    """Each setting's allowed values; a ResNet may start from a saved ResNet,
    offered by name (`_start_folder` turns the name into its folder)."""
    choices = {**getattr(cls, "SETTING_CHOICES", {}), **EXTRA_CHOICES.get(kind, {})}
    if kind == "resnet34":
        names = [e.name for e in store.list_models(_ui.models_dir()) if e.kind == kind]
        choices["init_from"] = names
    return choices


def _start_folder(settings: dict) -> dict:
    """The settings with a chosen ``init_from`` name as that model's folder."""
    if settings.get("init_from"):
        settings = {
            **settings,
            "init_from": str(_ui.models_dir() / settings["init_from"]),
        }
    return settings


def _training_pixels(kind: str, defaults: dict, n_cases: int, strategy: str) -> str:
    """What the model trains on, in words: the undersampling's part in it.

    It names the settings, with their defaults, not the values in the form:
    those reach the page only when the form is sent.
    """
    chosen = f"the undersampling **{strategy.replace('_', ' ')}** (page 2)"
    if kind == "classic":
        return (
            "fits on its own sample of pixels drawn uniformly in the FOV (*pixels "
            f"per case*, default {defaults['pixels_per_case']:,}); it does not use "
            "the undersampling"
        )
    if kind == "knn":
        return (
            f"draws *max train samples* (default {defaults['max_train_samples']:,}) "
            f"of the pixels kept by {chosen}, evenly from the {n_cases} cases, and, "
            f"when *context* is on, *context samples* (under More settings, default "
            f"{defaults['context_samples']:,}) more for the second stage"
        )
    from vessel_core.resnet import PRESETS

    held = ", ".join(f"{name} {p['val_cases']}" for name, p in PRESETS.items())
    return (
        f"centres part of its crops on the pixels kept by {chosen}, and holds "
        f"*val cases* of them out (from the preset: {held}; at most half the "
        "cases) to choose its epoch and threshold"
    )


def _model_notes(kind: str) -> list[str]:
    if kind != "resnet34":
        return []
    from vessel_core.resnet import imagenet_weight_file

    path = imagenet_weight_file()
    if path.is_file():
        return [f"ImageNet weights for the encoder found at `{path}`: used by 'auto'."]
    return [
        f"No local ImageNet weight file (`{path}`): the encoder starts from random "
        "weights (nothing is downloaded). Expect lower scores from a quick run."
    ]


st.title("3. Train")

train = _ui.require_train_cases()

kinds = list(_ui.KIND_LABELS)
kind = st.radio(
    "Model",
    kinds,
    format_func=_ui.KIND_LABELS.get,
    horizontal=True,
    key=_ui.kept("train_kind"),
    persist_state=_ui.KEEP,
)
try:
    cls = store.model_class(kind)
except (ImportError, ValueError) as exc:
    _ui.show_error(exc, f"Loading the {_ui.KIND_LABELS[kind]} code")
    _ui.stop_page()

doc = (cls.__doc__ or "").strip().split("\n\n")[0]
if doc:
    st.caption(" ".join(doc.split()))
for line in _model_notes(kind):
    st.info(line)

with st.form(f"train_form_{kind}", border=True, enter_to_submit=False):
    settings = _ui.settings_widgets(
        cls.default_settings(),
        _choices(kind, cls),
        key_prefix=f"train_{kind}",
        main=MAIN_SETTINGS.get(kind),
        hints=_hints(kind),
        help_texts=store.setting_help(cls),
    )
    dataset = st.session_state.get(_ui.DATASET, "data").replace(" ", "-")
    name = st.text_input(
        "Save as",
        f"{kind}-{dataset}",
        key=_ui.kept(f"train_name_{kind}"),
        persist_state=_ui.KEEP,
    )
    strategy = _ui.sampling_choice()["strategy"]
    st.caption(
        f"Trains on {len(train)} cases ({', '.join(c.id for c in train[:8])}"
        f"{'...' if len(train) > 8 else ''}): it "
        f"{_training_pixels(kind, cls.default_settings(), len(train), strategy)}."
    )
    start = st.form_submit_button("Start training", type="primary", key="train_start")

if start:
    try:
        selection = _ui.current_selection()
        missing = selection.missing_classes() if kind in NEEDS_BOTH_CLASSES else []
        if missing:
            raise ValueError(
                f"the undersampling keeps no {' and no '.join(missing)} pixel, and "
                f"the {_ui.KIND_LABELS[kind]} needs both classes; change it on "
                "page 2 (Undersampling)"
            )
        settings = _start_folder(settings)
        if settings.get("init_from"):  # a wrong saved model is told now, not later
            cls(**settings).check_start()
        job = _ui.job_manager().submit(
            _ui.session_id(),
            kind,
            settings,
            train,
            selection=selection,
            name=name,
        )
    except (TypeError, ValueError) as exc:
        _ui.show_error(exc, "Starting the training")
    else:
        st.toast(f"Started {job.name}")


def _cv_chart(job: Job) -> None:
    """CV score of each (k, fold) as it finishes, and the mean per k."""
    events = job.events("cv")
    if not events:
        return
    by_k: dict[float, list[float]] = {}
    for e in events:
        by_k.setdefault(e.metrics["k"], []).append(e.metrics["score"])
    fig = _ui.line_figure(
        "Cross-validation score per k", "k (neighbours)", "AUC ROC of held-out votes"
    )
    fig.add_scatter(
        x=[e.metrics["k"] for e in events],
        y=[e.metrics["score"] for e in events],
        mode="markers",
        name="one fold",
        marker=dict(size=9, opacity=0.5, color="#7f8c8d"),
    )
    ks = sorted(by_k)
    if len(ks) <= 16:  # every k labelled while they fit; else plotly's own ticks
        fig.update_xaxes(tickmode="array", tickvals=ks)
    fig.add_scatter(
        x=ks,
        y=[sum(by_k[k]) / len(by_k[k]) for k in ks],
        mode="lines+markers",
        name="mean over folds",
        line=dict(width=3, color="#c0392b"),
    )
    meta = job.model.meta if job.model is not None else {}
    chosen, best = meta.get("chosen_k"), meta.get("cv_best_k")
    if best is not None and best != chosen:
        fig.add_vline(
            x=best,
            line_dash="dash",
            line_color="grey",
            annotation_text=f"best mean: k = {best}",
            annotation_position="top left",  # the other label is at the bottom
        )
    if chosen is not None:
        fig.add_vline(
            x=chosen,
            line_dash="dot",
            annotation_text=f"chosen k = {chosen}",
            annotation_position="bottom right",
        )
    _ui.plot(fig, key=f"cv_{job.id}")
    if chosen is not None and best is not None:
        folds, asked = meta.get("cv_folds", 0), meta["settings"]["n_folds"]
        fewer = (
            f" Only {folds} folds: one per training case, fewer than *n folds* "
            f"({asked})."
            if 0 < folds < asked
            else ""
        )
        st.caption(
            f"The best mean is at k = {best}; k = {chosen} is the smallest k within "
            f"one standard error ({meta.get('cv_standard_error', 0):.4f}) of it: past "
            f"that, a larger k gains less than the folds disagree.{fewer}"
        )


def _batch_chart(job: Job) -> None:
    events = [e for e in job.events("batch") if "loss" in e.metrics]
    if not events:
        return
    fig = _ui.line_figure("Training loss per batch", "batch", "loss")
    fig.add_scatter(
        x=list(range(1, len(events) + 1)),
        y=[e.metrics["loss"] for e in events],
        mode="lines",
        name="loss",
    )
    _ui.plot(fig, key=f"loss_{job.id}")


def _epoch_chart(job: Job) -> None:
    events = job.events("epoch")
    if not events:
        return
    names = [k for k in EPOCH_SHOWN if k in events[-1].metrics]
    if not names:  # nothing held out (val cases 0): no figure to draw
        return
    fig = _ui.line_figure("Validation per epoch", "epoch", "score")
    if "dice" in names and "f1" in names:
        names.remove("f1")  # the same figure under two names
    for metric in names:
        points = [(e.done, e.metrics[metric]) for e in events if metric in e.metrics]
        fig.add_scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="lines+markers",
            name=metric,
        )
    _ui.plot(fig, key=f"epoch_{job.id}")


def _job_box(job: Job) -> None:
    manager = _ui.job_manager()
    with st.container(border=True):
        head, button = st.columns([4, 1])
        with head:
            st.markdown(
                f"**{job.saved_name or job.name}** "
                f"({_ui.KIND_LABELS.get(job.kind, job.kind)}): "
                f"{job.status}, {job.seconds:.0f} s"
            )
        if job.active:
            with button:
                st.button(
                    "Stop",
                    help="A model that can keeps its best state so far (the "
                    "ResNet its best epoch; the KNN the best k of the folds done, "
                    "or its first stage alone during the context stage); "
                    "otherwise nothing is saved.",
                    key=f"stop_{job.id}",
                    on_click=manager.stop,
                    args=(job.session_id, job.id),
                    disabled=job.stop_flag.is_set(),
                )
            position = manager.queue_position(job)
            if position:
                st.info(f"Waiting: place {position} in the queue.")
            elif job.stop_flag.is_set():
                st.info(
                    "Stopping: the fit ends at its next check (a batch, a fold or "
                    "an image; up to a minute), then keeps what it has."
                )
            else:
                last = job.last_event
                st.progress(
                    last.fraction if last else 0.0,
                    text=_ui.status_line(last),
                )
        elif job.status == FAILED:
            st.error(_ui.as_text(f"Training failed: {job.error}"))
        elif job.finished_ok:
            where = f"saved as **{job.saved_name}**" if job.saved_name else "not saved"
            stopped = " (stopped early)" if job.status == STOPPED else ""
            st.success(
                f"Finished{stopped}, {where}; threshold "
                f"{job.model.threshold:.3f}, {job.seconds:.0f} s."
            )
            meta = getattr(job.model, "meta", {})
            start = meta.get("started_from")
            if meta.get("epochs_run") == 0 and "best_epoch" in meta and start:
                st.info(
                    f"It stopped before its first epoch ended: the weights are "
                    f"{_ui.plain(start.get('name') or 'the saved model')}'s after "
                    f"{meta.get('batches_run', 0)} more batch(es)."
                )
            elif meta.get("epochs_run") == 0 and "best_epoch" in meta:
                st.warning(
                    "It stopped before its first epoch ended: these weights have "
                    "barely learned, and its maps say little (see Compare). Train "
                    "longer for a useful model."
                )
        else:
            st.warning(job.notice or job.error or "Stopped.")
        if job.notice and job.finished_ok:
            st.info(job.notice)
        for text in job.warnings:
            st.warning(_ui.as_text(text))
        _cv_chart(job)
        _batch_chart(job)
        _epoch_chart(job)


def _draw_jobs(jobs: list[Job]) -> None:
    for job in reversed(jobs):
        _job_box(job)


@st.fragment(run_every=2)
def _live_jobs() -> None:
    """Redraws this session's jobs every 2 s while one of them is active."""
    jobs = _ui.my_jobs()
    _draw_jobs(jobs)
    if not any(j.active for j in jobs):
        st.rerun()  # all finished: redraw the whole page and the sidebar's models


jobs = _ui.my_jobs()
if jobs:
    st.subheader("Training runs")
    if any(j.active for j in jobs):
        _live_jobs()
    else:
        _draw_jobs(jobs)
        st.page_link(
            "pages/compare.py",
            label="Next: compare the models",
            icon=":material/arrow_forward:",
        )
