"""The report's Confirmation section from one `Confirmation` value (search/confirmation.py): its two figures
in the one figure model (each config's seeds on test BLEU; the expected best validation loss against the
number of trials), and the confirmation table as LaTeX with significance marks. The HTML is in page.py."""

from __future__ import annotations

from ..confirmation import HEADLINE, HEADLINE_METRIC, METRICS, PAIRED_OF, ConfigRow, Confirmation
from ..confirmation_view import expected_verdict
from ..stats import ALPHA
from .model import ANCHOR_COLOUR, FRONT_COLOUR, LINE_COLOUR, STATE_COLOURS, Axis, Figure, HLine, Series
from .tables import _tex

__all__ = ["CONFIRM_FIGURES", "LATEX_MARKS", "confirmation_latex", "confirmation_model"]

CONFIRM_FIGURES = {"confirm-seeds": "Each config's seeds on test BLEU",
                   "expected-best": "Expected best validation loss against the number of trials"}
JITTER = 0.06        # horizontal step between one config's seeds, in config widths
STRONG = 0.01        # two marks below this p
# The significance marks of the LaTeX table, explained in its comment and its footnote row.
LATEX_MARKS = (f"$^{{*}}$ / $^{{**}}$: Welch's t-test over seeds against the anchor, $p<{ALPHA:g}$ / $p<{STRONG:g}$; "
               f"$^{{\\dagger}}$: sacrebleu's paired bootstrap of the median-seed runs on the test sentences, "
               f"$p<{ALPHA:g}$. A mark says the difference is significant; the means give its sign.")


def confirmation_model(c: Confirmation) -> dict[str, tuple[Figure | None, str]]:
    """name -> (figure or None, the note under it, or instead of it)."""
    return {"confirm-seeds": seeds_figure(c), "expected-best": expected_figure(c)}


def seeds_figure(c: Confirmation):
    """A strip plot: one point per complete seed, a bar at each config's mean, the anchor's mean dotted."""
    m = HEADLINE_METRIC
    rows = [r for r in c.rows if r.summaries[HEADLINE].n]
    if not rows:
        return None, "No confirmation run is complete yet."
    fig = Figure("confirm-seeds", CONFIRM_FIGURES["confirm-seeds"], (
        f"One point per seed: the {m.label} of each complete confirmation run ({c.anchor_label} in orange); the "
        f"short bars are the means over seeds and the dotted line is {c.anchor_label}'s mean. Runs still going or "
        "failed are not shown."),
        x=Axis("config", ticks=(tuple(range(len(rows))), tuple(r.label for r in rows))), y=Axis(m.label),
        paper_size=(max(4.8, 1.3 * len(rows) + 2), 4.0), legend=False)
    for k, r in enumerate(rows):
        runs = [run for run in r.runs if run.record.get(HEADLINE) is not None]
        xs = [k + JITTER * (j - (len(runs) - 1) / 2) for j in range(len(runs))]
        fig.series.append(Series(xs, [run.record.get(HEADLINE) for run in runs], name=r.label,
                                 colour=ANCHOR_COLOUR if r.anchor else STATE_COLOURS["COMPLETE"], size=10,
                                 hover=[f"{r.label}, seed {run.seed} (trial {run.number}): {m.label} "
                                        f"{run.record.get(HEADLINE):{m.spec}}" for run in runs]))
        mean = r.summaries[HEADLINE].mean
        fig.series.append(Series([k - 3 * JITTER, k + 3 * JITTER], [mean, mean], kind="lines", marker=None,
                                 name=f"{r.label}: mean", colour=LINE_COLOUR, width=3,
                                 hover=f"{r.label}: {m.label} {r.summaries[HEADLINE].text(m.spec)} over seeds"))
    anchor = c.anchor
    if anchor is not None and anchor.summaries[HEADLINE].mean is not None:
        fig.hlines.append(HLine(anchor.summaries[HEADLINE].mean, ANCHOR_COLOUR))
    return fig, fig.note


