"""Data: load images with their vessel and FOV masks, check pairs, set the split."""

from __future__ import annotations

import warnings

import pandas as pd
import streamlit as st

from pages import _ui
from vessel_core import io, render, samples
from vessel_core.cases import Case

SOURCES = ("Built-in sample", "Upload files", "Folder on the server")

st.title("1. Data")
st.markdown(
    "Load fundus images with their manual vessel masks and FOV masks. Files are "
    "paired by name (DRIVE, STARE, CHASE_DB1, HRF or any `name` / `name_manual` / "
    "`name_mask` scheme); a missing FOV mask is estimated from the image."
)


def _load(what: str, reader) -> None:
    """Run ``reader()`` -> Discovery and keep its cases; on failure keep the old."""
    with st.spinner(f"Reading {what}..."), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            found = reader()
        except (io.LoadError, ValueError, OSError) as exc:
            _ui.show_error(exc, f"Loading {what}")
            return
    for w in seen:
        if issubclass(w.category, UserWarning):
            st.warning(str(w.message))
    if not found.cases:
        st.error(f"{what}: no image found among the files; nothing was loaded.")
        return
    _ui.set_cases(found.cases, found.layout, found.unpaired)
    n_train = sum(c.split == "train" for c in found.cases)
    st.success(
        f"Loaded {_ui.plural(len(found.cases), 'case')} ({found.layout}): "
        f"{n_train} train, {len(found.cases) - n_train} test."
    )


def _builtin():
    cases = samples.builtin_sample()
    return io.Discovery(cases=cases, layout="built-in sample")


source = st.radio(
    "Where are the images?",
    SOURCES,
    horizontal=True,
    key="data_source",
    persist_state=_ui.KEEP,
)

if source == SOURCES[0]:
    st.markdown(
        "Four synthetic fundus images with exact vessel masks (three to train on, "
        "one to test), and scikit-image's retina photograph without a mask."
    )
    if st.button("Load the built-in sample", type="primary", key="load_sample"):
        _load("the built-in sample", _builtin)

elif source == SOURCES[1]:
    uploads = st.file_uploader(
        "Images, vessel masks and FOV masks (any image format), or a ZIP of a "
        "whole dataset",
        accept_multiple_files=True,
        key="upload_files",
    )
    if st.button(
        "Pair and load", type="primary", key="load_uploads", disabled=not uploads
    ):
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
        st.caption(f"Folders and ZIP files under `{root}` can be opened.")
        folder = st.text_input(
            "Folder or ZIP (relative to the data folder)",
            "DRIVE",
            key="server_folder",
            persist_state=_ui.KEEP,
        )
        if st.button("Open", type="primary", key="load_folder"):
            try:
                path = _ui.allowed_folder(folder, root)
            except ValueError as exc:
                _ui.show_error(exc, "Opening the folder")
            else:
                _load(str(path), lambda: io.discover(path))


def _name(case: Case, role: str) -> str:
    source = case.sources.get(role, "")
    for prefix in ("upload:", "zip:", "builtin:"):
        source = source.removeprefix(prefix)
    return source.rsplit("/", 1)[-1]


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
                    "file": [u.path for u in unpaired],
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
