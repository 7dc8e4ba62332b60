"""Retinal vessel extraction: the Streamlit app's entry point (navigation, sidebar)."""

from __future__ import annotations

import logging

import streamlit as st

from pages import _ui

logger = logging.getLogger("vessel_app")

st.set_page_config(
    page_title="Retinal vessel extraction",
    page_icon=":material/visibility:",
    layout="wide",
)

page = st.navigation(
    [
        st.Page(
            "pages/home.py", title="Start here", icon=":material/home:", default=True
        ),
        st.Page("pages/data.py", title="1. Data", icon=":material/upload:"),
        st.Page(
            "pages/undersampling.py", title="2. Undersampling", icon=":material/tune:"
        ),
        st.Page("pages/train.py", title="3. Train", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="4. Compare", icon=":material/leaderboard:"),
        st.Page("pages/results.py", title="5. Results", icon=":material/image:"),
    ]
)
try:
    page.run()
except Exception as exc:  # the last guard: a message for the user, no traceback
    logger.exception("page %s failed", page.title)
    st.error(
        f"This page ran into a problem it did not expect: {type(exc).__name__}: "
        f"{exc}. What you loaded and trained is kept; try another choice."
    )
finally:
    # drawn after the page, so it shows what the page just loaded or trained
    _ui.sidebar()
