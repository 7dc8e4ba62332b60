"""What every page shares: session state, the job manager, models, cached predictions.

Pages import this module and `vessel_core`; nothing here processes images or
computes scores, it only keeps state and draws.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from vessel_core import compare, resnet, sampling, store
from vessel_core.cases import (
    Case,
    fingerprint_cases,
    one_class_cases,
    split_cases,
    trainable,
    with_masks,
)
from vessel_core.jobs import Job, JobManager
from vessel_core.sessions import SessionMemory

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ADDRESSES = ("", "localhost", "127.0.0.1", "::1")
KIND_LABELS = {
    "knn": "KNN on neighbourhood patches",
    "resnet34": "ResNet34 U-Net",
    "classic": "Classic filters (baseline)",
}

#: How figures are named in tables and metric tiles.
METRIC_LABELS = {
    "f1": "F1 (Dice)",
    "balanced_accuracy": "balanced acc.",
    "iou": "IoU",
    "g_mean": "G-mean",
    "mcc": "MCC",
    "auc_roc": "AUC ROC",
    "auc_pr": "AUC PR",
    "seconds_per_image": "s / image",
}

# session_state keys that are not widgets (they survive page switches)
CASES = "cases"
DATASET = "dataset"
UNPAIRED = "unpaired"
LOAD_COUNT = "load_count"
SAMPLING = "sampling_choice"
COMPARE_RESULT = "compare_result"
#: The models the Compare page last offered (one that appears later joins the choice).
COMPARE_SEEN = "cmp_known_models"
SESSION_ID = "session_id"
#: Settings widgets keep their value across page switches.
KEEP = "session"
#: The page address's query parameter holding the session id (so a reload keeps it).
SESSION_PARAM = "session"
#: What a reload gets back: the loaded data, the undersampling, the last comparison
#: (and the models it offered) and the values of the settings widgets (`kept`).
KEPT = (CASES, DATASET, UNPAIRED, LOAD_COUNT, SAMPLING, COMPARE_RESULT, COMPARE_SEEN)
#: What this browser session last wrote to the session memory or read from it.
SYNCED = "synced_with_memory"

# keys of the settings widgets drawn so far in this server (the same for every
# session: the pages name them); see `kept`
_kept_widgets: set[str] = set()


def kept(key: str) -> str:
    """``key``, noted as a settings widget's: a reload gets its value back.

    Pages pass it for every widget drawn with ``persist_state=KEEP`` (choices,
    sliders, numbers, text), never for buttons, uploads or editors, whose values
    Streamlit does not let a script set.
    """
    _kept_widgets.add(key)
    return key


def still_offered(key: str, options: Sequence[Any], fallback: Sequence[Any]) -> None:
    """Before a kept multiselect is drawn: keep the part of its choice still among
    ``options``, or ``fallback`` when none of it is (another dataset was loaded).

    Streamlit would drop the missing values itself and leave the box empty. An
    empty choice the user made stays empty.
    """
    if key not in st.session_state:
        return
    chosen = list(st.session_state[key])
    still = [v for v in chosen if v in options]
    if chosen and not still:
        still = [v for v in fallback if v in options]
    if still != chosen:
        st.session_state[key] = still


# ---------------------------------------------------------------------------------
# Session state


class PageStopped(BaseException):  # noqa: N818  (a control signal, like StopIteration)
    """Ends a page's script early; app.py still draws the sidebar and remembers.

    `st.stop` would end the whole run, sidebar included.
    """


_guard = threading.local()  # Streamlit runs each session's script in its own thread


def stop_page() -> NoReturn:
    """End this page here (after its message), keeping the sidebar.

    Outside `run_page` (a page run alone, as AppTest does after its first run)
    it is `st.stop`.
    """
    if getattr(_guard, "on", False):
        raise PageStopped
    st.stop()


def through_app() -> None:
    """Make sure this page runs inside app.py; every page calls it first.

    Streamlit takes a folder named ``pages/`` beside the main script for its older
    one-file-per-page mode until `st.navigation` has run once in the server
    process: the first visit after a start that lands on a page's own address
    (``/train``, a bookmark, a reload) would run that file alone, without the
    navigation, the sidebar or the session id. This turns that mode off and
    reruns, so app.py runs and shows the same page.
    """
    from streamlit import config
    from streamlit.runtime.pages_manager import PagesManager

    if config.get_option("global.appTest"):
        # AppTest turns that mode back on before every run; a rerun here would
        # drop the click the test just made. A test runs pages alone after its
        # first run (app.py's sidebar and memory run on that first run only).
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def run_page(page) -> None:
    """Run a page of `st.navigation`, then remember the session and draw the sidebar.

    The session id comes first, so a reload has its data back before the page
    reads it. A page's unexpected error becomes a message, not a traceback.
    """
    session_id()
    take_in_other_tabs()
    _guard.on = True
    try:
        page.run()
    except PageStopped:
        pass  # the page said why it ends early
    except Exception as exc:  # the last guard: a message for the user, no traceback
        logger.exception("page %s failed", page.title)
        st.error(
            as_text(
                "This page ran into a problem it did not expect: "
                f"{type(exc).__name__}: {exc}. What you loaded and trained is kept; "
                "try another choice."
            )
        )
    finally:
        _guard.on = False
        remember_session()
        # drawn after the page, so it shows what the page just loaded or trained
        sidebar()


@st.cache_resource
def _memory() -> SessionMemory:
    """What every session of this server holds, kept for a reload."""
    return SessionMemory()


def session_id() -> str:
    """This browser session's id (owner of its jobs), also in the page's address.

    A new session whose address names an id this server gave out (a reload, or
    the same address in another tab) takes it over, with its jobs, what it had
    loaded (`KEPT`) and its settings widgets' values (`kept`).
    """
    if SESSION_ID not in st.session_state:
        memory = _memory()
        asked = st.query_params.get(SESSION_PARAM)
        if memory.known(asked):
            back = memory.recall(asked)
            for key, value in back.items():
                st.session_state[key] = value
            st.session_state[SYNCED] = back
            st.session_state[SESSION_ID] = asked
            fits = len(job_manager().jobs(asked))
            if back.get(CASES) or fits:
                kept_what = []
                if back.get(CASES):
                    kept_what.append(plural(len(back[CASES]), "loaded case"))
                if fits:
                    kept_what.append(f"this session's {plural(fits, 'fit')}")
                st.toast(
                    f"Welcome back: kept {' and '.join(kept_what)}.",
                    icon=":material/restore:",
                )
        else:
            st.session_state[SESSION_ID] = memory.new_id()
    sid = st.session_state[SESSION_ID]
    if st.query_params.get_all(SESSION_PARAM) != [sid]:
        st.query_params[SESSION_PARAM] = sid  # one value, this session's
    return sid


def remember_session() -> None:
    """Keep what this session holds (`KEPT`, `kept` widgets) on the server.

    Only what this browser tab changed since it last wrote or read is written,
    so another tab on the same session keeps its own changes.
    """
    sid = st.session_state.get(SESSION_ID)
    if sid is None:
        return
    keys = [*KEPT, *sorted(_kept_widgets)]
    held = {k: st.session_state[k] for k in keys if k in st.session_state}
    _memory().remember(sid, held, st.session_state.get(SYNCED))
    st.session_state[SYNCED] = held


def take_in_other_tabs() -> None:
    """Take in what another tab on this session changed since this tab last
    wrote or read, where this tab has not changed it itself (`SessionMemory.news`).

    Run before the page draws, so taken widget values show in their widgets.
    """
    sid, before = st.session_state.get(SESSION_ID), st.session_state.get(SYNCED)
    if sid is None or before is None:
        return
    take, drop = _memory().news(sid, st.session_state, before)
    if not take and not drop:
        return
    for key, value in take.items():
        st.session_state[key] = value
    for key in drop:
        st.session_state.pop(key, None)
    st.session_state[SYNCED] = {
        **{k: v for k, v in before.items() if k not in drop},
        **take,
    }


def cases() -> list[Case]:
    """The loaded cases ([] before anything is loaded)."""
    return st.session_state.get(CASES, [])


def set_cases(new_cases: Sequence[Case], dataset: str, unpaired=()) -> None:
    """Replace the loaded data; the page's split editor starts afresh."""
    st.session_state[CASES] = list(new_cases)
    st.session_state[DATASET] = dataset
    st.session_state[UNPAIRED] = list(unpaired)
    st.session_state[LOAD_COUNT] = st.session_state.get(LOAD_COUNT, 0) + 1
    # kept at once, not when the page has drawn its (long) table: another tab or a
    # reload within that time gets the new data too
    remember_session()


