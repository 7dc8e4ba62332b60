"""Data: load images with their vessel and FOV masks, check pairs, set the split."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages import _ui
from vessel_core import io, render, samples
from vessel_core.cases import Case
from vessel_core.progress import kept_warnings

_ui.through_app()

SOURCES = ("Built-in sample", "Upload files", "Folder on the server")

st.title("1. Data")
st.markdown(
    "Load fundus images with their manual vessel masks and FOV masks. Files are "
    "paired by name (DRIVE, STARE, CHASE_DB1, HRF or any `name` / `name_manual` / "
    "`name_mask` scheme); a missing FOV mask is estimated from the image."
)


def _load(what: str, reader) -> None:
    """Run ``reader()`` -> Discovery and keep its cases; on failure keep the old."""
    # the files the last load left unused are no news about this one
    st.session_state[_ui.UNPAIRED] = []
    with st.spinner(f"Reading {what}..."), kept_warnings() as seen:
        try:
            found = reader()
        except (io.LoadError, ValueError, OSError) as exc:
            _ui.show_error(_without_where(str(exc), what), f"Loading {what}")
            return
    for text in seen:
        st.warning(_ui.as_text(text))
    if not found.cases:
        st.error(
            _ui.as_text(f"{what}: no image found among the files; nothing was loaded.")
        )
        return
    before = len(_ui.cases())
    _ui.set_cases(found.cases, found.layout, found.unpaired)
    n_train = sum(c.split == "train" for c in found.cases)
    replaced = ""
    if before:
        were = "was" if before == 1 else "were"
        replaced = f"; the {_ui.plural(before, 'case')} loaded before {were} replaced"
    st.success(
        f"Loaded {_ui.plural(len(found.cases), 'case')} ({found.layout}): "
        f"{n_train} train, {len(found.cases) - n_train} test{replaced}."
    )
    bare = [c.id for c in found.cases if c.vessel_mask is None]
    if bare:
        if len(bare) == len(found.cases):
            which = "None of them has a"
        else:
            shown = ", ".join(bare[:8]) + (", ..." if len(bare) > 8 else "")
            verb = "has" if len(bare) == 1 else "have"
            which = f"{_ui.plural(len(bare), 'case')} ({_ui.plain(shown)}) {verb} no"
        it = "it" if len(bare) == 1 else "they"
        st.info(
            f"{which} manual vessel mask: {it} can be segmented (Results), not "
            "trained on or scored. Load the masks with the images for that."
        )
    if found.unpaired:
        lines = [
            f"- {_ui.plain(io.display_name(u.path))}: {_ui.plain(u.reason)}"
            for u in found.unpaired[:20]
        ]
        if len(found.unpaired) > 20:
            lines.append(f"- ... and {len(found.unpaired) - 20} more (table below)")
        st.warning(
            f"{_ui.plural(len(found.unpaired), 'file')} not used:\n" + "\n".join(lines)
        )


def _without_where(message: str, what: str) -> str:
    """``message`` without its leading ``what:``, which the error box says already."""
    for where in (f"{what}: ", f"{what!r}: "):
        message = message.removeprefix(where)
    return message


def _load_button(label: str, key: str, disabled: bool = False):
    """The button that loads, and a place beside it for `_say_what_it_replaces`."""
    button, note = st.columns([1, 3], vertical_alignment="center")
    pressed = button.button(label, type="primary", key=key, disabled=disabled)
    return pressed, note.empty()


def _say_what_it_replaces(note) -> None:
    """Beside the load button: the cases a load would replace (after this one)."""
    now = len(_ui.cases())
    if now:
        note.caption(
            f"A new load replaces the {_ui.plural(now, 'case')} in use now "
            f"({_ui.plain(st.session_state.get(_ui.DATASET, ''))}); what you "
            "trained on them is kept."
        )


def _builtin():
    cases = samples.builtin_sample()
    return io.Discovery(cases=cases, layout="built-in sample")


note, pressed = None, False
source = st.radio(
    "Where are the images?",
    SOURCES,
    horizontal=True,
    key=_ui.kept("data_source"),
    persist_state=_ui.KEEP,
)

if source == SOURCES[0]:
    st.markdown(
        "Four synthetic fundus images with exact vessel masks (three to train on, "
        "one to test), and scikit-image's retina photograph without a mask (on the "
        "test side: a model's reconstruction of it has nothing to be scored against)."
    )
    pressed, note = _load_button("Load the built-in sample", "load_sample")
    if pressed:
        _load("the built-in sample", _builtin)

elif source == SOURCES[1]:
    uploads = st.file_uploader(
        "Images, vessel masks and FOV masks (any image format), or a ZIP of a "
        "whole dataset",
        accept_multiple_files=True,
        key="upload_files",
    )
    pressed, note = _load_button("Pair and load", "load_uploads", not uploads)
    if pressed:
        files = [(f.name, f.getvalue()) for f in uploads]
        _load(f"{len(files)} uploaded file(s)", lambda: io.load_files(files))

else:
    root = _ui.data_root()
    if root is None:
        st.warning(
            "Opening folders on the server is off: the app listens beyond this "
            "machine. Set VESSEL_DATA_DIR to a data folder to allow it."
        )
    else:
        if root.is_dir():
            st.caption(f"Folders and ZIP files under `{root}` can be opened.")
        else:
            st.warning(
                f"The data folder `{root}` does not exist on the server, so no "
                "folder can be opened yet. Start the app with VESSEL_DATA_DIR set "
                "to the folder that holds your datasets (`VESSEL_DATA_DIR=/path/to/"
                "data make run`), or upload the files instead."
            )
        folder = st.text_input(
            "Folder or ZIP (relative to the data folder or the project folder)",
            "DRIVE",
            key=_ui.kept("server_folder"),
            persist_state=_ui.KEEP,
        )
        pressed, note = _load_button("Open", "load_folder")
        if pressed:
            try:
                path = _ui.allowed_folder(folder, root)
            except ValueError as exc:
                _ui.show_error(exc, "Opening the folder")
            else:
                _load(str(path), lambda: io.discover(path))

if note is not None and not pressed:  # right after a load it would read as undone
    _say_what_it_replaces(note)


def _name(case: Case, role: str) -> str:
    return io.source_name(case.sources.get(role, "")).rsplit("/", 1)[-1]


def _table(cases: list[Case]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [c.id for c in cases],
            "thumbnail": [render.data_uri(c.image) for c in cases],
            "vessels": [
                render.data_uri(c.vessel_mask) if c.has_mask else None for c in cases
            ],
            "split": [c.split for c in cases],
            "size": [f"{c.shape[1]} x {c.shape[0]}" for c in cases],
            "FOV estimated": [c.fov_estimated for c in cases],
            "image": [_name(c, "image") for c in cases],
            "vessel mask": [_name(c, "vessel_mask") or "none" for c in cases],
            "FOV mask": [
                "estimated" if c.fov_estimated else _name(c, "fov_mask") for c in cases
            ],
        }
    )


loaded = _ui.cases()
if loaded:
    st.subheader(
        f"{_ui.plural(len(loaded), 'case')} ({st.session_state.get(_ui.DATASET, '')})"
    )
    st.caption("Change a case's split in the *split* column; the change is kept.")
    base = _table(loaded)
    edited = st.data_editor(
        base,
        key=f"split_editor_{st.session_state.get(_ui.LOAD_COUNT, 0)}",
        hide_index=True,
        disabled=[c for c in base.columns if c != "split"],
        row_height=70,
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            "vessels": st.column_config.ImageColumn("mask", width="small"),
            "image": st.column_config.TextColumn("image file"),
            "vessel mask": st.column_config.TextColumn("vessel mask file"),
            "split": st.column_config.SelectboxColumn(
                "split", options=["train", "test"], required=True
            ),
        },
    )
    splits = dict(zip(edited["id"], edited["split"], strict=True))
    if any(splits[c.id] != c.split for c in loaded):
        _ui.set_splits(splits)
        st.rerun()

    unpaired = st.session_state.get(_ui.UNPAIRED, [])
    if unpaired:
        st.subheader(f"{len(unpaired)} file(s) not used")
        st.dataframe(
            pd.DataFrame(
                {
                    "file": [io.source_name(u.path) for u in unpaired],
                    "looks like": [u.role.replace("_", " ") for u in unpaired],
                    "why": [u.reason for u in unpaired],
                }
            ),
            hide_index=True,
        )
    st.page_link(
        "pages/undersampling.py",
        label="Next: choose the undersampling",
        icon=":material/arrow_forward:",
    )
