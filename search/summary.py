"""What a study knows, as plain data: states, best trial, anchor, who runs what. Used by status/best/start."""

from __future__ import annotations

import datetime as dt

import optuna
from optuna.trial import TrialState

from .records import CLIPS, StudyRecord, TrialRecord
from .study import anchor_trials, budget_used

# A trial's record fields shown in status, best and start (as the keys of a row, n_params included).
ROW_FIELDS = ("n_params", "epochs_run", "best_epoch", "train_loss", "val_loss", "gap", "bleu", "chrf",
              "vocab_coverage", "repetition_rate", "verdict", "device", "host", "slurm_job_id", "seconds", "seconds_train",
              "seconds_validate", "seconds_evaluate", "seconds_other", "resumed_from_epoch", "fail_reason")


def trial_row(t) -> dict:
    r = TrialRecord.read(t)
    row = {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
           "anchor": bool(r.anchor), "anchor_name": r.anchor_name}
    row.update({name: getattr(r, name) for name in ROW_FIELDS})
    return row


def epochs_done(t) -> int | None:
    """Epochs a trial has finished: its record once it ends, its reported intermediate values while it runs
    (where their steps are epochs; see clips_seen)."""
    r = TrialRecord.read(t)
    steps = None if r.step_unit == CLIPS else max(t.intermediate_values, default=None)
    known = [n for n in (r.epochs_run, steps) if n is not None]
    return max(known, default=None)


def clips_seen(t) -> int | None:
    """Train clips a trial had seen at its last report, where its steps count them; else None."""
    return max(t.intermediate_values, default=None) if TrialRecord.read(t).step_unit == CLIPS else None


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
    record = StudyRecord.read(study)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    running = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            start = t.datetime_start.replace(tzinfo=None) if t.datetime_start else None
            r = TrialRecord.read(t)
            running.append({"number": t.number, "host": r.host, "slurm_job_id": r.slurm_job_id, "device": r.device,
                            "epochs_run": epochs_done(t), "clips_seen": clips_seen(t), "anchor": bool(r.anchor),
                            "running_seconds": (now - start).total_seconds() if start else None})
    return {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "metrics": study.metric_names,
        "budget": record.budget,
        "counted": used,
        "states": {k: v for k, v in by_state.items() if v},
        "best": [trial_row(t) for t in best_trials(study)],
        "anchor": trial_row(anchors[0]) if anchors else None,
        "running": running,
        "fingerprint": record.fingerprint,
        "waiting": waiting,
        "time": time_split(trials),
    }


TIME_PARTS = ("train", "validate", "evaluate", "other")


def time_split(trials) -> dict:
    """Where the finished trials' time went, summed: seconds, and each part's seconds and share of them."""
    recs = [TrialRecord.read(t) for t in trials if t.state.is_finished()]
    recs = [r for r in recs if r.seconds is not None and r.seconds_train is not None]
    total = sum(r.seconds for r in recs)
    parts = {p: sum(getattr(r, f"seconds_{p}") or 0.0 for r in recs) for p in TIME_PARTS}
    return {"trials": len(recs), "seconds": total, **parts,
            "shares": {p: v / total if total else None for p, v in parts.items()}}


def time_line(t: dict) -> str | None:
    """One line: "time: 812s in 9 trials: train 71%, validate 6%, evaluate 17%, other 6%"."""
    if not t["trials"] or not t["seconds"]:
        return None
    shares = ", ".join(f"{p} {t['shares'][p]:.0%}" for p in TIME_PARTS)
    return f"time: {t['seconds']:.0f}s in {t['trials']} finished trial(s): {shares}"


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
