"""`report --figures DIR`: the figure model drawn with matplotlib, as PDF and PNG for a paper.

Matplotlib rather than kaleido: kaleido wants to download its own browser. Same model as the HTML page,
so the same trials, labels and colours; no pyplot state, so it is safe inside a long-running process.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..confirmation import Confirmation
from .confirm import confirmation_model
from .data import ReportData
from .model import Figure, Parallel, Series, build_model

__all__ = ["to_matplotlib", "write_figures"]

MARKERS = {"circle": "o", "x": "x", "star": "*", "diamond": "D"}
# Marker sizes in the model are plotly pixels; matplotlib's star glyph is smaller for the same size.
MARKER_SCALE = {"circle": 0.6, "x": 0.75, "star": 0.9, "diamond": 0.6}
LINE_SCALE = 0.75


def write_figures(d: ReportData, folder: Path, confirmation: Confirmation | None = None) -> list[Path]:
    """Write <name>.pdf and <name>.png for every figure that has data, the confirmation's two as well;
    returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    models = {**build_model(d), **(confirmation_model(confirmation) if confirmation is not None else {})}
    for name, (model, _) in models.items():
        if model is None:
            continue
        fig = to_matplotlib(model)
        for ext in ("pdf", "png"):
            path = folder / f"{name}.{ext}"
            fig.savefig(path, dpi=200 if ext == "png" else None)
            written.append(path)
    return written


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_matplotlib(model: Figure):
    fig = _canvas(*model.paper_size)
    ax = fig.add_subplot()
    if model.parallel is not None:
        _parallel(fig, ax, model.parallel)
        return fig
    bottoms: dict = {}
    for s in model.series:
        _draw(ax, s, bottoms)
    for h in model.hlines:
        ax.axhline(h.y, color=h.colour, ls=":" if h.dash else "-", lw=1)
    if model.x.log:
        ax.set_xscale("log")
    if model.y.log:
        ax.set_yscale("log")
    if model.x.title:
        ax.set_xlabel(model.x.title)
    if model.y.title:
        ax.set_ylabel(model.y.title)
    if model.x.ticks is not None:
        ax.set_xticks(list(model.x.ticks[0]), list(model.x.ticks[1]))
    if model.y.ticks is not None:
        ax.set_yticks(list(model.y.ticks[0]), list(model.y.ticks[1]))
    if any(s.kind == "bar" and len(s.x) > 10 for s in model.series):  # many trials: labels on their side
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    if model.legend:
        ax.legend(fontsize=8)
    return fig


def _area(s: Series, marker: str) -> float:
    return (s.size * MARKER_SCALE[marker]) ** 2


def _draw(ax, s: Series, bottoms: dict) -> None:
    label = s.name if s.legend and s.name else None
    z = 4 if s.top else 2
    if s.kind == "markers":
        ax.scatter(s.x, s.y, marker=MARKERS[s.marker], s=_area(s, s.marker), color=s.colour, label=label, zorder=z,
                   edgecolor="#333" if s.outline else None)
        for x, y, text in zip(s.x, s.y, s.text or [], strict=False):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    elif s.kind in ("lines", "step"):
        kw = dict(color=s.colour, lw=s.width * LINE_SCALE, ls=":" if s.dash else "-", label=label, zorder=z,
                  alpha=s.opacity)
        if s.marker and s.kind == "step":
            kw.update(marker=MARKERS[s.marker], ms=s.size * MARKER_SCALE[s.marker])
        if s.kind == "step":
            ax.step(s.x, s.y, where="post", **kw)
        else:
            ax.plot(s.x, s.y, **kw)
        if s.end_marker:
            ax.scatter(s.x[-1:], s.y[-1:], marker=MARKERS[s.end_marker], color=s.colour, s=25, zorder=z)
    elif s.kind == "barh":
        ax.barh(s.y, s.x, color=s.colour, label=label)
        for i, (v, text) in enumerate(zip(s.x, s.text or [], strict=False)):
            ax.text(v, i, f" {text}", va="center", fontsize=8)
    else:
        base = [bottoms.get(x, 0.0) for x in s.x]
        ax.bar(s.x, s.y, bottom=base, color=s.colour, label=label)
        for x, b, y in zip(s.x, base, s.y, strict=True):
            bottoms[x] = b + y


def _parallel(fig, ax, p: Parallel) -> None:
    """Each axis scaled to [0, 1]; categorical and log tick positions scaled the same way."""
    from matplotlib import cm, colormaps, colors

    scaled = []
    for a in p.axes:
        finite = [v for v in a.values if math.isfinite(v)] + list(a.tickvals or [])
        lo, hi = min(finite), max(finite)
        span = (hi - lo) or 1.0
        scaled.append(([(v - lo) / span for v in a.values], lo, span))
    norm = colors.Normalize(min(p.colour_values), max(p.colour_values))
    cmap = colormaps[p.colourscale]
    xs = list(range(len(p.axes)))
    for k, value in enumerate(p.colour_values):
        ys = [col[0][k] for col in scaled]
        if k in p.highlight:
            ax.plot(xs, ys, color=p.highlight_colour, lw=3, zorder=3)
        else:
            ax.plot(xs, ys, color=cmap(norm(value)), lw=1.2, alpha=0.8)
    for x, a, (_, lo, span) in zip(xs, p.axes, scaled, strict=True):
        ax.axvline(x, color="#999", lw=0.8)
        ticks = zip(a.tickvals, a.ticktext, strict=True) if a.tickvals is not None else (
            (lo + frac * span, f"{lo + frac * span:.3g}") for frac in (0.0, 0.5, 1.0))
        for v, text in ticks:
            ax.text(x + 0.03, (v - lo) / span, text, fontsize=7, va="center")
    ax.set_xticks(xs, [a.label for a in p.axes], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(p.axes) - 0.6)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=p.colour_title)
    if p.highlight_label:
        ax.plot([], [], color=p.highlight_colour, lw=3, label=p.highlight_label)
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