def set_splits(splits: dict[str, str]) -> None:
    """Move cases between train and test: ``{case id: split}``."""
    st.session_state[CASES] = [
        replace(c, split=splits.get(c.id, c.split)) for c in cases()
    ]


def require_cases(need_masks: bool = False) -> list[Case]:
    """The loaded cases, or a pointer to the Data page and a stop."""
    loaded = cases()
    if not loaded:
        st.info("No data loaded yet. Load images on the Data page first.")
        st.page_link("pages/data.py", label="Go to Data", icon=":material/upload:")
        stop_page()
    if need_masks and not with_masks(loaded):
        st.warning(
            "None of the loaded images has a manual vessel mask; this page needs "
            "some. Load a dataset with masks (or the built-in sample)."
        )
        st.page_link("pages/data.py", label="Go to Data", icon=":material/upload:")
        stop_page()
    return loaded


def train_cases() -> list[Case]:
    """Training cases whose vessel mask shows both classes (`cases.trainable`)."""
    return trainable(split_cases(cases(), "train"))


def require_train_cases() -> list[Case]:
    """The training cases a model can learn from, or a warning saying how and a
    stop; those whose mask holds one class only are named as left out."""
    require_cases(need_masks=True)
    train = train_cases()
    masked = split_cases(cases(), "train")
    left = one_class_cases(masked)
    if left:
        st.warning(
            as_text(
                f"Left out of training: {', '.join(left)}. Their vessel masks hold "
                "one class only inside the FOV (no vessel pixel, or nothing else): "
                "almost surely the wrong files."
            )
        )
    if not train:
        st.warning(
            "No training case has a vessel mask showing vessels and background. Put "
            "some cases with such masks on the train side (Data page, *split* "
            "column)."
        )
        stop_page()
    return train


