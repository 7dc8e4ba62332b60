"""Start here: what the app does and what to do first."""

import streamlit as st

from pages import _ui

_ui.through_app()

st.title("Retinal vessel extraction")
st.markdown(
    """
Find the blood vessels in fundus photographs, train your own models, and see how
well they do.

1. **Data**: load a dataset (a folder, a ZIP, single files) or the built-in sample.
2. **Undersampling**: choose which background pixels the models learn from.
3. **Train**: fit a KNN, a ResNet34 U-Net or the classic filters, and watch it learn.
4. **Compare**: score every model on the test images, beyond plain accuracy.
5. **Results**: look at one image: the manual mask, the reconstruction, the errors.
"""
)
st.page_link(
    "pages/data.py", label="Start with the data", icon=":material/arrow_forward:"
)