def expected_figure(c: Confirmation):
    """Dodge et al.'s expected best of n search trials, n = 1..N, with the anchor's value as a line."""
    e = c.expected
    if not e.n:
        return None, "The search study has no complete trial other than the anchor yet."
    ns = list(range(1, e.n + 1))
    fig = Figure("expected-best", CONFIRM_FIGURES["expected-best"], (
        f"The expected best {e.metric} of n trials drawn at random from the search study's {e.n} complete trials "
        "(Dodge et al. 2019, the exact expectation of the best of n draws with replacement). The anchor is not a "
        "draw, it is the line; pruned trials have no final value and are not draws either, so where the pruner "
        f"stopped the worse trials the curve is optimistic. {_capital(expected_verdict(c))}."),
        x=Axis("number of trials n"), y=Axis(f"expected best {e.metric}"))
    fig.series.append(Series(ns, list(e.curve), kind="lines", name="expected best of n trials",
                             colour=STATE_COLOURS["COMPLETE"], marker=None, width=2,
                             hover=[f"n = {n}: {v:.4f}" for n, v in zip(ns, e.curve, strict=True)]))
    if e.anchor is not None:
        fig.series.append(Series([1, e.n], [e.anchor, e.anchor], kind="lines", name=f"anchor {c.anchor_label}",
                                 colour=ANCHOR_COLOUR, marker=None, dash=True, width=2,
                                 hover=f"anchor {c.anchor_label} in the search: {e.anchor:.4f}"))
    if e.first_n is not None:
        fig.series.append(Series([e.first_n], [e.curve[e.first_n - 1]], name=f"first beats the anchor (n = {e.first_n})",
                                 colour=FRONT_COLOUR, marker="star", size=16, outline=True, top=True,
                                 hover=[f"n = {e.first_n}: {e.curve[e.first_n - 1]:.4f}"]))
    return fig, fig.note


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- LaTeX
def _marks(r: ConfigRow, field: str) -> str:
    w = r.welch.get(field)
    marks = "" if w is None or w.p is None or w.p >= ALPHA else "**" if w.p < STRONG else "*"
    paired = r.paired.get(PAIRED_OF[field]) if field in PAIRED_OF else None
    if paired is not None and paired.p < ALPHA:
        marks += r"\dagger"
    return f"^{{{marks}}}" if marks else ""


def _cell(r: ConfigRow, field: str, spec: str) -> str:
    s = r.summaries[field]
    if s.mean is None:
        return "--"
    sd = rf" \pm {s.sd:{spec}}" if s.sd is not None else ""
    return f"${s.mean:{spec}}{sd}{_marks(r, field)}$"


def confirmation_latex(c: Confirmation) -> str:
    """The confirmation table as a booktabs tabular: mean ± sd over seeds with significance marks."""
    headers = ["config", "seeds", *(m.label for m in METRICS), "verdict"]
    lines = [f"% Confirmation of study {c.parent} ({c.study}): {c.progress.complete}/{c.progress.planned} runs "
             f"complete, seeds {', '.join(map(str, c.plan.seeds))}; mean $\\pm$ sd over the complete seeds.",
             "% " + LATEX_MARKS, f"% The verdict is on {HEADLINE_METRIC.label}, by h2s-search's decision rule: both tests significant "
             "with the same sign.",
             "\\begin{tabular}{lr" + "r" * len(METRICS) + "l}", "\\toprule",
             " & ".join(_tex(h) for h in headers) + " \\\\", "\\midrule"]
    for r in c.rows:
        cells = [_tex(r.label), f"{r.seeds_done}/{r.seeds_planned}", *(_cell(r, m.field, m.spec) for m in METRICS),
                 "reference" if r.anchor else _tex(r.verdicts.get(HEADLINE, "--"))]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", f"\\multicolumn{{{len(headers)}}}{{p{{14cm}}}}{{\\footnotesize {LATEX_MARKS}}} \\\\",
              "\\end{tabular}", ""]
    return "\n".join(lines)
