"""The report's tables as text cells, shared by the HTML page and the LaTeX export: the results table
(anchor, best, top 5, the notes' V1-V3) and the encoder arms."""

from __future__ import annotations

from .arms import ArmsComparison
from .data import NOTES_LABEL, TIME_SPLIT, ReportData, TableRow, TrialInfo

__all__ = ["MISSING", "arms_table", "diagnosis_text", "latex_table", "table"]

MISSING = "–"   # a value the trial did not record (LaTeX: --)


def _num(v, spec: str) -> str:
    return MISSING if v is None else format(v, spec)


def _millions(n) -> str:
    return MISSING if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{int(n):,}"


def _param(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _seconds(v) -> str:
    return MISSING if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def table(d: ReportData) -> tuple[list[str], list[tuple[TableRow, list[str]]]]:
    """Headers and formatted cells. The time split shows the dash for trials that did not record it."""
    headers = ["role", "trial", *d.param_names, "parameters", "val loss", "gap", "BLEU",
               *(f"{part} s" for part in TIME_SPLIT), "verdict", "diagnosis"]
    rows = []
    for r in d.table_rows():
        if r.trial is not None:
            t, rec = r.trial, r.trial.record
            cells = [r.role, str(t.number), *(_param(t.params[p]) if p in t.params else MISSING for p in d.param_names),
                     _millions(rec.n_params), _num(t.val_loss, ".4f"), _num(rec.gap, ".3f"), _num(rec.bleu, ".2f"),
                     *(_seconds(v) for v in t.time_split.values()), str(rec.verdict or MISSING), diagnosis_text(t)]
        else:
            n = r.notes
            bleu = "N/A" if n.bleu is None else f"{n.bleu:.1f} (notes: {n.bleu_notes})"
            cells = [r.role, MISSING, *(MISSING for _ in d.param_names), _millions(n.n_params), f"{n.val_loss:.2f}",
                     _num(n.gap, ".2f"), bleu, *(MISSING for _ in TIME_SPLIT), MISSING, n.issue]
        rows.append((r, cells))
    return headers, rows


def diagnosis_text(t: TrialInfo) -> str:
    if t.record.diagnosis:
        return str(t.record.diagnosis)
    if t.state == "FAIL":
        return f"failed: {t.record.fail_reason or 'no reason recorded'}"
    if t.state in ("RUNNING", "WAITING"):
        return t.state.lower()
    return "no diagnosis recorded"


def arms_table(c: ArmsComparison) -> tuple[list[str], list[list[str]]]:
    headers = ["arm", "trials", "complete", "best val loss", "mean val loss", "median val loss", "best BLEU",
               "mean BLEU", "seconds per trial", "seconds per epoch"]
    rows = [[r.label, str(r.trials), str(r.complete), _num(r.best_val_loss, ".4f"), _num(r.mean_val_loss, ".4f"),
             _num(r.median_val_loss, ".4f"), _num(r.best_bleu, ".2f"), _num(r.mean_bleu, ".2f"),
             _seconds(r.seconds_per_trial), _seconds(r.seconds_per_epoch)] for r in c.rows]
    return headers, rows


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", MISSING: "--"}


def _tex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s)


def latex_table(d: ReportData) -> str:
    """The results table as a booktabs tabular; the notes' rows in their own block, marked as such."""
    headers, rows = table(d)
    spec = "ll" + "r" * (len(d.param_names) + 4 + len(TIME_SPLIT)) + "l" + "p{5cm}"
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
        if r.notes is not None:
            cells = [cells[0].split(" (")[0], *cells[1:]]
        lines.append(" & ".join(_tex(c) for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)
