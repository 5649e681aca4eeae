"""`write_report`: the HTML page (plotly.js inlined, opens offline) or the LaTeX table, plus the paper's
figures on request. The page's sections are described in the package docstring."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

from ..confirmation import Confirmation, build_confirmation
from ..confirmation_view import CELLS, expected_sentence, params_text
from ..confirmation_view import table as confirmation_table
from ..errors import UserError
from ..stats import ALPHA
from .arms import CONTROL_ARM, ENCODER_PARAM, ArmsComparison, encoder_arms
from .confirm import CONFIRM_FIGURES, confirmation_latex, confirmation_model
from .data import FIELD, NOTES_LABEL, ReportData, load_report_data
from .model import FIGURE_TITLES
from .tables import arms_table, diagnosis_text, latex_table, table

__all__ = ["FORMATS", "ReportOutput", "render_html", "write_report"]

FORMATS = ("html", "latex")


@dataclass
class ReportOutput:
    path: Path
    trials: int
    figures: list[str] = field(default_factory=list)        # figures drawn in the page
    missing: dict[str, str] = field(default_factory=dict)   # figure -> why it is not drawn
    files: list[Path] = field(default_factory=list)         # --figures exports


def write_report(study, out: Path, *, storage_desc: str = "", fmt: str = "html", figures_dir: Path | None = None,
                 confirmation=None, artifacts: Path | str | None = None) -> ReportOutput:
    """confirmation: the study's `<study>.confirm` (an optuna.Study), when `confirm` has created it; the page
    and the LaTeX file then gain its section, and --figures its two figures. artifacts: the artifact store
    its runs uploaded to (search.confirmation.build_confirmation)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    d = load_report_data(study, storage_desc)
    c = build_confirmation(study, confirmation, artifacts=artifacts) if confirmation is not None else None
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    res = ReportOutput(out, len(d.trials))
    if fmt == "latex":
        out.write_text(latex_table(d) + (f"\n{confirmation_latex(c)}" if c else ""), encoding="utf-8")
    else:
        from .plotly_figures import build_figures, to_plotly

        figs = build_figures(d)
        confirm_figs = {k: (to_plotly(f) if f else None, note) for k, (f, note) in confirmation_model(c).items()} \
            if c else {}
        shown = {**figs, **confirm_figs}
        res.figures = [k for k, (f, _) in shown.items() if f is not None]
        res.missing = {k: note for k, (f, note) in shown.items() if f is None}
        out.write_text(render_html(d, figs, c, confirm_figs), encoding="utf-8")
    if figures_dir is not None:
        from .paper import write_figures

        res.files = write_figures(d, Path(figures_dir), c)
    return res


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


def _figure_html(name: str, fig, note: str, level: int = 2) -> str:
    import plotly.io as pio

    title = FIGURE_TITLES.get(name) or CONFIRM_FIGURES[name]
    head = f'<h{level} id="{name}">{html.escape(title)}</h{level}>'
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
        text = diagnosis_text(t)
        cls = ' class="anchor"' if t.anchor else ""
        items.append(f'<li{cls}><b>{html.escape(t.label)}</b>: {html.escape(text)} '
                     f'<span class="state">({t.state.lower()})</span></li>')
    overfit = [t for t in d.trials if t.record.overfit_epoch is not None]
    collapsed = [t for t in d.trials if t.record.lr_collapsed]
    read = [t for t in d.trials if t.record.diagnosis]
    head = (f"<p>Read from each trial's train and validation curves as the notes did by hand: {len(overfit)} of "
            f"{len(read)} diagnosed trial(s) overfit (validation loss stopped improving while train loss kept "
            f"falling); {len(collapsed)} had a collapsed learning rate. Stored as the user attributes "
            f"<code>{FIELD.overfit_epoch}</code>, <code>{FIELD.final_gap}</code> (validation minus train loss at "
            f"the last epoch), <code>{FIELD.lr_collapsed}</code> and <code>{FIELD.diagnosis}</code>.</p>")
    return head + '<ul class="diagnosis" id="diagnosis">' + "".join(items) + "</ul>"


