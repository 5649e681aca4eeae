"""The figure model drawn with plotly, for the HTML page."""

from __future__ import annotations

import plotly.graph_objects as go

from .data import ReportData
from .model import Figure, Parallel, Series, build_model

__all__ = ["build_figures", "to_plotly"]

# No plotly titles: each figure sits under its own heading in the page.
LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=30, b=50))
SYMBOLS = {"circle": "circle", "x": "x", "star": "star", "diamond": "diamond"}


def build_figures(d: ReportData) -> dict[str, tuple[go.Figure | None, str]]:
    """name -> (plotly figure or None, a note shown under it, or instead of it)."""
    return {name: (to_plotly(fig) if fig is not None else None, note) for name, (fig, note) in build_model(d).items()}


def to_plotly(fig: Figure) -> go.Figure:
    out = go.Figure()
    if fig.parallel is not None:
        out.add_trace(_parcoords(fig.parallel))
        out.update_layout(**{**LAYOUT, "margin": dict(l=70, r=40, t=70, b=40)})
        return out
    for s in fig.series:
        out.add_trace(_bar(s) if s.kind in ("bar", "barh") else _scatter(s))
    for h in fig.hlines:
        out.add_hline(y=h.y, line=dict(color=h.colour, dash="dot" if h.dash else "solid", width=1))
    layout = {**LAYOUT, "height": fig.height}
    if fig.x.title:
        layout["xaxis_title"] = fig.x.title
    if fig.y.title:
        layout["yaxis_title"] = fig.y.title
    if fig.x.log:
        layout["xaxis_type"] = "log"
    if fig.y.log:
        layout["yaxis_type"] = "log"
    for name, ax in (("xaxis", fig.x), ("yaxis", fig.y)):
        if ax.ticks is not None:
            layout[name] = dict(tickvals=list(ax.ticks[0]), ticktext=list(ax.ticks[1]))
    if fig.stacked:
        layout["barmode"] = "stack"
    out.update_layout(showlegend=fig.legend, **layout)
    return out


def _scatter(s: Series) -> go.Scatter:
    kw: dict = {"x": s.x, "y": s.y, "name": s.name}
    if s.kind == "markers":
        kw["mode"] = "markers+text" if s.text else "markers"
    else:
        kw["mode"] = "lines+markers" if s.marker else "lines"
        kw["line"] = dict(color=s.colour, width=s.width, dash="dot" if s.dash else "solid",
                          shape="hv" if s.kind == "step" else "linear")
    if s.marker:
        symbols = [SYMBOLS[s.marker]] * len(s.x)
        if s.end_marker:
            symbols[-1] = SYMBOLS[s.end_marker]
        kw["marker"] = dict(color=s.colour, size=s.size, symbol=symbols if s.end_marker else SYMBOLS[s.marker])
        if s.outline:
            kw["marker"]["line"] = dict(color="#333", width=1)
    if s.text:
        kw.update(text=s.text, textposition="top center")
    if s.hover:
        kw.update(hovertext=s.hover, hoverinfo="text+y" if s.kind == "lines" else "text")
    if s.group:
        kw.update(legendgroup=s.group, showlegend=s.legend)
    if s.opacity != 1.0:
        kw["opacity"] = s.opacity
    return go.Scatter(**kw)


def _bar(s: Series) -> go.Bar:
    kw: dict = {"x": s.x, "y": s.y, "marker_color": s.colour}
    if s.kind == "barh":
        kw["orientation"] = "h"
    if s.name:
        kw["name"] = s.name
    if s.text:
        kw.update(text=s.text, textposition="outside")
    if s.hover:
        kw.update(hovertext=s.hover, hoverinfo="text")
    return go.Bar(**kw)


def _parcoords(p: Parallel) -> go.Parcoords:
    dims = []
    for a in p.axes:
        entry = dict(label=a.label, values=a.values)
        if a.tickvals is not None:
            entry.update(tickvals=a.tickvals, ticktext=a.ticktext, range=[min(a.tickvals), max(a.tickvals)])
        dims.append(entry)
    return go.Parcoords(line=dict(color=p.colour_values, colorscale=p.colourscale.capitalize(), showscale=True,
                                  colorbar=dict(title=p.colour_title)), dimensions=dims)
