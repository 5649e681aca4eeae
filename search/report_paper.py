"""`report --figures DIR`: the report's figures as PDF and PNG for a paper, drawn with matplotlib.

Matplotlib rather than kaleido: kaleido wants to download its own browser. Same data as the HTML
page (ReportData), same colours; no pyplot state, so it is safe inside a long-running process.
"""

from __future__ import annotations

import math
from pathlib import Path

from .report_data import ReportData
from .report_figures import ANCHOR_COLOUR, STATE_COLOURS, axis, best_so_far

__all__ = ["write_figures"]

FRONT_COLOUR = "#d62728"


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_figures(d: ReportData, folder: Path) -> list[Path]:
    """Write <name>.pdf and <name>.png for every figure that has data; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("history", _history), ("importances", _importances), ("parallel", _parallel),
                       ("intermediate", _intermediate), ("params", _params)):
        fig = draw(d)
        if fig is None:
            continue
        for ext in ("pdf", "png"):
            path = folder / f"{name}.{ext}"
            fig.savefig(path, dpi=200 if ext == "png" else None)
            written.append(path)
    return written


def _anchor_label(d: ReportData) -> str:
    return f"anchor {d.anchor_name.upper()}".strip()


def _history(d: ReportData):
    done = [t for t in d.trials if t.value is not None]
    pruned = [t for t in d.trials if t.state == "PRUNED" and t.curve]
    if not done and not pruned:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], color=STATE_COLOURS["COMPLETE"], s=25,
                   label="complete", zorder=3)
        ax.step([t.number for t in done], best_so_far(d, done), where="post", color="#444", lw=1.2,
                label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [min(v for _, v in t.curve) for t in pruned], marker="x",
                   color=STATE_COLOURS["PRUNED"], label="pruned (best reported)", zorder=2)
    a = d.anchor
    if a is not None and (a.value if a.value is not None else a.val_loss) is not None:
        y = a.value if a.value is not None else a.val_loss
        ax.scatter([a.number], [y], marker="*", s=260, color=ANCHOR_COLOUR, edgecolor="#333", zorder=4,
                   label=_anchor_label(d))
        ax.axhline(y, color=ANCHOR_COLOUR, ls=":", lw=1)
    ax.set_xlabel("trial")
    ax.set_ylabel(d.target)
    ax.legend(fontsize=8)
    return fig


def _importances(d: ReportData):
    if not d.importances:
        return None
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = _figure(height=max(2.5, 0.4 * len(items) + 1))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color=STATE_COLOURS["COMPLETE"])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {d.target} (PED-ANOVA)")
    return fig


def _parallel(d: ReportData):
    done = [t for t in d.ranked if all(dim.name in t.params for dim in d.dimensions)]
    if len(done) < 2 or not d.dimensions:
        return None
    from matplotlib import cm, colormaps, colors

    columns, labels, ticks = [], [], []
    for dim in d.dimensions:
        pos, tickvals, ticktext, label = axis(dim, [t.params[dim.name] for t in done])
        columns.append((pos, tickvals))
        labels.append(label)
        ticks.append((tickvals, ticktext))
    values = [t.value for t in done]
    columns.append((values, None))
    labels.append(d.target)
    ticks.append((None, None))
    scaled = []  # each axis mapped to [0, 1]; categorical/log tick positions mapped the same way
    for pos, tickvals in columns:
        finite = [p for p in pos if math.isfinite(p)] + list(tickvals or [])
        lo, hi = min(finite), max(finite)
        span = (hi - lo) or 1.0
        scaled.append(([(p - lo) / span for p in pos], lo, span))
    fig = _figure(width=max(6.4, 1.0 * len(columns)), height=4.2)
    ax = fig.add_subplot()
    norm = colors.Normalize(min(values), max(values))
    cmap = colormaps["viridis"]  # dark is low: better when minimising, as in the page
    xs = list(range(len(columns)))
    for k, t in enumerate(done):
        ys = [col[0][k] for col in scaled]
        style = dict(color=ANCHOR_COLOUR, lw=3, zorder=3) if t.anchor else dict(color=cmap(norm(values[k])), lw=1.2,
                                                                                 alpha=0.8)
        ax.plot(xs, ys, **style)
    for x, (tickvals, ticktext), (_, lo, span) in zip(xs, ticks, scaled, strict=True):
        ax.axvline(x, color="#999", lw=0.8)
        if tickvals is not None:
            for v, text in zip(tickvals, ticktext, strict=True):
                ax.text(x + 0.03, (v - lo) / span, text, fontsize=7, va="center")
        else:
            for frac in (0.0, 0.5, 1.0):
                ax.text(x + 0.03, frac, f"{lo + frac * span:.3g}", fontsize=7, va="center")
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.6)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=d.target)
    if d.anchor is not None:
        ax.plot([], [], color=ANCHOR_COLOUR, lw=3, label=_anchor_label(d))
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    return fig


def _intermediate(d: ReportData):
    curves = [t for t in d.trials if t.curve]
    if not curves:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    seen = set()
    for t in sorted(curves, key=lambda t: t.anchor):
        group = "anchor" if t.anchor else t.state
        colour = ANCHOR_COLOUR if t.anchor else STATE_COLOURS.get(t.state, "#777")
        label = (_anchor_label(d) if t.anchor else t.state.lower()) if group not in seen else None
        seen.add(group)
        ax.plot([e for e, _ in t.curve], [v for _, v in t.curve], color=colour, lw=3 if t.anchor else 1.1,
                ls=":" if t.state == "PRUNED" else "-", label=label, zorder=3 if t.anchor else 2)
        if t.state == "PRUNED":
            ax.scatter([t.curve[-1][0]], [t.curve[-1][1]], marker="x", color=colour, s=25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    return fig


def _params(d: ReportData):
    pts = [t for t in d.trials if t.attr("params") and t.val_loss is not None and t.state in ("COMPLETE", "PRUNED")]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        sel = [t for t in pts if t.state == state and not t.anchor]
        if sel:
            ax.scatter([t.attr("params") for t in sel], [t.val_loss for t in sel], marker=marker,
                       color=STATE_COLOURS[state], label=state.lower())
    front = sorted((t for t in pts if t.number in d.pareto), key=lambda t: t.attr("params"))
    if front:
        ax.step([t.attr("params") for t in front], [t.val_loss for t in front], where="post", color=FRONT_COLOUR,
                marker="D", label="Pareto front")
    a = d.anchor
    if a is not None and any(t.number == a.number for t in pts):
        ax.scatter([a.attr("params")], [a.val_loss], marker="*", s=260, color=ANCHOR_COLOUR, edgecolor="#333",
                   zorder=4, label=_anchor_label(d))
    ax.set_xscale("log")
    ax.set_xlabel("parameters (measured)")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=8)
    return fig
