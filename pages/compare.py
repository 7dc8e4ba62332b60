"""Compare: every chosen model scored on the chosen test cases, beyond accuracy."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages import _ui
from vessel_core import compare
from vessel_core.cases import split_cases, with_masks

_ui.through_app()

RESULT = _ui.COMPARE_RESULT

st.title("4. Compare")

loaded = _ui.require_cases(need_masks=True)
refs = {r.label: r for r in _ui.model_refs(variants=True)}
if not refs:
    st.info("No model yet: train one on the Train page (or put one under models/).")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/arrow_forward:")
    _ui.stop_page()

scorable = with_masks(loaded)
test_ids = [c.id for c in with_masks(split_cases(loaded, "test"))]
default_cases = test_ids or [c.id for c in scorable]
default_models = _ui.default_models(list(refs.values()))
# a model that appeared since this session last looked (a reload may lie between)
# joins the comparison (not its slower variant)
known = st.session_state.get(_ui.COMPARE_SEEN)
added = [
    m for m in refs if known is not None and m not in known and not refs[m].prediction
]
st.session_state[_ui.COMPARE_SEEN] = list(refs)
if added and "cmp_models" in st.session_state:
    now = [m for m in st.session_state["cmp_models"] if m in refs]
    # another tab on this session may have added them already
    st.session_state["cmp_models"] = now + [m for m in added if m not in now]
kept = st.session_state.get(RESULT)
if kept is not None:  # after a reload the pickers start from the kept comparison
    default_models = [m for m in kept["models"] if m in refs] or default_models
    ids = {c.id for c in scorable}
    default_cases = [i for i in kept["cases"] if i in ids] or default_cases
# a choice made before another dataset was loaded (or its models removed) offers
# nothing that exists now: it starts again from the defaults, not empty
_ui.still_offered("cmp_models", list(refs), default_models)
_ui.still_offered("cmp_cases", [c.id for c in scorable], default_cases)
left, right = st.columns(2)
with left:
    chosen_models = st.multiselect(
        "Models",
        list(refs),
        default=default_models,
        key=_ui.kept("cmp_models"),
        persist_state=_ui.KEEP,
        help=_ui.VARIANT_HELP,
    )
with right:
    split_of = {c.id: c.split for c in scorable}
    chosen_ids = st.multiselect(
        "Cases to score (with a vessel mask)",
        [c.id for c in scorable],
        default=default_cases,
        key=_ui.kept("cmp_cases"),
        persist_state=_ui.KEEP,
        format_func=lambda cid: cid if split_of[cid] == "test" else f"{cid} (train)",
    )
if added:
    st.caption("Added to the comparison: " + ", ".join(_ui.plain(m) for m in added))
if not test_ids:
    st.info(
        "No test case with a vessel mask is loaded, so the training cases are "
        "offered: scores on a model's own training cases are optimistic. Set some "
        "cases to the test split on the Data page, and train without them."
    )
STOPPED_NOTE = "cmp_stopped_note"  # said once, on the run after a stop


def _keep(task) -> None:
    """Keep a finished scoring's figures, or note that it was stopped."""
    _ui.collect_scoring(task)
    scored = task.result
    if scored.stopped:
        st.session_state[STOPPED_NOTE] = True
        return
    st.session_state[RESULT] = {
        "models": task.label["models"],
        "cases": task.label["cases"],
        "reports": scored.reports,
        "seconds": scored.seconds,
        "errors": dict(scored.errors),
    }


@st.fragment(run_every=1)
def _progress() -> None:
    """The scoring's progress bar, redrawn every second; the page when it ends."""
    task = _ui.scoring()
    if task is None or task.finished:
        st.rerun()  # the whole page: its figures, the button, the sidebar
    event = task.progress
    st.progress(
        event.fraction,
        text=f"Scoring map {min(event.done + 1, task.total)} of {task.total}: "
        f"{event.message} (it goes on if you leave or reload this page)",
    )


task = _ui.scoring()
if task is not None and task.finished:  # ended while this page was not looking
    _keep(task)
    task = None
run = st.button(
    "Score the models",
    type="primary",
    key="cmp_run",
    disabled=task is not None or not (chosen_models and chosen_ids),
    help="One scoring at a time: stop this one, or wait for it."
    if task is not None
    else None,
)
if run and task is None:
    task = _ui.start_scoring(
        [refs[m] for m in chosen_models],
        [c for c in scorable if c.id in chosen_ids],
        {"models": chosen_models, "cases": chosen_ids},
    )
if task is not None:
    if st.button("Stop scoring", key="cmp_stop", icon=":material/stop:"):
        task.stop()
        st.session_state[STOPPED_NOTE] = True  # told here, whichever tab collects
    _progress()
# told once the scoring has ended (in the tab that pressed Stop, too)
if task is None and st.session_state.pop(STOPPED_NOTE, False):
    st.warning(
        "Scoring stopped; the figures below, if any, are from before. The maps "
        "already computed are kept: pressing the button again goes on from there."
    )

result = st.session_state.get(RESULT)
if result is None:
    if task is None:
        st.info("Choose models and test cases, then press **Score the models**.")
    _ui.stop_page()
if result["models"] != chosen_models or result["cases"] != chosen_ids:
    st.warning("The figures below are for an earlier choice; press the button again.")

for name, why in result.get("errors", {}).items():
    st.error(_ui.as_text(f"Scoring {name} failed: {why}"))
