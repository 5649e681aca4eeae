"""A confirmation, read once into one value: `build_confirmation(parent, confirm) -> Confirmation`.

`h2s-search confirm` re-trains the parent (search) study's top K configs and the anchor with N fresh seeds
as the trials of `<parent>.confirm` (docs/architecture.md). This module reads both studies through Optuna's
public API and the run folders' `test_translations.csv` (where a run folder is not at hand, the copy the run
uploaded to the artifact store), and computes with `search.stats`:

* progress: the (K+1) x N runs complete, running, waiting, failed, and not yet enqueued;
* per config: val loss, val BLEU, test BLEU and test chrF over its complete seeds, Welch against the
  anchor for each, sacrebleu's paired bootstrap of its median-seed run against the anchor's on the test
  hypotheses, and one sentence (the decision rule is in `search.stats`);
* the expected best validation loss of n search trials (Dodge et al. 2019), from the parent's COMPLETE
  trials. The anchor is not a draw: it was enqueued by hand, not sampled by the search, so it is the
  horizontal line the curve is measured against, not one of the points the curve is made of.

The median-seed run of a config is its complete run at the lower middle of the runs ordered by test BLEU
(then seed): with an odd number of seeds the median itself, and always a real run with real hypotheses.

The report, the LaTeX table, `confirm`, `best` and `status` all present this one value
(`confirmation_view.py` for the terminal and JSON, `report/confirm.py` for the page and the paper).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import stats
from .records import (
    CONFIRM_SUFFIX,
    SEED,
    ConfirmConfig,
    ConfirmPlan,
    StudyRecord,
    TrialRecord,
    confirmation_name,
)
from .storage import enqueued_params
from .study import anchor_trials, retried_numbers
from .translations import TEST_TRANSLATIONS, Translations, parse_test_translations, read_test_translations

__all__ = ["HEADLINE", "HEADLINE_METRIC", "METRICS", "ConfigRow", "Confirmation", "ExpectedBest", "Metric", "Progress", "Run",
           "build_confirmation", "confirmation_progress", "enqueued_pairs", "expected_best_of", "open_confirmation",
           "run_seed", "uploaded_test_translations"]


@dataclass(frozen=True)
class Metric:
    field: str               # the TrialRecord field
    label: str
    higher_is_better: bool
    spec: str                # number format
    on_test: bool            # scored on the test split: the paired test belongs with it


METRICS = (Metric("val_loss", "val loss", False, ".4f", False), Metric("bleu", "val BLEU", True, ".2f", False),
           Metric("test_bleu", "test BLEU", True, ".2f", True), Metric("test_chrf", "test chrF", True, ".2f", True))
HEADLINE = "test_bleu"       # the metric of each config's sentence
HEADLINE_METRIC = next(m for m in METRICS if m.field == HEADLINE)
PAIRED_OF = {"test_bleu": "bleu", "test_chrf": "chrf"}  # our metric -> the paired test's
STATE_RANK = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "FAIL": 3, "PRUNED": 4}


@dataclass(frozen=True)
class Run:
    """One (config, seed) trial of the confirmation study."""

    number: int
    config: int              # the parent trial it re-trains
    seed: int | None
    state: str
    record: TrialRecord


@dataclass(frozen=True)
class Progress:
    planned: int             # configs x seeds
    complete: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0          # FAIL or PRUNED (a confirmation run is never pruned on purpose)
    missing: int = 0         # planned but not (yet) a trial of the study

    @property
    def done(self) -> bool:
        return self.complete == self.planned

    def line(self, study: str) -> str:
        parts = [f"{n} {what}" for n, what in ((self.running, "running"), (self.waiting, "waiting"),
                                                (self.failed, "failed"), (self.missing, "not enqueued")) if n]
        return f"confirmation {study}: {self.complete}/{self.planned} runs complete" + (
            f" ({', '.join(parts)})" if parts else "")

    def to_dict(self) -> dict:
        return {"planned": self.planned, "complete": self.complete, "running": self.running,
                "waiting": self.waiting, "failed": self.failed, "missing": self.missing}


@dataclass
class ConfigRow:
    trial: int
    anchor: bool
    label: str
    params: dict
    seeds_planned: int
    runs: list[Run]                                   # complete runs, by seed
    summaries: dict[str, stats.Summary]               # metric field -> over the complete seeds
    welch: dict[str, stats.Welch] = field(default_factory=dict)          # against the anchor (not on its row)
    paired: dict[str, stats.PairedScore] = field(default_factory=dict)   # "bleu" / "chrf" on the test split
    paired_missing: str = ""                          # why there is no paired test, where there should be one
    verdicts: dict[str, str] = field(default_factory=dict)
    sentence: str = ""
    median: Run | None = None

    @property
    def seeds_done(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class ExpectedBest:
    """E[best of n search trials], n = 1..N, from the parent's complete trials other than the anchor."""

    metric: str
    minimize: bool
    draws: tuple[float, ...]
    curve: tuple[float, ...]
    anchor: float | None     # the anchor's value in the search study: the horizontal line
    first_n: int | None      # the first n whose expected best beats it

    @property
    def n(self) -> int:
        return len(self.draws)


