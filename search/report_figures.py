"""The report's plotly figures, drawn from ReportData. Each function returns a Figure, or None and the
page shows the reason instead (too few trials, nothing recorded yet)."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from .report_data import Dimension, ReportData, TrialInfo

__all__ = ["ANCHOR_COLOUR", "STATE_COLOURS", "axis", "best_so_far", "build_figures", "hover"]

STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#9e9e9e", "FAIL": "#d62728", "RUNNING": "#2ca02c",
                 "WAITING": "#bcbd22"}
ANCHOR_COLOUR = "#e69500"
FRONT_COLOUR = "#d62728"
# No plotly titles: each figure sits under its own heading in the page.
LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=30, b=50))


def hover(t: TrialInfo) -> str:
    parts = [f"<b>{t.label}</b> ({t.state.lower()})"]
    parts += [f"{k} = {_short(v)}" for k, v in t.params.items()]
    for key, name in (("val_loss", "val loss"), ("params", "parameters"), ("gap", "gap"), ("bleu", "BLEU")):
        v = t.attr(key)
        if v is not None:
            parts.append(f"{name} = {_short(v)}")
    if t.attr("diagnosis"):
        parts.append(str(t.attr("diagnosis")))
    return "<br>".join(parts)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 100_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def build_figures(d: ReportData) -> dict[str, tuple[go.Figure | None, str]]:
    """name -> (figure or None, a note shown under it, or instead of it)."""
    return {"history": history(d), "importances": importances(d), "parallel": parallel(d),
            "intermediate": intermediate(d), "params": loss_vs_params(d)}


def history(d: ReportData):
    done = [t for t in d.trials if t.value is not None]
    pruned = [t for t in d.trials if t.state == "PRUNED" and t.curve]
    if not done and not pruned:
        return None, "No trial has finished yet."
    fig = go.Figure()
    if done:
        fig.add_scatter(x=[t.number for t in done], y=[t.value for t in done], mode="markers", name="complete",
                        marker=dict(color=STATE_COLOURS["COMPLETE"], size=9), hovertext=[hover(t) for t in done],
                        hoverinfo="text")
        fig.add_scatter(x=[t.number for t in done], y=best_so_far(d, done), mode="lines", name="best so far",
                        line=dict(color="#444", shape="hv"))
    if pruned:
        fig.add_scatter(x=[t.number for t in pruned], y=[min(v for _, v in t.curve) for t in pruned],
                        mode="markers", name="pruned (best reported)", hovertext=[hover(t) for t in pruned],
                        hoverinfo="text", marker=dict(color=STATE_COLOURS["PRUNED"], symbol="x", size=8))
    a = d.anchor
    if a is not None and a.val_loss is not None:
        y = a.value if a.value is not None else a.val_loss
        fig.add_scatter(x=[a.number], y=[y], mode="markers+text", name=f"anchor {d.anchor_name}".strip(),
                        text=[f"anchor {d.anchor_name.upper()}".strip()], textposition="top center",
                        hovertext=[hover(a)], hoverinfo="text",
                        marker=dict(color=ANCHOR_COLOUR, symbol="star", size=18, line=dict(color="#333", width=1)))
        fig.add_hline(y=y, line=dict(color=ANCHOR_COLOUR, dash="dot", width=1))
    fig.update_layout(xaxis_title="trial", yaxis_title=d.target, **LAYOUT)
    return fig, ("Each completed trial's objective; the line is the best so far. Pruned trials show the best "
                 "validation loss they reported before being stopped. The star and the dotted line mark the anchor.")


def best_so_far(d: ReportData, done: list[TrialInfo]) -> list[float]:
    pick = min if d.directions[d.metrics.index(d.target)] == "minimize" else max
    out: list[float] = []
    for t in done:
        out.append(t.value if not out else pick(out[-1], t.value))
    return out


def importances(d: ReportData):
    if not d.importances:
        return None, d.importance_note
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color=STATE_COLOURS["COMPLETE"], text=[f"{v:.2f}" for _, v in items],
                           textposition="outside"))
    fig.update_layout(xaxis_title=f"importance for {d.target} (PED-ANOVA)",
                      **{**LAYOUT, "height": max(300, 40 * len(items) + 120)})
    return fig, d.importance_note


def axis(dim: Dimension, values: list) -> tuple[list[float], list[float] | None, list[str] | None, str]:
    """Numeric positions for one parameter: categoricals by index, log parameters as log10."""
    if dim.kind == "categorical":
        index = {c: i for i, c in enumerate(dim.choices)}
        return ([float(index.get(v, math.nan)) for v in values], list(range(len(dim.choices))),
                [str(c) for c in dim.choices], dim.name)
    if dim.log:
        pos = [math.log10(v) if v and v > 0 else math.nan for v in values]
        finite = [p for p in pos if math.isfinite(p)]
        lo, hi = (math.floor(min(finite)), math.ceil(max(finite))) if finite else (0, 1)
        ticks = list(range(lo, hi + 1))
        return pos, ticks, [f"1e{k}" for k in ticks], f"{dim.name} (log)"
    pos = [float(v) if v is not None else math.nan for v in values]
    if dim.kind == "int" and dim.low is not None and dim.high - dim.low <= 10:
        ticks = list(range(int(dim.low), int(dim.high) + 1))
        return pos, ticks, [str(k) for k in ticks], dim.name
    return pos, None, None, dim.name


def parallel(d: ReportData):
    done = [t for t in d.ranked if all(dim.name in t.params for dim in d.dimensions)]
    if len(done) < 2 or not d.dimensions:
        return None, "The parallel-coordinates plot needs at least 2 completed trials."
    dims = []
    for dim in d.dimensions:
        pos, tickvals, ticktext, label = axis(dim, [t.params[dim.name] for t in done])
        entry = dict(label=label, values=pos)
        if tickvals is not None:
            entry.update(tickvals=tickvals, ticktext=ticktext, range=[min(tickvals), max(tickvals)])
        dims.append(entry)
    values = [t.value for t in done]
    dims.append(dict(label=d.target, values=values))
    fig = go.Figure(go.Parcoords(line=dict(color=values, colorscale="Viridis", showscale=True,
                                           colorbar=dict(title=d.target)), dimensions=dims))
    fig.update_layout(**{**LAYOUT, "margin": dict(l=70, r=40, t=70, b=40)})
    anchor = next((t for t in done if t.anchor), None)
    note = f"One line per completed trial, coloured by {d.target} (darker is lower)."
    if anchor:
        note += f" The anchor is trial {anchor.number} ({d.target} {anchor.value:.4f})."
    return fig, note


def intermediate(d: ReportData):
    curves = [t for t in d.trials if t.curve]
    if not curves:
        return None, "No trial has reported a validation loss yet."
    fig = go.Figure()
    shown = set()
    for t in sorted(curves, key=lambda t: t.anchor):  # the anchor drawn last, on top
        group = "anchor" if t.anchor else t.state
        colour = ANCHOR_COLOUR if t.anchor else STATE_COLOURS.get(t.state, "#777")
        name = f"anchor {d.anchor_name}".strip() if t.anchor else t.state.lower()
        fig.add_scatter(x=[e for e, _ in t.curve], y=[v for _, v in t.curve], mode="lines+markers",
                        name=name, legendgroup=group, showlegend=group not in shown, hovertext=hover(t),
                        hoverinfo="text+y", opacity=1.0 if t.anchor else 0.75,
                        line=dict(color=colour, width=4 if t.anchor else 1.5,
                                  dash="dot" if t.state == "PRUNED" else "solid"),
                        marker=dict(size=5, symbol=["circle"] * (len(t.curve) - 1)
                                    + ["x" if t.state == "PRUNED" else "circle"]))
        shown.add(group)
    fig.update_layout(xaxis_title="epoch", yaxis_title="validation loss", **LAYOUT)
    n_pruned = sum(t.state == "PRUNED" for t in curves)
    return fig, (f"Every trial's learning curve as reported to the pruner; {n_pruned} pruned trial(s) are the "
                 "dotted grey lines ending in a cross, where the pruner stopped them. The thick line is the anchor.")


def loss_vs_params(d: ReportData):
    pts = [t for t in d.trials if t.attr("params") and t.val_loss is not None and t.state in ("COMPLETE", "PRUNED")]
    if not pts:
        return None, "No trial has recorded its parameter count and validation loss yet."
    fig = go.Figure()
    for state, symbol in (("COMPLETE", "circle"), ("PRUNED", "x")):
        sel = [t for t in pts if t.state == state and not t.anchor]
        if sel:
            fig.add_scatter(x=[t.attr("params") for t in sel], y=[t.val_loss for t in sel], mode="markers",
                            name=state.lower() + (" (best reported)" if state == "PRUNED" else ""),
                            hovertext=[hover(t) for t in sel], hoverinfo="text",
                            marker=dict(color=STATE_COLOURS[state], symbol=symbol, size=9))
    front = sorted((t for t in pts if t.number in d.pareto), key=lambda t: t.attr("params"))
    if front:
        fig.add_scatter(x=[t.attr("params") for t in front], y=[t.val_loss for t in front], mode="lines+markers",
                        name="Pareto front", line=dict(color=FRONT_COLOUR, shape="hv"),
                        marker=dict(color=FRONT_COLOUR, symbol="diamond", size=11),
                        hovertext=[hover(t) for t in front], hoverinfo="text")
    a = d.anchor
    if a is not None and any(t.number == a.number for t in pts):
        fig.add_scatter(x=[a.attr("params")], y=[a.val_loss], mode="markers+text", name=f"anchor {d.anchor_name}".strip(),
                        text=[f"anchor {d.anchor_name.upper()}".strip()], textposition="top center",
                        hovertext=[hover(a)], hoverinfo="text",
                        marker=dict(color=ANCHOR_COLOUR, symbol="star", size=18, line=dict(color="#333", width=1)))
    fig.update_layout(xaxis_type="log", xaxis_title="parameters (measured)", yaxis_title="best validation loss",
                      **LAYOUT)
    note = "Smaller and lower is better: the trade-off the notes made by hand when V4 shrank the model."
    if d.multi:
        note += " The red step line is the Pareto front of the study's objectives (" + ", ".join(d.metrics) + ")."
    return fig, note