by_name = {r.name: r for r in refs.values()}
for name in result["reports"]:
    if name not in by_name:
        continue
    try:
        own = compare.trained_on(
            _ui.load(by_name[name]), [c for c in scorable if c.id in result["cases"]]
        )
    except Exception:  # a model that cannot be loaded now was told about above
        continue
    if own:
        st.warning(
            f"**{_ui.plain(name)}** was scored on {len(own)} of its own training "
            f"cases ({_ui.plain(', '.join(own))}) out of {len(result['cases'])}: its "
            "figures are optimistic. Judge a model on cases it never saw."
        )

reports = result["reports"]
which = st.radio(
    "Summary",
    ["mean", "pooled"],
    format_func={
        "mean": "mean over cases",
        "pooled": "pooled pixels of all cases",
    }.get,
    horizontal=True,
    key=_ui.kept("cmp_which"),
    persist_state=_ui.KEEP,
)
rows = compare.summary_rows(reports, which, result["seconds"])
table = pd.DataFrame(rows).set_index("model")
shown = table.map(_ui.fmt)
if "seconds_per_image" in shown:
    shown["seconds_per_image"] = table["seconds_per_image"].map(lambda s: _ui.fmt(s, 2))
shown = shown.rename(columns=_ui.METRIC_LABELS)
grey = "color: #888; font-style: italic"
st.table(
    shown.style.apply(
        lambda row: [grey if row.name == compare.ALL_BACKGROUND else ""] * len(row),
        axis=1,
    )
)

base_acc = reports[compare.ALL_BACKGROUND].pooled["accuracy"]
st.warning(
    f"**Accuracy alone misleads.** The *{compare.ALL_BACKGROUND}* row calls every "
    f"pixel background: it finds no vessel at all, yet its accuracy is "
    f"**{_ui.fmt(base_acc)}**, because most of the FOV is background. Judge the "
    "models by F1 (Dice), sensitivity, MCC and the area under the PR curve."
)

palette = px.colors.qualitative.Dark2
colour = {
    name: "#888888" if name == compare.ALL_BACKGROUND else palette[i % len(palette)]
    for i, name in enumerate(reports)
}
curves, per_case = st.columns(2)
with curves:
    roc = _ui.line_figure("ROC curve (pooled)", "false positive rate", "sensitivity")
    pr = _ui.line_figure("Precision-recall (pooled)", "recall", "precision")
    for name, report in reports.items():
        dash = "dash" if name == compare.ALL_BACKGROUND else "solid"
        fpr, tpr, _ = report.roc_curve()
        recall, precision, _ = report.pr_curve()
        auc, ap = report.pooled["auc_roc"], report.pooled["auc_pr"]
        line = dict(dash=dash, color=colour[name])
        roc.add_scatter(x=fpr, y=tpr, name=f"{name} (AUC {_ui.fmt(auc)})", line=line)
        if name != compare.ALL_BACKGROUND:  # it never calls a vessel: no PR curve
            pr.add_scatter(
                x=recall, y=precision, name=f"{name} (AP {_ui.fmt(ap)})", line=line
            )
    # each legend where that chart's curves do not go
    for fig, x, anchor in ((roc, 0.98, "right"), (pr, 0.02, "left")):
        fig.update_layout(
            height=420,
            legend=dict(orientation="v", y=0.02, x=x, xanchor=anchor, yanchor="bottom"),
        )
        fig.update_xaxes(range=[0, 1])
        fig.update_yaxes(range=[0, 1.02])
    _ui.plot(roc, key="cmp_roc")
    _ui.plot(pr, key="cmp_pr")

with per_case:
    metric = st.selectbox(
        "Per-case figure",
        compare.TABLE_METRICS,
        key=_ui.kept("cmp_metric"),
        persist_state=_ui.KEEP,
        format_func=lambda m: _ui.METRIC_LABELS.get(m, m.replace("_", " ")),
    )
    shown = _ui.METRIC_LABELS.get(metric, metric.replace("_", " "))
    cases_df = pd.DataFrame(compare.per_case_rows(reports))
    fig = px.bar(
        cases_df,
        x="case",
        y=metric,
        color="model",
        barmode="group",
        title=f"{shown} per case",
        labels={metric: shown},
        color_discrete_map=colour,
    )
    fig.update_layout(height=420, font=dict(size=16), margin=dict(l=10, r=10, t=50))
    fig.update_xaxes(type="category")  # case ids as written: 01, not 1
    _ui.plot(fig, key="cmp_per_case")
    speed = pd.DataFrame(
        {"model": list(result["seconds"]), "seconds": list(result["seconds"].values())}
    )
    fig = px.bar(
        speed,
        x="model",
        y="seconds",
        color="model",
        color_discrete_map=colour,
        title="Seconds per image",
    )
    fig.update_layout(showlegend=False)
    fig.update_layout(height=300, font=dict(size=16), margin=dict(l=10, r=10, t=50))
    _ui.plot(fig, key="cmp_speed")

notes = compare.notes_by_model(reports)
if notes:
    count = sum(len(n) for n in notes.values())
    whose = ", ".join(_ui.plain(name) for name in notes)
    with st.expander(f"{count} note(s) on undefined figures, from {whose}"):
        for name, lines in notes.items():
            about = ""
            if name == compare.ALL_BACKGROUND:
                about = " (the baseline that calls every pixel background)"
            items = "\n".join(f"- {_ui.plain(name)}, {_ui.plain(n)}" for n in lines)
            st.markdown(f"**{_ui.plain(name)}**{about}\n\n{items}")

st.page_link(
    "pages/results.py", label="Next: look at one image", icon=":material/arrow_forward:"
)