def _arms_html(c: ArmsComparison | None) -> str:
    """The encoder arms section; empty when the study does not search an `encoder` parameter."""
    if c is None:
        return ""
    headers, rows = arms_table(c)
    th = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        f'<tr class="{"arm control" if r.control else "arm"}">'
        + "".join(f'<td class="{"l" if i == 0 else ""}">{html.escape(x)}</td>' for i, x in enumerate(cells))
        + "</tr>" for r, cells in zip(c.rows, rows, strict=True))
    budget = f"{c.epochs} epochs" if c.epochs else "the study's epoch budget"
    return (f'<h2 id="encoder-arms">Encoder arms at an equal epoch budget</h2>\n'
            f'<div class="tablewrap"><table class="results" id="arms"><thead><tr>{th}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>\n'
            f'<p class="note">One row per value of the <code>{ENCODER_PARAM}</code> parameter. Val loss and BLEU '
            f'are over the complete trials, which all had the same budget ({html.escape(budget)}); seconds per '
            f'trial over the complete trials, seconds per epoch over every trial that recorded its time. '
            f'<code>{CONTROL_ARM}</code> is the control: a frozen encoder that was never trained. '
            f'{html.escape(c.verdict)}</p>')


def _confirmation_table_html(c: Confirmation) -> str:
    headers, rows = confirmation_table(c)
    left = (0, len(headers) - 1)
    th = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        f'<tr class="{"anchor" if r.anchor else ""}">'
        + "".join(f'<td class="{"l" if i in left else ""}">{html.escape(x)}</td>' for i, x in enumerate(cells))
        + f'<td class="l diag">{html.escape(params_text(r.params))}</td></tr>'
        for r, cells in zip(c.rows, rows, strict=True))
    return (f'<div class="tablewrap"><table class="results" id="confirmation-table"><thead><tr>{th}'
            f'<th class="l">params</th></tr></thead><tbody>{body}</tbody></table></div>')


def _confirmation_html(c: Confirmation | None, figs: dict) -> str:
    """The Confirmation section: progress, the table, one sentence per config, the two figures; empty
    without a confirmation study."""
    if c is None:
        return ""
    ref = html.escape(c.anchor_label)
    sentences = "".join(f'<li class="{"anchor" if r.anchor else ""}">{html.escape(r.sentence)}</li>' for r in c.rows)
    paired = next((p for r in c.rows for p in r.paired.values()), None)
    seed = f", resampling seed {paired.seed}" if paired is not None else ""
    figures = "\n".join(_figure_html(name, fig, note, level=3) for name, (fig, note) in figs.items())
    return (f'<h2 id="confirmation">Confirmation</h2>\n<p id="confirmation-progress">'
            f'{html.escape(c.progress.line(c.study))}; seeds {html.escape(", ".join(map(str, c.plan.seeds)))}. '
            "Each run re-trains a config at the study's full budget with early stopping and no pruning, and is "
            f"scored on the validation and the test split.</p>\n{_confirmation_table_html(c)}\n"
            f"<p class=\"note\">Each metric: {html.escape(CELLS)}. Δ is the difference of "
            f"the means against {ref} with its 95 % interval; p (seeds) is Welch's t-test over seeds, p (paired) "
            f"sacrebleu's paired bootstrap ({c.n_samples} resamples{html.escape(seed)}) of the median-seed runs on "
            f"the test sentences. A config beats (or is worse than) {ref} when both p are below {ALPHA:g} with the "
            f"same sign; one of them alone is inconclusive. No correction is made for comparing "
            f"{len(c.rows) - 1} configs with {ref}.</p>\n"
            f'<ul class="summary" id="confirmation-sentences">{sentences}</ul>\n{figures}\n'
            f'<p class="note" id="expected-best-sentence">{html.escape(expected_sentence(c))}.</p>')


def render_html(d: ReportData, figs: dict, confirmation: Confirmation | None = None,
                confirm_figs: dict | None = None) -> str:
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
study on another corpus. Seconds are where each trial's time went (a dash: not recorded, as in studies
run before the split was).</p>
{_confirmation_html(confirmation, confirm_figs or {})}
{_arms_html(encoder_arms(d))}
{figures}
<h2 id="diagnosis-section">Diagnosis per trial</h2>
{_diagnosis_html(d)}
</body></html>
"""