@dataclass
class Confirmation:
    study: str
    parent: str
    plan: ConfirmPlan
    progress: Progress
    rows: list[ConfigRow]                             # the anchor first, then the configs in the plan's order
    expected: ExpectedBest
    anchor_label: str                                 # "V4"
    n_samples: int = 0                                # of the paired bootstrap

    @property
    def anchor(self) -> ConfigRow | None:
        return next((r for r in self.rows if r.anchor), None)

    def row_of(self, trial: int) -> ConfigRow | None:
        return next((r for r in self.rows if r.trial == trial), None)


# --------------------------------------------------------------------------- reading the studies
def open_confirmation(url: str, parent: str) -> optuna.Study | None:
    """The confirmation study of `parent` in the same storage, or None when `confirm` has not created it."""
    from .storage import open_storage, parse_url, storage_errors

    name = confirmation_name(parent)
    with storage_errors(parse_url(url)):
        storage = open_storage(url, heartbeat=False)
        try:
            storage.get_study_id_from_name(name)
        except KeyError:
            return None
        return optuna.load_study(study_name=name, storage=storage)


def _plan(confirm: optuna.Study, runs: list[Run], trials) -> ConfirmPlan:
    """The stored plan; when a study lacks it (being created), the configs and seeds its trials name."""
    stored = StudyRecord.read(confirm).confirm
    if stored:
        return ConfirmPlan.from_attr(stored)
    by_config = {r.config: (bool(r.record.anchor), dict(t.params)) for r, t in zip(runs, trials, strict=True)}
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    configs = tuple(ConfirmConfig(n, a, p) for n, (a, p) in sorted(by_config.items(), key=lambda kv: not kv[1][0]))
    parent = confirm.study_name.removesuffix(CONFIRM_SUFFIX)
    return ConfirmPlan(parent, sum(not c.anchor for c in configs), tuple(seeds), configs)


def run_seed(trial, record: TrialRecord) -> int | None:
    """The seed a confirmation run trains with: its `seed` attribute (set when it is enqueued, and by the
    worker), else its parameter, else the parameter it was enqueued with (a run still WAITING that was
    enqueued before runs carried the attribute)."""
    if record.seed is not None:
        return int(record.seed)
    seed = trial.params.get(SEED, enqueued_params(trial).get(SEED))
    return None if seed is None else int(seed)


def _runs(confirm: optuna.Study) -> tuple[list[Run], list]:
    """Every trial that names the config it re-trains; a stale trial that was re-queued is its retry alone."""
    trials = confirm.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    runs, kept = [], []
    for t in trials:
        r = TrialRecord.read(t)
        if t.number in retried or r.confirms_trial is None:
            continue
        runs.append(Run(t.number, int(r.confirms_trial), run_seed(t, r), t.state.name, r))
        kept.append(t)
    return runs, kept


def enqueued_pairs(confirm: optuna.Study) -> set[tuple[int, int | None]]:
    """The (config, seed) pairs that have a trial in the study, in any state."""
    return {(r.config, r.seed) for r in _runs(confirm)[0]}


