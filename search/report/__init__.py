"""`h2s-search report`: one self-contained HTML page (plotly.js inlined, opens offline), or the results
table as a LaTeX tabular, plus optional PDF/PNG figures for a paper.

The page shows the optimisation history with the anchor marked, parameter importances, parallel
coordinates, every trial's learning curve (pruned ones too), validation loss against parameter count
(the Pareto front for multi-objective studies), where each trial's time went, a table of the anchor, the best
and the top 5 trials beside the researcher's V1-V3 results from the notes, the encoder arms when the study
searches an `encoder` parameter, each trial's diagnosis in words, and, when `confirm` has created
`<study>.confirm`, the Confirmation section (`confirm.py`: its table, each config's seeds on test BLEU and
the expected-best curve, from one `search.confirmation.Confirmation`).

Layers (docs/architecture.md): `data` reads the study once into ReportData; `model` turns it into plain
figure data (Figure, Series, ...); `plotly_figures` and `paper` draw that model for the page and the paper;
`tables` formats the tables; `page` writes the HTML.
"""

from .arms import CONTROL_ARM, ENCODER_PARAM, ArmRow, ArmsComparison, encoder_arms
from .confirm import CONFIRM_FIGURES, confirmation_latex, confirmation_model
from .data import (
    FIELD,
    NOTES_LABEL,
    NOTES_ROWS,
    Dimension,
    NotesRow,
    ReportData,
    TableRow,
    TrialInfo,
    load_report_data,
    read_val_curve,
)
from .model import (
    ANCHOR_COLOUR,
    FIGURE_TITLES,
    PALETTE,
    STATE_COLOURS,
    Axis,
    Figure,
    HLine,
    Parallel,
    ParallelAxis,
    Series,
    build_model,
)
from .page import FORMATS, ReportOutput, render_html, write_report
from .tables import arms_table, latex_table, table

__all__ = ["ANCHOR_COLOUR", "CONFIRM_FIGURES", "CONTROL_ARM", "ENCODER_PARAM", "FIELD", "FIGURE_TITLES", "FORMATS", "NOTES_LABEL",
           "NOTES_ROWS", "PALETTE", "STATE_COLOURS", "ArmRow", "ArmsComparison", "Axis", "Dimension", "Figure", "HLine",
           "NotesRow", "Parallel", "ParallelAxis", "ReportData", "ReportOutput", "Series", "TableRow", "TrialInfo",
           "arms_table", "build_figures", "build_model", "confirmation_latex", "confirmation_model", "encoder_arms", "latex_table", "load_report_data",
           "read_val_curve", "render_html", "table", "to_matplotlib", "to_plotly", "write_figures", "write_report"]


def __getattr__(name: str):
    """The renderers import plotly and matplotlib, which `report --format latex` does not need."""
    if name in ("build_figures", "to_plotly"):
        from . import plotly_figures

        return getattr(plotly_figures, name)
    if name in ("to_matplotlib", "write_figures"):
        from . import paper

        return getattr(paper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
