"""`h2s-search report`: one self-contained HTML page (plotly.js inlined, opens offline), or the results
table as a LaTeX tabular, plus optional PDF/PNG figures for a paper.

The page shows the optimisation history with the anchor marked, parameter importances, parallel
coordinates, every trial's learning curve (pruned ones too), validation loss against parameter count
(the Pareto front for multi-objective studies), a table of the anchor, the best and the top 5 trials
beside the researcher's V1-V3 results from the notes, and each trial's diagnosis in words.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .report_data import NOTES_LABEL, ReportData, TableRow, TrialInfo, load_report_data

__all__ = ["FORMATS", "ReportOutput", "latex_table", "render_html", "table", "write_report"]

FORMATS = ("html", "latex")
FIGURE_TITLES = {"history": "Optimisation history", "importances": "Parameter importances",
                 "parallel": "Parallel coordinates", "intermediate": "Learning curves (intermediate values)",
                 "params": "Validation loss against parameter count"}


@dataclass
class ReportOutput:
    path: Path
    trials: int
    figures: list[str] = field(default_factory=list)        # figures drawn in the page
    missing: dict[str, str] = field(default_factory=dict)   # figure -> why it is not drawn
    files: list[Path] = field(default_factory=list)         # --figures exports


def write_report(study, out: Path, *, storage_desc: str = "", fmt: str = "html",
                 figures_dir: Path | None = None) -> ReportOutput:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    d = load_report_data(study, storage_desc)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    res = ReportOutput(out, len(d.trials))
    if fmt == "latex":
        out.write_text(latex_table(d), encoding="utf-8")
    else:
        from .report_figures import build_figures

        figs = build_figures(d)
        res.figures = [k for k, (f, _) in figs.items() if f is not None]
        res.missing = {k: note for k, (f, note) in figs.items() if f is None}
        out.write_text(render_html(d, figs), encoding="utf-8")
    if figures_dir is not None:
        from .report_paper import write_figures

        res.files = write_figures(d, Path(figures_dir))
    return res


# --------------------------------------------------------------------------- the results table
def _num(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _millions(n) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{int(n):,}"


def _param(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(d: ReportData) -> tuple[list[str], list[tuple[TableRow, list[str]]]]:
    """Headers and formatted cells, shared by the HTML page and the LaTeX export."""
    headers = ["role", "trial", *d.param_names, "parameters", "val loss", "gap", "BLEU", "verdict", "diagnosis"]
    rows = []
    for r in d.table_rows():
        if r.trial is not None:
            t = r.trial
            cells = [r.role, str(t.number), *(_param(t.params[p]) if p in t.params else "–" for p in d.param_names),
                     _millions(t.attr("params")), _num(t.val_loss, ".4f"), _num(t.attr("gap"), ".3f"),
                     _num(t.attr("bleu"), ".2f"), str(t.attr("verdict") or "–"), _diagnosis_text(t)]
        else:
            n = r.notes
            bleu = "N/A" if n["bleu"] is None else f"{n['bleu']:.1f} (notes: {n['bleu_notes']})"
            cells = [r.role, "–", *("–" for _ in d.param_names), _millions(n["n_params"]), f"{n['val_loss']:.2f}",
                     _num(n["gap"], ".2f"), bleu, "–", n["issue"]]
        rows.append((r, cells))
    return headers, rows


def _diagnosis_text(t: TrialInfo) -> str:
    if t.attr("diagnosis"):
        return str(t.attr("diagnosis"))
    if t.state == "FAIL":
        return f"failed: {t.attr('fail_reason') or 'no reason recorded'}"
    if t.state in ("RUNNING", "WAITING"):
        return t.state.lower()
    return "no diagnosis recorded"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--"}


def _tex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s)


def latex_table(d: ReportData) -> str:
    """The results table as a booktabs tabular; the notes' rows in their own block, marked as such."""
    headers, rows = table(d)
    n_params = len(d.param_names)
    spec = "ll" + "r" * (n_params + 4) + "l" + "p{5cm}"
    lines = [f"% h2s-search report: study {d.study} ({d.target}; BLEU on sacrebleu's 0-100 scale)",
             "% needs \\usepackage{booktabs}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(_tex(h) for h in headers) + " \\\\", "\\midrule"]
    notes_started = False
    for r, cells in rows:
        if r.notes is not None and not notes_started:
            notes_started = True
            lines += ["\\midrule", f"\\multicolumn{{{len(headers)}}}{{l}}{{\\emph{{{_tex(NOTES_LABEL.capitalize())} "
                      f"(real How2Sign, by hand)}}}} \\\\"]
            cells = [cells[0].split(" (")[0], *cells[1:]]
        elif r.notes is not None:
            cells = [cells[0].split(" (")[0], *cells[1:]]
        lines.append(" & ".join(_tex(c) for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the HTML page
CSS = """
body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;max-width:1440px;margin:2em auto;padding:0 1.5em}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555}.meta td{padding:0 1em 0 0}.note{color:#555;font-size:.92em;margin:.3em 0 1.2em}
.missing{background:#fff6e0;border:1px solid #f0d9a0;padding:.8em 1em;border-radius:4px}
table.results{border-collapse:collapse;font-size:.85em;width:100%}
.tablewrap{overflow-x:auto}
table.results th,table.results td{border-bottom:1px solid #e3e3e3;padding:.3em .45em;text-align:right;vertical-align:top}
table.results td{white-space:nowrap}table.results td.diag,table.results tr.notes td{white-space:normal}
table.results td.diag{min-width:15em}
table.results th{background:#f4f4f4}
table.results td.l,table.results th.l{text-align:left}
tr.anchor td{background:#fff3d6;font-weight:600}tr.best td{background:#e8f4ea}
tr.notes td{background:#f1f1f7;color:#555;font-style:italic}tr.notes-head td{background:#e4e4ef;font-weight:600;text-align:left}
ul.summary li{margin:.2em 0}code{background:#f4f4f4;padding:0 .2em}
.state{color:#777;font-size:.9em}li.anchor{background:#fff3d6}
"""


def _figure_html(name: str, fig, note: str) -> str:
    import plotly.io as pio

    head = f'<h2 id="{name}">{html.escape(FIGURE_TITLES[name])}</h2>'
    if fig is None:
        return f'{head}\n<p class="missing" id="missing-{name}">{html.escape(note)}</p>'
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{name}",
                      config={"displaylogo": False, "responsive": True})
    return f'{head}\n{div}\n<p class="note">{html.escape(note)}</p>'


def _table_html(d: ReportData) -> str:
    headers, rows = table(d)
    left, diag = {0, len(headers) - 1, len(headers) - 2}, len(headers) - 1
    th = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(h).replace("_", "_<wbr>")}</th>'
                 for i, h in enumerate(headers))
    body, notes_started = [], False
    for r, cells in rows:
        if r.notes is not None and not notes_started:
            notes_started = True
            body.append(f'<tr class="notes-head"><td colspan="{len(headers)}">The researcher\'s V1–V3 runs, '
                        f'{NOTES_LABEL}: real How2Sign, trained by hand (BLEU converted to the 0–100 scale)</td></tr>')
        if r.notes is not None:
            cls = "notes"
        else:
            roles = r.role.split(", ")
            cls = " ".join(c for c, on in (("anchor", r.trial.anchor), ("best", "best" in roles)) if on)
        tds = "".join(f'<td class="{"l diag" if i == diag else "l" if i in left else ""}">{html.escape(c)}</td>'
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return (f'<div class="tablewrap"><table class="results" id="results"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _diagnosis_html(d: ReportData) -> str:
    items = []
    for t in d.trials:
        text = _diagnosis_text(t)
        cls = ' class="anchor"' if t.anchor else ""
        items.append(f'<li{cls}><b>{html.escape(t.label)}</b>: {html.escape(text)} '
                     f'<span class="state">({t.state.lower()})</span></li>')
    overfit = [t for t in d.trials if t.attr("overfit_epoch") is not None]
    collapsed = [t for t in d.trials if t.attr("lr_collapsed")]
    read = [t for t in d.trials if t.attr("diagnosis")]
    head = (f"<p>Read from each trial's train and validation curves as the notes did by hand: {len(overfit)} of "
            f"{len(read)} diagnosed trial(s) overfit (validation loss stopped improving while train loss kept "
            f"falling); {len(collapsed)} had a collapsed learning rate. Stored as the user attributes "
            "<code>overfit_epoch</code>, <code>final_gap</code> (validation minus train loss at the last epoch), "
            "<code>lr_collapsed</code> and <code>diagnosis</code>.</p>")
    return head + '<ul class="diagnosis" id="diagnosis">' + "".join(items) + "</ul>"


def render_html(d: ReportData, figs: dict) -> str:
    from plotly.offline import get_plotlyjs

    from how2sign import __version__

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    states = ", ".join(f"{n} {k.lower()}" for k, n in d.states.items()) or "no trials"
    meta = [("storage", d.storage), ("objectives", ", ".join(f"{m} ({x})" for m, x in zip(d.metrics, d.directions,
                                                                                       strict=True))),
            ("trials", f"{states} (budget {d.budget})"), ("data", d.data),
            ("data fingerprint", d.fingerprint[:16]), ("generated", f"{now} by h2s-search {__version__}")]
    meta_html = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in meta if v)
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in d.summary_lines)
    figures = "\n".join(_figure_html(name, fig, note) for name, (fig, note) in figs.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>h2s-search report: {html.escape(d.study)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>Study <code>{html.escape(d.study)}</code></h1>
<p>{html.escape(d.description)}</p>
<table class="meta">{meta_html}</table>
<h2 id="summary">Summary</h2>
<ul class="summary">{summary}</ul>
<h2 id="table">Anchor, best and top {min(5, len(d.ranked))} trials</h2>
{_table_html(d)}
<p class="note">Parameters are measured (the notes' "~2M" for V4 is not what its shape has). Gap is validation
minus train loss at the best epoch; BLEU is sacrebleu's 0–100 scale. The shaded rows at the bottom are
{NOTES_LABEL}: they were measured on the real How2Sign data and cannot be compared number for number with a
study on another corpus.</p>
{figures}
<h2 id="diagnosis-section">Diagnosis per trial</h2>
{_diagnosis_html(d)}
</body></html>
"""