def _pairs(plan: ConfirmPlan, runs: list[Run]) -> dict[tuple[int, int], Run]:
    """(config, seed) -> the run that stands for it: complete before running, waiting, failed."""
    out: dict[tuple[int, int], Run] = {}
    planned = {(c.trial, s) for c in plan.configs for s in plan.seeds}
    for r in sorted(runs, key=lambda r: (STATE_RANK.get(r.state, 9), -r.number)):
        key = (r.config, r.seed)
        if key in planned and key not in out:
            out[key] = r
    return out


def _progress(plan: ConfirmPlan, pairs: dict[tuple[int, int], Run]) -> Progress:
    states = [r.state for r in pairs.values()]
    return Progress(plan.runs, complete=states.count("COMPLETE"), running=states.count("RUNNING"),
                    waiting=states.count("WAITING"), failed=states.count("FAIL") + states.count("PRUNED"),
                    missing=plan.runs - len(pairs))


def confirmation_progress(confirm: optuna.Study) -> Progress:
    """Only the progress (what `status` shows): no run folder is read, nothing is computed."""
    runs, trials = _runs(confirm)
    plan = _plan(confirm, runs, trials)
    return _progress(plan, _pairs(plan, runs))


# --------------------------------------------------------------------------- the expected best
def _target(study: optuna.Study) -> int:
    names = list(study.metric_names or [])
    val_loss = TrialRecord.stored_name("val_loss")
    return names.index(val_loss) if val_loss in names else 0


