"""Results: one image and one model: reconstruction, errors, threshold, downloads."""

from __future__ import annotations

import streamlit as st

from pages import _ui
from vessel_core import compare, metrics, render

_ui.through_app()

SHOWN = ("f1", "sensitivity", "specificity", "precision", "accuracy", "mcc", "auc_roc")

st.title("5. Results")

loaded = _ui.require_cases()
refs = {r.label: r for r in _ui.model_refs(variants=True)}
if not refs:
    st.info("No model yet: train one on the Train page (or put one under models/).")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/arrow_forward:")
    _ui.stop_page()

by_id = {c.id: c for c in loaded}
test_first = sorted(by_id, key=lambda cid: by_id[cid].split != "test")
left, right = st.columns(2)
with left:
    case_id = st.selectbox(
        "Image",
        test_first,
        key=_ui.kept("res_case"),
        persist_state=_ui.KEEP,
        format_func=lambda cid: (
            f"{cid} ({by_id[cid].split}"
            + ("" if by_id[cid].has_mask else ", no mask")
            + ")"
        ),
    )
with right:
    first = _ui.first_model(list(refs.values()))  # offered first: the default
    before = st.session_state.get("res_model")
    if isinstance(before, str) and before not in refs:  # deleted since, or moved
        st.info(_ui.plain(f"{before} is no longer among the models; showing {first}."))
    label = st.selectbox(
        "Model",
        [first, *(m for m in refs if m != first)],
        key=_ui.kept("res_model"),
        persist_state=_ui.KEEP,
        help=_ui.VARIANT_HELP,
    )
case, ref = by_id[case_id], refs[label]

try:
    model = _ui.load(ref)
    with st.spinner(f"{ref.name} is reading case {case.id}..."):
        prob, seconds = _ui.predict(ref, case)
except Exception as exc:  # a model that cannot predict must not end the page
    _ui.show_error(exc, f"Predicting case {case.id} with {ref.name}")
    _ui.stop_page()

if compare.trained_on(model, [case]):
    what = (
        "scores are optimistic"
        if case.has_mask
        else "map looks better than a new image's"
    )
    st.warning(
        f"Case {_ui.plain(case.id)} was one of this model's training cases: its "
        f"{what}. Judge the model on test cases."
    )

own = float(model.threshold)
threshold_key = f"res_threshold_{ref.key}"


def _use_own_threshold() -> None:
    st.session_state[threshold_key] = own


slide, reset = st.columns([3, 1], vertical_alignment="bottom")
# 3 decimals and a step of 0.001: the label is the threshold the figures use
threshold = slide.slider(
    f"Threshold (the model's own: {own:.3f})",
    0.0,
    1.0,
    own,
    0.001,
    format="%.3f",
    key=_ui.kept(threshold_key),
    persist_state=_ui.KEEP,
)
reset.button(
    "Use the model's threshold",
    key="res_threshold_reset",
    on_click=_use_own_threshold,
    disabled=threshold == own,
)
pred = render.reconstruct(prob, threshold, case.fov_mask)

figures = None
if case.has_mask:
    figures = metrics.score(
        case.vessel_mask, prob, case.fov_mask, threshold, quiet=True
    )
    for col, key in zip(st.columns(len(SHOWN)), SHOWN, strict=True):
        col.metric(_ui.METRIC_LABELS.get(key, key), _ui.fmt(figures[key]))
else:
    st.info(
        f"Case {case.id} has no manual vessel mask: here is the reconstruction alone, "
        "with nothing to score it against."
    )
st.caption(
    f"Prediction took {seconds:.2f} s. The map is kept on the server: this model "
    "does not compute it again for this image (a threshold change, another page)."
)

panels = [("Original", case.image)]
if case.has_mask:
    panels.append(("Manual vessel mask", render.mask_image(case.vessel_mask)))
panels.append((f"Reconstruction at {threshold:.3f}", render.mask_image(pred)))
if case.has_mask:
    panels.append(
        ("Errors", render.error_overlay(case.vessel_mask, pred, case.fov_mask))
    )
else:
    panels.append(("Probability map", render.probability_image(prob, case.fov_mask)))
for col, (title, picture) in zip(st.columns(len(panels)), panels, strict=True):
    with col:
        st.markdown(f"**{title}**")
        st.image(picture, width="stretch")
if case.has_mask:
    _ui.colour_legend(render.ERROR_COLOURS, render.ERROR_LABELS)
    st.caption(
        f"Inside the FOV: {figures['tp']:,} vessel pixels found, {figures['fp']:,} "
        f"false, {figures['fn']:,} missed."
    )
    with st.columns(len(panels))[0]:
        st.markdown("**Probability map**")
        st.image(render.probability_image(prob, case.fov_mask), width="stretch")
        st.caption("dark purple: surely background, yellow: surely vessel")

files = render.result_files(
    case.id, case.image, prob, threshold, case.fov_mask, case.vessel_mask, figures
)
st.subheader("Downloads")
offered = [
    ("Vessel map (PNG)", f"{case.id}_vessels.png", "vessels.png", "image/png", "png")
]
if figures is not None:
    offered.append(
        ("Metrics (CSV)", f"{case.id}_metrics.csv", "metrics.csv", "text/csv", "csv")
    )
columns = st.columns(3)  # side by side, with no gap where a file is not offered
for column, (label, member, suffix, mime, key) in zip(columns, offered, strict=False):
    column.download_button(
        label,
        files[member],
        file_name=f"{_ui.file_part(case.id)}_{ref.file_stem}_{suffix}",
        mime=mime,
        key=f"res_dl_{key}",
        on_click="ignore",
    )
columns[len(offered)].download_button(
    "Everything (ZIP)",
    render.to_zip(files),
    file_name=f"{_ui.file_part(case.id)}_{ref.file_stem}.zip",
    mime="application/zip",
    key="res_dl_zip",
    on_click="ignore",
)
