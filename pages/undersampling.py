"""Undersampling: choose which background pixels the models train on, and see them."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from vessel_core import sampling
from vessel_core.knn import KNNModel

_ui.through_app()

FRACTIONS = ("drop_fraction", "near_share")
HELP = {
    "drop_fraction": "Share of the background pixels left out.",
    "near_share": "Of the background kept, the share taken near the vessels.",
    "band_width": "Pixels from a vessel that count as near it.",
    "background_per_vessel": "Background pixels kept per vessel pixel.",
    "max_per_case": "Most pixels taken from one image.",
}

st.title("2. Undersampling")
st.markdown(
    "Vessels are about a tenth of the field of view: a model trained on every pixel "
    "learns mostly background. Choose what part of the background it sees. The "
    "choice is kept and used by the **Train** page."
)

train = _ui.require_train_cases()

choice = _ui.sampling_choice()
names = list(sampling.STRATEGIES)
left, right = st.columns([1, 2])
with left:
    strategy = st.selectbox(
        "Strategy",
        names,
        index=names.index(choice["strategy"]),
        key=_ui.kept("us_strategy"),
        persist_state=_ui.KEEP,
        format_func=lambda s: s.replace("_", " "),
    )
    st.caption(sampling.DESCRIPTIONS[strategy])
    stored = choice["settings"] if strategy == choice["strategy"] else {}
    settings = {}
    for name, default in sampling.STRATEGIES[strategy].items():
        value = stored.get(name, default)
        label = name.replace("_", " ")
        key = f"us_{strategy}_{name}"
        if name in FRACTIONS:
            settings[name] = st.slider(
                label,
                0.0,
                1.0,
                float(value),
                0.05,
                key=_ui.kept(key),
                help=HELP.get(name),
                persist_state=_ui.KEEP,
            )
        elif isinstance(default, int):
            settings[name] = int(
                st.number_input(
                    label,
                    1,
                    None,
                    int(value),
                    1,
                    key=_ui.kept(key),
                    help=HELP.get(name),
                    persist_state=_ui.KEEP,
                )
            )
        else:
            settings[name] = float(
                st.number_input(
                    label,
                    0.0,
                    None,
                    float(value),
                    0.5,
                    key=_ui.kept(key),
                    help=HELP.get(name),
                    persist_state=_ui.KEEP,
                )
            )
    seed = int(
        st.number_input(
            "Random seed",
            0,
            None,
            choice["seed"],
            key=_ui.kept("us_seed"),
            persist_state=_ui.KEEP,
            disabled=strategy == "all",
            help="Not used: every pixel is kept." if strategy == "all" else None,
        )
    )

st.session_state[_ui.SAMPLING] = {
    "strategy": strategy,
    "settings": settings,
    "seed": seed,
}

try:
    selection = _ui.current_selection()
except ValueError as exc:
    _ui.show_error(exc, "Undersampling")
    _ui.stop_page()

missing = selection.missing_classes()
with right:
    if missing:
        st.warning(
            f"This choice keeps no {' and no '.join(missing)} pixel: a classifier "
            "needs both classes, so the KNN cannot train on it (the Train page "
            "will not start it). Keep part of each class."
        )
    ids = list(selection.per_case)
    case_id = st.selectbox(
        "Image", ids, key=_ui.kept("us_case"), persist_state=_ui.KEEP
    )
    case = next(c for c in train if c.id == case_id)
    st.image(
        sampling.overlay(case, selection.per_case[case_id]),
        caption=f"Case {case_id}: the pixels a model would train on",
        width=560,
    )
    _ui.colour_legend(sampling.OVERLAY_COLOURS, sampling.OVERLAY_LABELS)


def _counts_figure(
    rows: list[dict], title: str, height: int = 380, legend: bool = True
) -> go.Figure:
    """Stacked bars: each bar is the FOV before, its coloured parts what is kept."""
    df = pd.DataFrame(rows)
    counts = {
        "vessel_kept": df.vessel_after,
        "vessel_dropped": df.vessel_before - df.vessel_after,
        "background_kept": df.background_after,
        "background_dropped": df.background_before - df.background_after,
    }
    fig = _ui.line_figure(title, "", "pixels", height=height)
    for part, values in counts.items():
        if part == "vessel_dropped" and not values.any():
            continue
        fig.add_bar(
            x=df.case,
            y=values,
            name=sampling.OVERLAY_LABELS[part],
            marker_color=f"rgb{sampling.OVERLAY_COLOURS[part]}",
        )
    fig.update_layout(barmode="stack", showlegend=legend)
    return fig


rows = selection.counts_table()
per_case, total = rows[:-1], rows[-1]
totals_after = selection.totals("after")
kept = totals_after["vessel"] + totals_after["background"]
before = total["vessel_before"] + total["background_before"]
st.subheader("Class counts before and after")
st.markdown(
    f"Training pixels: **{kept:,}** of {before:,} in the FOVs "
    f"({kept / before:.0%}); vessel share **{total['vessel_before'] / before:.0%}** "
    f"before, **{totals_after['vessel'] / max(kept, 1):.0%}** after."
)
knn_defaults = KNNModel.default_settings()
st.caption(
    "These are the pixels the models draw from, not what each trains on: the KNN "
    f"takes `max_train_samples` (default {knn_defaults['max_train_samples']:,}) of "
    f"them for its first stage and `context_samples` (default "
    f"{knn_defaults['context_samples']:,}) for its second, evenly from each case; "
    "the ResNet centres part of its crops on them; the classic filters baseline "
    "does not use this choice (it fits on its own uniform sample of each FOV)."
)
chart, summary = st.columns([3, 1])
with chart:
    _ui.plot(_counts_figure(per_case, "Per case (whole bar: the FOV before)"))
with summary:
    _ui.plot(_counts_figure([total], "All training cases", legend=False))
with st.expander("Counts as a table"):
    table = pd.DataFrame(rows)
    table["background_dropped"] = table["background_dropped"].map("{:.1%}".format)
    st.dataframe(
        table.rename(columns=lambda name: name.replace("_", " ")),
        hide_index=True,
        column_config={"background dropped": "share of background dropped"},
    )
if selection.skipped:
    st.caption(f"Without a vessel mask, not sampled: {', '.join(selection.skipped)}")

st.page_link("pages/train.py", label="Next: train", icon=":material/arrow_forward:")