def expected_best_of(parent: optuna.Study) -> ExpectedBest:
    """The expected-best curve of the search study's objective (validation loss where it is one)."""
    i = _target(parent)
    minimize = parent.directions[i] == optuna.study.StudyDirection.MINIMIZE
    anchors = {t.number for t in anchor_trials(parent)}
    done = [t for t in parent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    draws = tuple(v for v in (t.values[i] for t in done if t.number not in anchors) if math.isfinite(v))
    anchor = next((t.values[i] for t in done if t.number in anchors and math.isfinite(t.values[i])), None)
    curve = tuple(stats.expected_best(draws, minimize=minimize))
    names = list(parent.metric_names or [])
    metric = names[i] if names else "objective"
    return ExpectedBest(metric, minimize, draws, curve, anchor, stats.first_beating(curve, anchor, minimize=minimize))


# --------------------------------------------------------------------------- per config
def _row(cfg: ConfirmConfig, plan: ConfirmPlan, pairs: dict, label: str) -> ConfigRow:
    runs = sorted((r for (c, _), r in pairs.items() if c == cfg.trial and r.state == "COMPLETE"),
                  key=lambda r: r.seed)
    summaries = {m.field: stats.summarize([r.record.get(m.field) for r in runs]) for m in METRICS}
    return ConfigRow(cfg.trial, cfg.anchor, label, dict(cfg.params), len(plan.seeds), runs, summaries,
                     median=_median_run(runs))


def _median_run(runs: list[Run]) -> Run | None:
    scored = sorted((r for r in runs if r.record.get(HEADLINE) is not None and math.isfinite(r.record.get(HEADLINE))),
                    key=lambda r: (r.record.get(HEADLINE), r.seed))
    return scored[(len(scored) - 1) // 2] if scored else None


def _translations(row: ConfigRow, uploaded: Callable[[int], Translations]) -> Translations | str:
    """The median-seed run's test hypotheses: its run folder's file, else the copy it uploaded to the artifact
    store (a report made where the run folders are not at hand); or why there are none."""
    if row.median is None:
        return f"{row.label} has no complete run with a test BLEU"
    folder = row.median.record.checkpoint
    local = f"{row.label}'s median-seed run (trial {row.median.number}) recorded no run folder"
    try:
        if folder:
            return read_test_translations(folder)
    except FileNotFoundError:
        local = f"no {TEST_TRANSLATIONS} in {folder}"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    try:
        return uploaded(row.median.number)
    except FileNotFoundError as exc:
        return f"{local}, and {exc}"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return str(exc)


def uploaded_test_translations(confirm: optuna.Study, number: int, artifacts: Path | str | None = None
                               ) -> Translations:
    """Trial `number`'s test hypotheses as it uploaded them to the artifact store in `artifacts`
    (search.artifacts.artifact_root: the folder, then $H2S_ARTIFACTS, then ./h2s-artifacts)."""
    from .artifacts import read_uploaded
    from .storage import study_storage

    trial = next(t for t in confirm.get_trials(deepcopy=False) if t.number == number)
    text, source = read_uploaded(trial, study_storage(confirm), TEST_TRANSLATIONS, artifacts)
    return parse_test_translations(text, source)


def _paired(rows: list[ConfigRow], anchor: ConfigRow | None, n_samples: int,
            uploaded: Callable[[int], Translations]) -> None:
    """One PairedTest of every config's median-seed run against the anchor's; sets row.paired or why not."""
    others = [r for r in rows if not r.anchor]
    base = _translations(anchor, uploaded) if anchor is not None else "there is no anchor config"
    systems: dict[int, list[str]] = {}
    for r in others:
        mine = _translations(r, uploaded)
        if isinstance(base, str):
            r.paired_missing = f"the anchor's hypotheses: {base}"
        elif isinstance(mine, str):
            r.paired_missing = mine
        elif mine.references != base.references:
            r.paired_missing = (f"{mine.source} and {base.source} are not the same test sentences "
                                f"({len(mine)} and {len(base)} rows)")
        else:
            systems[r.trial] = mine.hypotheses
    if not systems:
        return
    results = stats.paired_bootstrap(base.hypotheses, {str(k): h for k, h in systems.items()}, base.references,
                                     n_samples=n_samples)
    for r in others:
        if r.trial in systems:
            r.paired = results[str(r.trial)]


def _judge(row: ConfigRow, anchor: ConfigRow, ref: str) -> None:
    for m in METRICS:
        w = stats.welch(row.summaries[m.field].values, anchor.summaries[m.field].values)
        row.welch[m.field] = w
        paired = row.paired.get(PAIRED_OF[m.field]) if m.on_test else None
        row.verdicts[m.field] = stats.judge(w, paired, higher_is_better=m.higher_is_better, paired_expected=m.on_test)
    m = HEADLINE_METRIC
    row.sentence = stats.sentence(row.label, ref, m.label, row.verdicts[HEADLINE], row.welch[HEADLINE],
                                  row.paired.get(PAIRED_OF[HEADLINE]), spec=m.spec, paired_expected=True,
                                  missing=row.paired_missing)


def _anchor_sentence(row: ConfigRow, ref: str) -> str:
    m, s = HEADLINE_METRIC, row.summaries[HEADLINE]
    if s.mean is None:
        return f"{row.label} (the reference) has no complete run yet"
    return f"{row.label} is the reference: {m.label} {s.text(m.spec)} over {s.n} seed(s)"


def _anchor_name(parent: optuna.Study, runs: list[Run]) -> str:
    names = [r.record.anchor_name for r in runs if r.record.anchor and r.record.anchor_name]
    names += [TrialRecord.read(t).anchor_name for t in anchor_trials(parent)]
    return str(next((n for n in names if n), "anchor")).upper()


def build_confirmation(parent: optuna.Study, confirm: optuna.Study, *, n_samples: int = 1000,
                       artifacts: Path | str | None = None) -> Confirmation:
    """Everything the presentations show, from the two studies. A confirmation in progress (or with failed
    runs) is summarised over the runs complete so far. artifacts: the artifact store's folder, where a run's
    test hypotheses are read when its run folder is not at hand (default: $H2S_ARTIFACTS, ./h2s-artifacts)."""
    runs, trials = _runs(confirm)
    plan = _plan(confirm, runs, trials)
    pairs = _pairs(plan, runs)
    ref = _anchor_name(parent, runs)
    rows = [_row(c, plan, pairs, f"anchor {ref}" if c.anchor else f"trial {c.trial}")
            for c in sorted(plan.configs, key=lambda c: not c.anchor)]
    anchor = next((r for r in rows if r.anchor), None)
    _paired(rows, anchor, n_samples, functools.partial(uploaded_test_translations, confirm, artifacts=artifacts))
    for r in rows:
        if r.anchor:
            r.sentence = _anchor_sentence(r, ref)
        elif anchor is None or not anchor.runs:
            r.sentence = f"{r.label}: no complete {ref} run to compare with yet"
        else:
            _judge(r, anchor, ref)
    return Confirmation(confirm.study_name, plan.of, plan, _progress(plan, pairs), rows, expected_best_of(parent),
                        ref, n_samples)
