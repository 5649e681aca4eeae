"""The report's figures as plain data, built once from ReportData: which trials each figure shows, its
series, axes, labels, markers and colours. Two renderers draw the same model: plotly for the HTML page
(plotly_figures.py) and matplotlib for the paper's PDF/PNG (paper.py); see docs/architecture.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .data import TIME_SPLIT, Dimension, ReportData, TrialInfo

__all__ = ["ANCHOR_COLOUR", "FIGURE_TITLES", "FRONT_COLOUR", "PALETTE", "STATE_COLOURS", "TIME_COLOURS", "Axis",
           "Figure", "HLine", "Parallel", "ParallelAxis", "Series", "axis", "best_so_far", "build_model", "hover"]

# The one palette of the report, for both renderers.
STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#9e9e9e", "FAIL": "#d62728", "RUNNING": "#2ca02c",
                 "WAITING": "#bcbd22"}
ANCHOR_COLOUR = "#e69500"
FRONT_COLOUR = "#d62728"
LINE_COLOUR = "#444"
OTHER_COLOUR = "#777"
TIME_COLOURS = {"train": "#1f77b4", "validate": "#ff7f0e", "evaluate": "#2ca02c", "other": "#9e9e9e"}
PALETTE = {**{s.lower(): c for s, c in STATE_COLOURS.items()}, "anchor": ANCHOR_COLOUR, "front": FRONT_COLOUR,
           "line": LINE_COLOUR, "other state": OTHER_COLOUR, **{f"time {k}": c for k, c in TIME_COLOURS.items()}}

FIGURE_TITLES = {"history": "Optimisation history", "importances": "Parameter importances",
                 "parallel": "Parallel coordinates", "intermediate": "Learning curves (intermediate values)",
                 "params": "Validation loss against parameter count", "time": "Where each trial's time went"}
MAX_TIME_BARS = 30


@dataclass(frozen=True)
class Axis:
    title: str = ""
    log: bool = False
    ticks: tuple[tuple[float, ...], tuple[str, ...]] | None = None  # (positions, labels): a labelled numeric axis


@dataclass
class Series:
    """One trace. kind: markers | lines | step | bar | barh. Sizes are in screen pixels (plotly's unit);
    the paper renderer scales them."""

    x: list
    y: list
    kind: str = "markers"
    name: str = ""
    colour: str = STATE_COLOURS["COMPLETE"]
    marker: str | None = "circle"    # circle | x | star | diamond; None: a line without markers
    size: float = 9
    width: float = 1.5               # line width
    dash: bool = False               # dotted line
    text: list[str] | None = None    # labels drawn at the points (bars: the value)
    hover: list[str] | str | None = None  # per point, or one text for the whole series
    group: str | None = None         # legend group: the legend shows a group once
    legend: bool = True
    opacity: float = 1.0
    end_marker: str | None = None    # the last point's marker, where it differs (a pruned curve ends in a cross)
    outline: bool = False            # a dark edge around the markers (the anchor's star)
    top: bool = False                # drawn above the others


@dataclass(frozen=True)
class HLine:
    y: float
    colour: str
    dash: bool = True


@dataclass(frozen=True)
class ParallelAxis:
    label: str
    values: list[float]
    tickvals: list[float] | None = None
    ticktext: list[str] | None = None


@dataclass
class Parallel:
    """Parallel coordinates: one line per trial across the axes, coloured by `colour_values`."""

    axes: list[ParallelAxis]
    colour_values: list[float]
    colour_title: str
    colourscale: str = "viridis"     # dark is low: better when minimising
    highlight: list[int] = field(default_factory=list)  # line indices drawn thick in highlight_colour
    highlight_colour: str = ANCHOR_COLOUR
    highlight_label: str = ""


@dataclass
class Figure:
    name: str
    title: str
    note: str
    x: Axis = field(default_factory=Axis)
    y: Axis = field(default_factory=Axis)
    series: list[Series] = field(default_factory=list)
    hlines: list[HLine] = field(default_factory=list)
    parallel: Parallel | None = None
    stacked: bool = False            # bars stacked
    height: int = 420                # page height, pixels
    paper_size: tuple[float, float] = (6.4, 4.0)  # inches
    legend: bool = True


def hover(t: TrialInfo) -> str:
    parts = [f"<b>{t.label}</b> ({t.state.lower()})"]
    parts += [f"{k} = {_short(v)}" for k, v in t.params.items()]
    r = t.record
    for name, v in (("val loss", r.val_loss), ("parameters", r.n_params), ("gap", r.gap), ("BLEU", r.bleu)):
        if v is not None:
            parts.append(f"{name} = {_short(v)}")
    if r.diagnosis:
        parts.append(str(r.diagnosis))
    return "<br>".join(parts)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 100_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def build_model(d: ReportData) -> dict[str, tuple[Figure | None, str]]:
    """name -> (figure or None, a note shown under it, or instead of it). The time split is there only
    when some trial recorded it."""
    out = {"history": history(d), "importances": importances(d), "parallel": parallel(d),
           "intermediate": intermediate(d), "params": loss_vs_params(d)}
    if any(t.has_time_split for t in d.trials):
        out["time"] = time_split(d)
    return out


def _anchor_star(d: ReportData, x: float, y: float, t: TrialInfo) -> Series:
    return Series([x], [y], name=d.anchor_legend, colour=ANCHOR_COLOUR, marker="star", size=18,
                  text=[d.anchor_label], hover=[hover(t)], outline=True, top=True)


def history(d: ReportData):
    done = [t for t in d.trials if t.value is not None]
    pruned = [t for t in d.trials if t.state == "PRUNED" and t.curve]
    if not done and not pruned:
        return None, "No trial has finished yet."
    fig = Figure("history", FIGURE_TITLES["history"], (
        "Each completed trial's objective; the line is the best so far. Pruned trials show the best "
        "validation loss they reported before being stopped. The star and the dotted line mark the anchor."),
        x=Axis("trial"), y=Axis(d.target))
    if done:
        xs = [t.number for t in done]
        fig.series.append(Series(xs, [t.value for t in done], name="complete", hover=[hover(t) for t in done]))
        fig.series.append(Series(xs, best_so_far(d, done), kind="step", name="best so far", colour=LINE_COLOUR,
                                 marker=None, width=2))
    if pruned:
        fig.series.append(Series([t.number for t in pruned], [min(v for _, v in t.curve) for t in pruned],
                                 name="pruned (best reported)", colour=STATE_COLOURS["PRUNED"], marker="x", size=8,
                                 hover=[hover(t) for t in pruned]))
    a = d.anchor
    if a is not None and a.val_loss is not None:
        y = a.value if a.value is not None else a.val_loss
        fig.series.append(_anchor_star(d, a.number, y, a))
        fig.hlines.append(HLine(y, ANCHOR_COLOUR))
    return fig, fig.note


def best_so_far(d: ReportData, done: list[TrialInfo]) -> list[float]:
    pick = min if d.minimize else max
    out: list[float] = []
    for t in done:
        out.append(t.value if not out else pick(out[-1], t.value))
    return out


def importances(d: ReportData):
    if not d.importances:
        return None, d.importance_note
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    bars = Series([v for _, v in items], [k for k, _ in items], kind="barh", marker=None,
                  text=[f"{v:.2f}" for _, v in items])
    return Figure("importances", FIGURE_TITLES["importances"], d.importance_note,
                  x=Axis(f"importance for {d.target} (PED-ANOVA)"), series=[bars], legend=False,
                  height=max(300, 40 * len(items) + 120), paper_size=(6.4, max(2.5, 0.4 * len(items) + 1))), \
        d.importance_note


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
    axes = []
    for dim in d.dimensions:
        pos, tickvals, ticktext, label = axis(dim, [t.params[dim.name] for t in done])
        axes.append(ParallelAxis(label, pos, tickvals, ticktext))
    values = [t.value for t in done]
    axes.append(ParallelAxis(d.target, values))
    anchor = next((t for t in done if t.anchor), None)
    note = f"One line per completed trial, coloured by {d.target} (darker is lower)."
    if anchor:
        note += f" The anchor is trial {anchor.number} ({d.target} {anchor.value:.4f})."
    par = Parallel(axes, values, d.target, highlight=[k for k, t in enumerate(done) if t.anchor],
                   highlight_label=d.anchor_label if d.anchor is not None else "")
    return Figure("parallel", FIGURE_TITLES["parallel"], note, parallel=par,
                  paper_size=(max(6.4, 1.0 * len(axes)), 4.2)), note


def intermediate(d: ReportData):
    curves, left_out = _curves(d)
    if not curves:
        return None, "No trial has reported a validation loss yet."
    n_pruned = sum(t.state == "PRUNED" for t in curves)
    clips = curves[0].steps_in_clips
    note = (f"Every trial's learning curve as reported to the pruner; {n_pruned} pruned trial(s) are the dotted grey "
            "lines ending in a cross, where the pruner stopped them. The thick line is the anchor.")
    if clips:
        note += (" The steps are train clips seen (report_every): reports inside an epoch may validate on a fixed "
                 "subset of the val split, each epoch's end on all of it.")
    if left_out:
        note += f" {left_out} trial(s) that reported per epoch are not drawn."
    fig = Figure("intermediate", FIGURE_TITLES["intermediate"], note,
                 x=Axis("train clips seen" if clips else "epoch"), y=Axis("validation loss"))
    shown = set()
    for t in sorted(curves, key=lambda t: t.anchor):  # the anchor drawn last, on top
        group = "anchor" if t.anchor else t.state
        fig.series.append(Series(
            [e for e, _ in t.curve], [v for _, v in t.curve], kind="lines",
            name=d.anchor_legend if t.anchor else t.state.lower(), group=group, legend=group not in shown,
            colour=ANCHOR_COLOUR if t.anchor else STATE_COLOURS.get(t.state, OTHER_COLOUR), size=5,
            width=4 if t.anchor else 1.5, dash=t.state == "PRUNED", hover=hover(t),
            opacity=1.0 if t.anchor else 0.75, end_marker="x" if t.state == "PRUNED" else None, top=t.anchor))
        shown.add(group)
    return fig, fig.note


def _curves(d: ReportData) -> tuple[list[TrialInfo], int]:
    """The curves one x axis can hold, and how many were left out: where some trials' steps are train clips
    (report_every) and others' epochs (a study continued across the change), the clips ones."""
    curves = [t for t in d.trials if t.curve]
    clips = [t for t in curves if t.steps_in_clips]
    return (clips, len(curves) - len(clips)) if clips else (curves, 0)


def loss_vs_params(d: ReportData):
    pts = [t for t in d.trials if t.record.n_params and t.val_loss is not None and t.state in ("COMPLETE", "PRUNED")]
    if not pts:
        return None, "No trial has recorded its parameter count and validation loss yet."
    note = "Smaller and lower is better: the trade-off the notes made by hand when V4 shrank the model."
    if d.multi:
        note += " The red step line is the Pareto front of the study's objectives (" + ", ".join(d.metrics) + ")."
    fig = Figure("params", FIGURE_TITLES["params"], note, x=Axis("parameters (measured)", log=True),
                 y=Axis("best validation loss"))
    for state, symbol in (("COMPLETE", "circle"), ("PRUNED", "x")):
        sel = [t for t in pts if t.state == state and not t.anchor]
        if sel:
            fig.series.append(Series([t.record.n_params for t in sel], [t.val_loss for t in sel],
                                     name=state.lower() + (" (best reported)" if state == "PRUNED" else ""),
                                     colour=STATE_COLOURS[state], marker=symbol, hover=[hover(t) for t in sel]))
    front = sorted((t for t in pts if t.number in d.pareto), key=lambda t: t.record.n_params)
    if front:
        fig.series.append(Series([t.record.n_params for t in front], [t.val_loss for t in front], kind="step",
                                 name="Pareto front", colour=FRONT_COLOUR, marker="diamond", size=11, width=2,
                                 hover=[hover(t) for t in front]))
    a = d.anchor
    if a is not None and any(t.number == a.number for t in pts):
        fig.series.append(_anchor_star(d, a.record.n_params, a.val_loss, a))
    return fig, note


def time_split(d: ReportData):
    """Stacked seconds per trial: every trial that recorded the split, or the table's trials when too many."""
    shown = [t for t in d.trials if t.has_time_split]
    note = ("Seconds per trial spent training, validating, evaluating (BLEU and the other translation metrics) "
            "and on everything else (checkpoints, artifacts, storage).")
    if len(shown) > MAX_TIME_BARS:
        table = {r.trial.number for r in d.table_rows() if r.trial is not None}
        shown = [t for t in shown if t.number in table]
        note += f" Only the table's trials are shown; {sum(x.has_time_split for x in d.trials)} recorded it."
    labels = [f"#{t.number}" + (" (anchor)" if t.anchor else "") for t in shown]
    fig = Figure("time", FIGURE_TITLES["time"], note, x=Axis("trial"), y=Axis("seconds"), stacked=True,
                 paper_size=(max(6.4, 0.35 * len(shown) + 2), 4.0))
    for part in TIME_SPLIT:
        secs = [t.time_split[part] or 0.0 for t in shown]
        fig.series.append(Series(labels, secs, kind="bar", name=part, colour=TIME_COLOURS[part], marker=None,
                                 hover=[f"{t.label}: {part} {s:.1f} s" for t, s in zip(shown, secs, strict=True)]))
    return fig, note
