"""What a study knows, as plain data: states, best trial, anchor, who runs what. Used by status/best/start."""

from __future__ import annotations

import datetime as dt

import optuna
from optuna.trial import TrialState

from .study import ATTR_BUDGET, anchor_trials, budget_used, epochs_done

ROW_ATTRS = ("params", "epochs_run", "best_epoch", "train_loss", "val_loss", "gap", "bleu", "chrf",
             "vocab_coverage", "repetition_rate", "verdict", "device", "host", "seconds", "resumed_from_epoch",
             "fail_reason")


def trial_row(t) -> dict:
    row = {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
           "anchor": bool(t.user_attrs.get("anchor")), "anchor_name": t.user_attrs.get("anchor_name")}
    row.update({f"attr_{k}" if k == "params" else k: t.user_attrs.get(k) for k in ROW_ATTRS})
    row["n_params"] = row.pop("attr_params")
    return row


def best_trials(study: optuna.Study) -> list:
    try:
        return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]
    except ValueError:
        return []


def summarize(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name: 0 for s in TrialState}
    for t in trials:
        by_state[t.state.name] += 1
    used, waiting = budget_used(study)
    anchors = anchor_trials(study)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    running = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            start = t.datetime_start.replace(tzinfo=None) if t.datetime_start else None
            running.append({"number": t.number, "host": t.user_attrs.get("host"), "device": t.user_attrs.get("device"),
                            "epochs_run": epochs_done(t), "anchor": bool(t.user_attrs.get("anchor")),
                            "running_seconds": (now - start).total_seconds() if start else None})
    return {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "metrics": study.metric_names,
        "budget": study.user_attrs.get(ATTR_BUDGET),
        "counted": used,
        "states": {k: v for k, v in by_state.items() if v},
        "best": [trial_row(t) for t in best_trials(study)],
        "anchor": trial_row(anchors[0]) if anchors else None,
        "running": running,
        "fingerprint": study.user_attrs.get("fingerprint"),
        "waiting": waiting,
    }


def comparison_lines(s: dict) -> list[str]:
    """The short human summary: the best trial against the anchor."""
    lines = [f"study {s['study']}: " + ", ".join(f"{n} {k.lower()}" for k, n in s["states"].items())]
    a, bests = s["anchor"], s["best"]
    if a:
        lines.append(_describe("anchor " + str(a["anchor_name"] or ""), a))
    if bests:
        b = bests[0]
        lines.append(_describe("best", b))
        if a and a["state"] == "COMPLETE" and b["val_loss"] is not None and a["val_loss"] is not None:
            if b["number"] == a["number"]:
                lines.append("the anchor is still the best trial")
            else:
                delta = b["val_loss"] - a["val_loss"]
                pct = 100 * delta / a["val_loss"] if a["val_loss"] else 0.0
                lines.append(f"best vs anchor: val_loss {delta:+.4f} ({pct:+.1f}%), params "
                             f"{_num(b['n_params'])} vs {_num(a['n_params'])}")
    return lines


def _num(n) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _describe(label: str, r: dict) -> str:
    p = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
    return (f"{label}: trial {r['number']} {r['state'].lower()} val_loss {_fmt(r['val_loss'], '.4f')} "
            f"gap {_fmt(r['gap'], '.3f')} BLEU {_fmt(r['bleu'], '.2f')} verdict {r['verdict'] or '-'} "
            f"params {_num(r['n_params'])} [{p}]")
