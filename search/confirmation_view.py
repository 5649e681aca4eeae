"""A `Confirmation` as text cells, terminal lines and JSON: what `confirm`, `best` and `status` print, and the
cells the report's table and the LaTeX export share (search/report/confirm.py)."""

from __future__ import annotations

from .confirmation import HEADLINE, HEADLINE_METRIC, METRICS, PAIRED_OF, ConfigRow, Confirmation
from .stats import ALPHA, CONFIDENCE, Summary

__all__ = ["CELLS", "MISSING", "best_confirmation", "confirmation_dict", "confirmation_lines", "expected_sentence",
           "expected_verdict", "p_cell", "params_text", "summary_cell", "table"]

MISSING = "–"
CELLS = (f"mean ± sd [{CONFIDENCE * 100:.0f} % interval of the mean] over each config's complete seeds (sd with "
         "ddof 1; one seed has neither)")


def summary_cell(s: Summary, spec: str) -> str:
    """A metric over seeds as every table shows it: '3.0712 ± 0.0123 [3.0406, 3.1018]'; one seed: '3.0712
    (1 seed)'; none: '–'."""
    return s.text(spec) + (f" [{s.low:{spec}}, {s.high:{spec}}]" if s.low is not None else "")


def p_cell(p: float | None) -> str:
    return MISSING if p is None else "<0.001" if p < 0.001 else f"{p:.2g}"


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _delta(row: ConfigRow) -> str:
    w = row.welch.get(HEADLINE)
    if w is None or w.diff is None:
        return MISSING
    spec = HEADLINE_METRIC.spec
    return f"{w.diff:+{spec}}" + (f" ({w.low:+{spec}} to {w.high:+{spec}})" if w.low is not None else "")


def table(c: Confirmation) -> tuple[list[str], list[list[str]]]:
    """One row per config: seeds done, the four metrics (summary_cell), the headline against the anchor."""
    headers = ["config", "seeds", *(m.label for m in METRICS), f"Δ {HEADLINE_METRIC.label} vs {c.anchor_label} "
               f"({CONFIDENCE * 100:.0f} % CI)", "p (seeds)", "p (paired)", "verdict"]
    rows = []
    for r in c.rows:
        w, paired = r.welch.get(HEADLINE), r.paired.get(PAIRED_OF[HEADLINE])
        rows.append([r.label, f"{r.seeds_done}/{r.seeds_planned}",
                     *(summary_cell(r.summaries[m.field], m.spec) for m in METRICS), _delta(r),
                     p_cell(w.p if w else None), p_cell(paired.p if paired else None),
                     "reference" if r.anchor else r.verdicts.get(HEADLINE, MISSING)])
    return headers, rows


def expected_verdict(c: Confirmation) -> str:
    """Where the expected-best curve first beats the anchor: "it first beats V4's 3.0712 at n = 4"."""
    e = c.expected
    if e.anchor is None:
        return f"the search study has no complete {c.anchor_label} trial to compare with"
    if e.first_n is None:
        return f"it never beats {c.anchor_label}'s {e.anchor:.4f} within {e.n} trials"
    return f"it first beats {c.anchor_label}'s {e.anchor:.4f} at n = {e.first_n}"


def expected_sentence(c: Confirmation) -> str:
    e = c.expected
    if not e.n:
        return f"expected best {e.metric}: the search study has no complete trial other than the anchor yet"
    return (f"expected best {e.metric} of n search trials (from {e.n} complete, the anchor not counted): "
            f"{e.curve[0]:.4f} at n = 1, {e.curve[-1]:.4f} at n = {e.n}; {expected_verdict(c)}")


def confirmation_lines(c: Confirmation) -> list[str]:
    """For a terminal: the progress, the table in aligned columns and what its cells are, each config's
    params, the sentences and the expected-best curve's n."""
    headers, rows = table(c)
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [c.progress.line(c.study) + f"; seeds {', '.join(map(str, c.plan.seeds)) or MISSING}",
             fmt.format(*headers), *(fmt.format(*r) for r in rows), f"each metric: {CELLS}"]
    lines += [f"{r.label}: {params_text(r.params)}" for r in c.rows]
    lines += [f"- {r.sentence}" for r in c.rows]
    lines.append(expected_sentence(c))
    return [line.rstrip() for line in lines]


def _row_dict(r: ConfigRow) -> dict:
    return {"trial": r.trial, "anchor": r.anchor, "label": r.label, "params": r.params,
            "seeds_done": r.seeds_done, "seeds_planned": r.seeds_planned,
            "runs": [{"trial": run.number, "seed": run.seed} for run in r.runs],
            "median_run": None if r.median is None else {"trial": r.median.number, "seed": r.median.seed},
            "summary": {m.field: r.summaries[m.field].to_dict() for m in METRICS},
            "against_anchor": {k: w.to_dict() for k, w in r.welch.items()} or None,
            "paired": {k: p.to_dict() for k, p in r.paired.items()} or None,
            "paired_missing": r.paired_missing or None, "verdicts": r.verdicts or None, "sentence": r.sentence}


def confirmation_dict(c: Confirmation) -> dict:
    """JSON-able; every number as computed, None where there is none."""
    e = c.expected
    return {"study": c.study, "of": c.parent, "top": c.plan.top, "seeds": list(c.plan.seeds),
            "anchor": c.anchor_label, "alpha": ALPHA, "paired_samples": c.n_samples,
            "progress": c.progress.to_dict(), "configs": [_row_dict(r) for r in c.rows],
            "expected_best": {"metric": e.metric, "direction": "minimize" if e.minimize else "maximize",
                              "trials": e.n, "curve": list(e.curve), "anchor": e.anchor, "first_n_beating": e.first_n,
                              "sentence": expected_sentence(c)}}


def best_confirmation(c: Confirmation | None, trial: int | None) -> dict:
    """What `best --json` adds: whether the best trial was re-trained and scored on the test split
    (`confirmed`: at least one complete confirmation run), and its test figures over seeds."""
    row = c.row_of(trial) if c is not None and trial is not None else None
    if row is None or not row.runs:
        return {"confirmed": False, "confirmation": None if c is None else {
            "study": c.study, "progress": c.progress.to_dict(),
            "note": f"trial {trial} is not among the configs of {c.study}" if row is None else
            f"trial {trial} has no complete confirmation run yet"}}
    return {"confirmed": True, "confirmation": {
        "study": c.study, "seeds_done": row.seeds_done, "seeds_planned": row.seeds_planned,
        **{m.field: row.summaries[m.field].to_dict() for m in METRICS if m.on_test},
        "verdict": "reference" if row.anchor else row.verdicts.get(HEADLINE), "sentence": row.sentence}}