def sampling_choice() -> dict[str, Any]:
    """The undersampling chosen on its page (the default strategy until then)."""
    if SAMPLING not in st.session_state:
        st.session_state[SAMPLING] = {
            "strategy": "near_vessels",
            "settings": dict(sampling.STRATEGIES["near_vessels"]),
            "seed": 0,
        }
    return st.session_state[SAMPLING]


def current_selection() -> sampling.Selection | None:
    """The chosen undersampling applied to the current training cases (cached)."""
    chosen = train_cases()
    if not chosen:
        return None
    choice = sampling_choice()
    return _select(
        fingerprint_cases(chosen),
        choice["strategy"],
        tuple(sorted(choice["settings"].items())),
        int(choice["seed"]),
        _cases=chosen,
    )


@st.cache_resource(max_entries=8, show_spinner="Choosing training pixels...")
def _select(fingerprint, strategy, settings, seed, _cases):
    return sampling.select(_cases, strategy, seed=seed, **dict(settings))


# ---------------------------------------------------------------------------------
# Data folder on the server


def data_root() -> Path | None:
    """The folder under which server folders may be opened, or None (not allowed).

    ``$VESSEL_DATA_DIR`` when set; otherwise ``../shared/data`` beside the project,
    only while the server listens on this machine alone.
    """
    env = os.environ.get("VESSEL_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    address = str(st.get_option("server.address") or "").strip()
    if address in LOCAL_ADDRESSES:
        return (ROOT.parent / "shared" / "data").resolve()
    return None


def allowed_folder(text: str, root: Path) -> Path:
    """``text`` (absolute or relative) as a path inside ``root``.

    A relative path is taken from ``root``, or, when nothing is there, from the
    current folder (the project folder under ``make run``). ValueError naming
    the path when it leaves ``root`` (``..``, links) or is missing.
    """
    if not text.strip():
        raise ValueError("give a folder or ZIP file under the data folder")
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        # also as the README writes it (../shared/data/DRIVE): from the project
        # folder; the first that exists, else the first inside root names the fault
        tried = [(root / path).resolve(), (Path.cwd() / path).resolve()]
        path = next(
            (p for p in tried if p.exists()),
            next((p for p in tried if p.is_relative_to(root)), tried[0]),
        )
    path = path.resolve()
    if not path.is_relative_to(root):
        raise ValueError(
            f"{text!r} is outside the data folder {root}; only folders under it "
            "can be opened (start the app with VESSEL_DATA_DIR set to another "
            "data folder to open folders there)"
        )
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return path


# ---------------------------------------------------------------------------------
# Jobs and models


def models_dir() -> Path:
    """Where models are saved and listed: ``$VESSEL_MODELS_DIR`` or ``models/``."""
    env = os.environ.get("VESSEL_MODELS_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else store.DEFAULT_MODELS_DIR


def job_manager() -> JobManager:
    """The server's job manager (one per models folder)."""
    return _job_manager(str(models_dir()))


@st.cache_resource
def _job_manager(folder: str) -> JobManager:
    return JobManager(models_dir=folder)


def my_jobs() -> list[Job]:
    return job_manager().jobs(session_id())


@dataclass(frozen=True)
class ModelRef:
    """A model the user can pick: saved under models/ or trained in this session."""

    key: str
    name: str
    kind: str
    origin: str  # "saved this session", "this session only" or "saved"
    path: Path | None = None
    job_id: str = ""
    #: prediction settings it uses instead of the model's own (`with_prediction`),
    #: and the key of the model itself
    prediction: tuple[tuple[str, Any], ...] = ()
    base_key: str = ""

    @property
    def label(self) -> str:
        """What pickers show and keep: the same for a saved model whether or not
        this session still lists the fit that made it (jobs are forgotten sooner
        than the session's choices)."""
        if self.path is None:
            return f"{self.name} ({self.kind}, {self.origin})"
        return f"{self.name} ({self.kind})"

    @property
    def file_stem(self) -> str:
        """The name fit for a downloaded file (`file_part`)."""
        return file_part(self.name) or "model"


def file_part(text: str) -> str:
    """``text`` fit for a file name: runs of anything but letters, digits, ``.``,
    ``_`` and ``-`` become ``-`` (``"eye 1, left"`` -> ``"eye-1-left"``)."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


def _folder_key(path: Path) -> str:
    meta = path / store.META_FILE
    stamp = meta.stat().st_mtime_ns if meta.exists() else 0
    return f"{path.resolve()}@{stamp}"


#: The ResNet's most accurate CPU prediction, offered beside each ResNet model.
BEST_PREDICTION = (resnet.BEST_PREDICTION, "float32, 4 mirrored copies")
VARIANT_HELP = (
    "Each ResNet model is also offered with ', float32, 4 mirrored copies': the "
    "same network, predicting without int8 rounding and averaging the maps of the "
    "image and its 3 mirror images. About 5 times slower, and a little more "
    "accurate (about +0.003 F1 and AUC on DRIVE)."
)


def model_refs(variants: bool = False) -> list[ModelRef]:
    """This session's models first, then every saved model, each once.

    With ``variants``, each ResNet model also a second time at the end, predicting
    with `BEST_PREDICTION` (about 5x slower, a little more accurate), unless that
    is already its own.
    """
    refs: list[ModelRef] = []
    own: dict[str, dict] = {}  # each model's own settings, where known
    mine: set[Path] = set()
    for job in my_jobs():
        if not job.finished_ok:
            continue
        saved = job.saved_path if job.saved_path and job.saved_path.is_dir() else None
        if saved is not None:
            mine.add(saved.resolve())
            key = _folder_key(saved)
            name = job.saved_name
        else:  # never saved, or its folder deleted since: the model in memory
            key, name = f"job:{job.id}", job.name
        origin = "saved this session" if saved else "this session only"
        refs.append(ModelRef(key, name, job.kind, origin, saved, job.id))
        own[key] = getattr(job.model, "settings", {})
    for entry in store.list_models(models_dir()):
        if entry.path.resolve() in mine:
            continue
        key = _folder_key(entry.path)
        refs.append(ModelRef(key, entry.name, entry.kind, "saved", entry.path))
        own[key] = entry.meta.get("settings", {})
    if not variants:
        return refs
    settings, words = BEST_PREDICTION
    return refs + [
        replace(
            ref,
            key=f"{ref.key}|best",
            name=f"{ref.name}, {words}",
            prediction=tuple(sorted(settings.items())),
            base_key=ref.key,
        )
        for ref in refs
        if ref.kind == resnet.ResNetUNet.kind
        and any(own[ref.key].get(k) != v for k, v in settings.items())
    ]


def default_models(refs: Sequence[ModelRef], most: int = 4) -> list[str]:
    """The labels a comparison starts with, ``most`` in all, no variant, in the
    order listed: one model of each kind, the models the project ships, then
    the others; this session's newest fits first at each step.

    So neither a kind nor the shipped reference drops out behind a session's
    fits, and the model just trained is in.
    """
    plain = [r for r in refs if not r.prediction]
    preferred = _newest_first(plain)
    kinds: dict[str, ModelRef] = {}
    for ref in preferred:
        kinds.setdefault(ref.kind, ref)
    shipped = [r for r in plain if is_shipped(r)]
    first = list(dict.fromkeys([*kinds.values(), *shipped]))[:most]
    chosen = first + [r for r in preferred if r not in first][: most - len(first)]
    return [r.label for r in plain if r in chosen]


def first_model(refs: Sequence[ModelRef]) -> str:
    """The label a one-model picker starts with: this session's newest model,
    else a shipped one, else the first listed."""
    plain = [r for r in refs if not r.prediction] or list(refs)
    newest_own = [r for r in plain if r.origin != "saved"][-1:]
    shipped = [r for r in plain if is_shipped(r)]
    return (newest_own or shipped or plain)[0].label


def _newest_first(refs: Sequence[ModelRef]) -> list[ModelRef]:
    """This session's models, newest first (`model_refs` lists them oldest
    first), then the saved ones as listed."""
    saved = [r for r in refs if r.origin == "saved"]
    return [r for r in refs if r.origin != "saved"][::-1] + saved


def is_shipped(ref: ModelRef) -> bool:
    """Whether ``ref`` is one of the models the project ships (`store.SHIPPED`)."""
    return (
        ref.path is not None
        and ref.path.name in store.SHIPPED
        and ref.path.resolve().parent == store.DEFAULT_MODELS_DIR.resolve()
    )


def load(ref: ModelRef):
    """The model behind ``ref`` (a session's model in memory, else loaded once)."""
    loader = _loader(ref)
    if ref.path is not None and ref.key not in _models():
        with st.spinner("Loading the model..."):
            return loader()
    return loader()


def _loader(ref: ModelRef) -> Callable[[], Any]:
    """What loads ``ref``'s model, in any thread (the server's model cache)."""
    if ref.prediction:  # the model itself, predicting otherwise
        plain = _loader(replace(ref, key=ref.base_key, prediction=(), base_key=""))
        cache, key, settings = _models(), ref.key, dict(ref.prediction)
        return lambda: cache.get(
            key, lambda: store.ready(plain().with_prediction(**settings))
        )
    if ref.job_id:
        job = job_manager().get(session_id(), ref.job_id)
        if job is not None and job.model is not None:
            model = job.model
            return lambda: store.ready(model)  # set up once, then at once
    if ref.path is None:
        name = ref.name

        def gone():
            raise ValueError(f"model {name!r} is gone (its session job was dropped)")

        return gone
    cache, key, path = _models(), ref.key, ref.path
    return lambda: cache.get(key, lambda: store.ready(store.load_model(path)))


@st.cache_resource
def _models() -> compare.SharedCache:
    """The server's loaded models by folder and date (16 at most), every thread's."""
    return compare.SharedCache(16)


@st.cache_resource
def _maps() -> compare.MapCache:
    """The server's probability maps, by model and case, for every page and thread."""
    return compare.MapCache()


def predict(ref: ModelRef, case: Case) -> tuple[np.ndarray, float]:
    """The probability map of ``case`` by ``ref``'s model and the seconds it took.

    Cached by model and case fingerprint: the seconds are those of the first run.
    """
    return _maps().get(
        (ref.key, case.fingerprint()), lambda: load(ref).predict_proba(case)
    )


@st.cache_resource
def _scorings() -> dict[str, compare.Scoring]:
    """Each session's comparison being scored (or scored and not yet shown)."""
    return {}


def scoring() -> compare.Scoring | None:
    """This session's comparison in the background, if there is one."""
    return _scorings().get(session_id())


def start_scoring(
    refs: Sequence[ModelRef], cases: Sequence[Case], label: dict
) -> compare.Scoring:
    """Score ``refs``' models on ``cases`` in a thread that outlives this page.

    Maps come from and go to the server's cache (`predict`), so a scoring cut
    short goes on from where it was. A model that cannot be loaded is left out
    with its reason in the result's ``errors``.
    """
    loaders = {ref.name: _loader(ref) for ref in refs}  # loaded in the thread
    keys = {ref.name: ref.key for ref in refs}
    cache = _maps()

    def cached(name: str, model, case: Case):
        key = (keys[name], case.fingerprint())
        return cache.get(key, lambda: model.predict_proba(case))

    task = compare.Scoring(loaders, cases, cached, label)
    _scorings()[session_id()] = task
    return task


def collect_scoring(task: compare.Scoring) -> None:
    """Let go of a finished scoring (another tab may have done so already)."""
    board = _scorings()
    if board.get(session_id()) is task:
        del board[session_id()]


# ---------------------------------------------------------------------------------
# Drawing


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for display: NaN and None as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def show_error(exc: BaseException | str, what: str) -> None:
    """An error box (no traceback) for a failure the user can act on."""
    logger.warning("%s failed: %s", what, exc)
    st.error(as_text(f"{what} failed: {exc}"))


def as_text(text: Any) -> str:
    """A plain-text message as Markdown that shows it as written.

    Everything is escaped (`plain`: a file named ``*star*.png`` stays so); lines
    starting with ``- `` become a list, and every other line its own paragraph,
    so a line after a list does not run on into its last item.
    """
    out: list[str] = []
    for line in str(text).split("\n"):
        item = re.match(r"\s*- (.*)", line)
        if item:
            out.append(f"- {plain(item.group(1))}")
            continue
        if out:
            out.append("")  # a blank line: ends a list, starts a paragraph
        out.append(plain(line.strip()))
    return "\n".join(out)


def plain(text: Any) -> str:
    """``text`` escaped for Markdown: shown as typed (file names, case ids).

    Names may hold Markdown or HTML (``<img src=x>``, ``*``, ``[a](b)``); every
    ASCII punctuation mark gets a backslash, so none of it takes effect.
    """
    return _MARKDOWN_CHARS.sub(r"\\\g<0>", str(text))


_MARKDOWN_CHARS = re.compile(r"[!-/:-@\[-`{-~]")


def colour_legend(colours: dict[str, tuple[int, int, int]], labels: dict[str, str]):
    """A one-line legend of coloured squares."""
    parts = [
        f"<span style='display:inline-block;width:1em;height:1em;"
        f"background:rgb{tuple(colours[k])};border:1px solid #888;"
        f"vertical-align:middle'></span> {labels[k]}"
        for k in colours
    ]
    st.markdown(" &nbsp; ".join(parts), unsafe_allow_html=True)


def line_figure(title: str, x_title: str, y_title: str, height: int = 340):
    """An empty Plotly figure with the app's look."""
    fig = go.Figure()
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        font=dict(size=16),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    return fig


def plot(fig, key: str | None = None) -> None:
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


# ---------------------------------------------------------------------------------
# Sidebar


def _heartbeat() -> None:
    job_manager().heartbeat(session_id())


@st.fragment(run_every=20)
def _job_status() -> None:
    """Heartbeat and a one-line status per active job, refreshed every 20 s."""
    _heartbeat()
    for job in my_jobs():
        if job.active:
            pos = job_manager().queue_position(job)
            where = f"waiting, place {pos} in the queue" if pos else "training"
            st.caption(f":material/hourglass_top: {job.name}: {where}")


def sidebar() -> None:
    """What is loaded and which models exist, on every page."""
    with st.sidebar:
        loaded = cases()
        st.subheader("Loaded")
        if loaded:
            n_train = len(split_cases(loaded, "train"))
            n_test = len(split_cases(loaded, "test"))
            no_mask = len(loaded) - len(with_masks(loaded))
            st.markdown(
                f"**{st.session_state.get(DATASET, '')}**: "
                f"{plural(len(loaded), 'case')}  \n"
                f"{n_train} train / {n_test} test"
                + (f"  \n{no_mask} without a vessel mask" if no_mask else "")
            )
            choice = sampling_choice()
            st.caption(f"Undersampling: {choice['strategy'].replace('_', ' ')}")
        else:
            st.markdown("Nothing yet.")
        st.subheader("Models")
        refs = model_refs()
        if refs:
            st.markdown("\n".join(f"- {r.name} *({r.kind}, {r.origin})*" for r in refs))
        else:
            st.markdown("None yet.")
        _delete_models(refs)
        _job_status()


def _delete_models(refs: Sequence[ModelRef]) -> None:
    """Sidebar: delete saved models (every session sees the same folder)."""
    saved = [r for r in refs if r.path is not None and not is_shipped(r)]
    if not saved:
        return
    with st.expander("Delete saved models"):
        st.caption(
            f"Saved models live in `{models_dir()}`, shared by everyone using this "
            "server. Deleting one removes its folder for good."
        )
        # new keys after each deletion: the form starts empty and unticked again
        # (a widget keeps what the browser last sent under its old key)
        round_ = st.session_state.get("delete_round", 0)
        chosen = st.multiselect(
            "Models to delete",
            [r.label for r in saved],
            key=f"delete_models_{round_}",
        )
        sure = st.checkbox("Yes, delete them for good", key=f"delete_sure_{round_}")
        if st.button("Delete", key="delete_go", disabled=not (chosen and sure)):
            by_label = {r.label: r for r in saved}
            failed = []
            for label in chosen:
                try:
                    store.delete_model(by_label[label].path)
                except (OSError, ValueError) as exc:
                    failed.append(f"{label}: {exc}")
            st.session_state["delete_round"] = round_ + 1
            if failed:
                st.error(plain("Not deleted: " + "; ".join(failed)))
            else:
                st.rerun()


def status_line(event) -> str:
    """The progress bar's words: a ResNet's epoch and batch within it, else the
    event's message, or its step and count."""
    if event is None:
        return "Starting..."
    m = event.metrics
    if event.step == "batch" and {"epochs", "batches", "loss"} <= set(m):
        # the same words after every batch (its message comes every 10th only)
        return (
            f"epoch {m['epoch']:.0f}/{m['epochs']:.0f} batch {m['batch']:.0f}/"
            f"{m['batches']:.0f}: loss {m['loss']:.4f}"
        )
    if event.message:
        return event.message
    return f"{event.step} {event.done}/{event.total}" if event.total else event.step


def settings_widgets(
    defaults: dict[str, Any],
    choices: dict[str, Any],
    key_prefix: str,
    main: Sequence[str] | None = None,
    hints: dict[str, tuple[Any, str]] | None = None,
    help_texts: dict[str, str] | None = None,
    columns: int = 3,
) -> dict[str, Any]:
    """One widget per setting, typed by its default; returns the chosen settings.

    Parameters
    ----------
    defaults : dict
        Setting name to default value (None: "decided by the model", e.g. preset).
    choices : dict
        ``choices[name]``: the allowed values (a select box; a multiselect when the
        default is a list) or a ``(low, high)`` pair of numbers (a slider for a
        list default of two numbers, bounds otherwise).
    key_prefix : str
        Widget keys are ``<key_prefix>_<name>``.
    main : sequence of str, optional
        Settings shown first; the others go in a "More settings" expander.
    hints : dict, optional
        For a None default, ``(example value, placeholder text)``: the example
        gives the widget's type, the text says what an empty field means.
    """
    hints = hints or {}
    help_texts = help_texts or {}
    names = list(defaults)
    first = [n for n in (main or names) if n in defaults]
    rest = [n for n in names if n not in first]
    out: dict[str, Any] = {}

    def draw(group: list[str]) -> None:
        cols = st.columns(columns)
        for i, name in enumerate(group):
            with cols[i % columns]:
                out[name] = _one_setting(
                    name.replace("_", " "),
                    f"{key_prefix}_{name}",
                    defaults[name],
                    choices.get(name),
                    hints.get(name),
                    help_texts.get(name),
                )

    draw(first)
    if rest:
        with st.expander("More settings"):
            draw(rest)
    return out


def _one_setting(label, key, default, allowed, hint, tip):
    """One widget for one setting (see `settings_widgets`)."""
    is_range = isinstance(allowed, tuple) and len(allowed) == 2
    if default is None:
        return _optional_setting(label, key, allowed, hint, tip)
    if isinstance(default, bool):
        return st.checkbox(
            label, value=default, key=kept(key), persist_state=KEEP, help=tip
        )
    if isinstance(default, list | tuple):
        if allowed is not None and not is_range:
            return st.multiselect(
                label,
                list(allowed),
                default=list(default),
                key=kept(key),
                persist_state=KEEP,
                help=tip,
            )
        if len(default) == 2 and all(isinstance(v, int | float) for v in default):
            low, high = allowed if is_range else (min(default), max(default) * 4)
            value = st.slider(
                label,
                low,
                high,
                (default[0], default[1]),
                key=kept(key),
                persist_state=KEEP,
                help=tip,
            )
            return list(value) if isinstance(default, list) else tuple(value)
        text = st.text_input(
            label,
            ", ".join(str(v) for v in default),
            key=kept(key),
            persist_state=KEEP,
            help=tip,
        )
        return _parse_list(text, default, label)
    if allowed is not None and not is_range:
        options = list(allowed)
        index = options.index(default) if default in options else 0
        return st.selectbox(
            label,
            options,
            index=index,
            key=kept(key),
            persist_state=KEEP,
            help=tip,
            format_func=str,
        )
    if isinstance(default, int):
        low, high = allowed if is_range else (0, None)
        return int(
            st.number_input(
                label,
                min_value=low,
                max_value=high,
                value=default,
                step=1,
                key=kept(key),
                persist_state=KEEP,
                help=tip,
            )
        )
    if isinstance(default, float):
        low, high = allowed if is_range else (0.0, None)
        return float(
            st.number_input(
                label,
                min_value=low,
                max_value=high,
                value=default,
                key=kept(key),
                persist_state=KEEP,
                help=tip,
                format="%g",
            )
        )
    return st.text_input(
        label, str(default), key=kept(key), persist_state=KEEP, help=tip
    )


def _optional_setting(label, key, allowed, hint, tip):
    """A setting whose default is None: an empty widget means None."""
    example, placeholder = hint if hint else (None, "")
    if allowed is not None or isinstance(example, bool):
        return st.selectbox(
            label,
            [None, *(allowed if allowed is not None else (True, False))],
            key=kept(key),
            persist_state=KEEP,
            help=tip,
            format_func=lambda v: placeholder or "default" if v is None else str(v),
            # a kept None comes back as no choice at all: it reads the same
            placeholder=placeholder or "default",
        )
    if isinstance(example, int):
        value = st.number_input(
            label,
            min_value=0,
            value=None,
            step=1,
            key=kept(key),
            persist_state=KEEP,
            help=tip,
            placeholder=placeholder,
        )
        return None if value is None else int(value)
    if isinstance(example, float):
        value = st.number_input(
            label,
            min_value=0.0,
            value=None,
            key=kept(key),
            persist_state=KEEP,
            help=tip,
            format="%g",
            placeholder=placeholder,
        )
        return None if value is None else float(value)
    text = st.text_input(
        label, "", key=kept(key), persist_state=KEEP, help=tip, placeholder=placeholder
    )
    return _parse_scalar(text)


def _parse_scalar(text: str) -> Any:
    """ "" -> None, "3" -> 3, "0.5" -> 0.5, anything else stays text."""
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_list(text: str, default: Sequence[Any], label: str) -> list[Any]:
    kind: Callable[[str], Any] = type(default[0]) if default else str
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        st.error(f"{label}: expected a comma-separated list like {list(default)}")
        stop_page()


def plural(n: int, word: str) -> str:
    """``"1 case"``, ``"3 cases"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


if __name__ == "__main__":  # Streamlit ran this helper file as a page of its own
    through_app()
