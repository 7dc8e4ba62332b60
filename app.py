"""Retinal vessel extraction: the Streamlit app's entry point (navigation, sidebar)."""

from __future__ import annotations

import streamlit as st

from pages import _ui

st.set_page_config(
    page_title="Retinal vessel extraction",
    page_icon="👁️",  # an emoji: a :material: favicon is fetched from Google's servers
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
_ui.run_page(page)
