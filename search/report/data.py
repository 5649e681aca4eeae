"""What the report shows, read out of a study once: trials, curves, ranking, importances, table rows.

The HTML page, the LaTeX table and the paper figures all draw from the same `ReportData`, so they cannot
disagree. Trial user attributes are read only through `search.records.TrialRecord`
(the schema is in docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from how2sign.run_metrics import RunMetrics

from ..records import CLIPS, StudyRecord, TrialRecord
from ..summary import comparison_lines, summarize

__all__ = ["FIELD", "MIN_TRIALS_FOR_IMPORTANCE", "NOTES_LABEL", "NOTES_ROWS", "TIME_SPLIT", "Dimension", "NotesRow",
           "ReportData", "TableRow", "TrialInfo", "load_report_data", "read_val_curve"]

MIN_TRIALS_FOR_IMPORTANCE = 3
TOP_N = 5


class _StoredNames:
    """`FIELD.val_loss` is the stored user-attribute name of that TrialRecord field: the report names
    attributes (in prose, or as the objective's metric name) without spelling them, and a typo fails loudly."""

    _names = frozenset(f.name for f in dataclasses.fields(TrialRecord))

    def __getattr__(self, name: str) -> str:
        if name not in self._names:
            raise AttributeError(f"TrialRecord has no field {name!r}")
        return TrialRecord.stored_name(name)


FIELD = _StoredNames()

# Where a trial's time went, in the order the report stacks and tabulates it (TrialInfo.time_split).
TIME_SPLIT = ("train", "validate", "evaluate", "other")

# The researcher's hand-run results on the real How2Sign data (docs/architecture.md): reference rows, never
# mixed into this study's numbers. BLEU on the 0-100 scale.
@dataclass(frozen=True)
class NotesRow:
    name: str
    val_loss: float
    bleu: float | None
    bleu_notes: str
    n_params: float
    gap: float | None
    issue: str


NOTES_ROWS = (
    NotesRow("V1", 4.12, 0.8, "0.008", 10.8e6, None, "Overfitting, aggressive LR decay"),
    NotesRow("V2", 4.77, None, "N/A", 7.5e6, None, "LR collapsed to 1e-8 by epoch 7"),
    NotesRow("V3", 4.77, None, "N/A", 7.5e6, 0.81, "Train/val gap 0.81, overfitting"),
)
NOTES_LABEL = "from the notes, not from this study"


def read_val_curve(run_dir, clips: bool = False) -> list[tuple[int, float]]:
    """The validation loss per epoch from a run folder's metrics.json, or with `clips` per report against train
    clips seen (the steps of a run that reported in clips); [] when there is none."""
    metrics = RunMetrics.read(run_dir)
    if not metrics:
        return []
    return metrics.report_curve() if clips else metrics.val_curve()


def _finite(record: TrialRecord) -> TrialRecord:
    """Non-finite floats read as None: nothing in the report can draw or rank a NaN."""
    bad = {f.name: None for f in dataclasses.fields(record)
           if isinstance(getattr(record, f.name), float) and not math.isfinite(getattr(record, f.name))}
    return dataclasses.replace(record, **bad) if bad else record


@dataclass
class TrialInfo:
    number: int
    state: str
    params: dict
    value: float | None            # the ranking objective (validation loss when it is one)
    record: TrialRecord
    curve: list[tuple[int, float]]  # validation loss per step: intermediate values, else metrics.json

    @property
    def anchor(self) -> bool:
        return self.record.anchor is True

    @property
    def steps_in_clips(self) -> bool:
        """The curve's steps are train clips seen (how2sign.reporting), not epochs."""
        return self.record.step_unit == CLIPS

    @property
    def val_loss(self) -> float | None:
        return self.record.val_loss if self.record.val_loss is not None else self.value

    @property
    def label(self) -> str:
        if not self.anchor:
            return f"trial {self.number}"
        return f"trial {self.number} (anchor {self.record.anchor_name or ''}".rstrip() + ")"

    @property
    def time_split(self) -> dict[str, float | None]:
        """label -> seconds, None where the trial did not record it (studies run before the split)."""
        r = self.record
        seconds = (r.seconds_train, r.seconds_validate, r.seconds_evaluate, r.seconds_other)
        return dict(zip(TIME_SPLIT, seconds, strict=True))

    @property
    def has_time_split(self) -> bool:
        return any(v is not None for v in self.time_split.values())


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str           # int | float | categorical
    log: bool = False
    choices: tuple = ()
    low: float | None = None       # the distribution's range, for int and float parameters
    high: float | None = None


@dataclass
class TableRow:
    role: str
    trial: TrialInfo | None = None
    notes: NotesRow | None = None  # a NOTES_ROWS entry for the reference rows


@dataclass
class ReportData:
    study: str
    description: str
    storage: str
    data: str
    fingerprint: str
    directions: list[str]
    metrics: list[str]
    target: str                    # the ranking objective's name
    states: dict
    budget: int | None
    trials: list[TrialInfo]
    ranked: list[TrialInfo]        # complete trials, best first
    pareto: list[int]              # trial numbers on the Pareto front (multi-objective)
    dimensions: list[Dimension]
    importances: dict[str, float] | None
    importance_note: str
    summary_lines: list[str]
    anchor_name: str = ""

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    @property
    def minimize(self) -> bool:
        return self.directions[self.metrics.index(self.target)] == "minimize"

    @property
    def anchor(self) -> TrialInfo | None:
        return next((t for t in self.trials if t.anchor), None)

    @property
    def anchor_label(self) -> str:
        """The anchor's name as the figures print it ("anchor V4")."""
        return f"anchor {self.anchor_name.upper()}".strip()

    @property
    def anchor_legend(self) -> str:
        return f"anchor {self.anchor_name}".strip()

    def table_rows(self) -> list[TableRow]:
        """The anchor, the best (or the Pareto front), the top 5; each trial once, its roles joined."""
        roles: dict[int, list[str]] = {}
        order: list[TrialInfo] = []

        def add(t: TrialInfo, role: str) -> None:
            if t.number not in roles:
                roles[t.number] = []
                order.append(t)
            roles[t.number].append(role)

        if self.anchor:
            add(self.anchor, f"anchor {self.anchor_name or self.anchor.record.anchor_name or ''}".strip())
        for k, t in enumerate(self.ranked[:TOP_N]):
            add(t, "best" if k == 0 else f"top {k + 1}")
        by_number = {t.number: t for t in self.trials}
        for n in self.pareto:
            if n in by_number:
                add(by_number[n], "Pareto front")
        rows = [TableRow(", ".join(roles[t.number]), t) for t in order]
        return rows + [TableRow(f"{r.name} (notes)", notes=r) for r in NOTES_ROWS]

    @property
    def param_names(self) -> list[str]:
        return [d.name for d in self.dimensions]


def load_report_data(study: optuna.Study, storage_desc: str = "") -> ReportData:
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    metrics = list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
    target_i = metrics.index(FIELD.val_loss) if FIELD.val_loss in metrics else 0
    minimize = study.directions[target_i] == optuna.study.StudyDirection.MINIMIZE
    trials = [_info(t, target_i) for t in frozen]
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    ranked = sorted(complete, key=lambda t: t.value if minimize else -t.value)
    pareto = [t.number for t in study.best_trials] if len(study.directions) > 1 and complete else []
    stored = StudyRecord.read(study)
    raw_spec = stored.spec or {}
    importances, note = _importances(study, target_i, len(complete))
    s = summarize(study)
    return ReportData(
        study=study.study_name, description=str(raw_spec.get("description", "")), storage=storage_desc,
        data=str(stored.data or ""), fingerprint=str(stored.fingerprint or ""),
        directions=[d.name.lower() for d in study.directions], metrics=metrics, target=metrics[target_i],
        states=s["states"], budget=s["budget"], trials=trials, ranked=ranked, pareto=pareto,
        dimensions=_dimensions(frozen, list((raw_spec.get("space") or {}).keys())),
        importances=importances, importance_note=note, summary_lines=comparison_lines(s),
        anchor_name=str((raw_spec.get("anchor") or {}).get("name", "")
                        or next((t.record.anchor_name for t in trials if t.anchor and t.record.anchor_name), "")),
    )


def _info(t: optuna.trial.FrozenTrial, target_i: int) -> TrialInfo:
    value = t.values[target_i] if t.state == TrialState.COMPLETE and t.values else None
    record = _finite(TrialRecord.read(t))
    curve = sorted((int(k), float(v)) for k, v in t.intermediate_values.items() if math.isfinite(v))
    if not curve:  # multi-objective trials report no intermediate values; their run folder has the curve
        curve = read_val_curve(record.checkpoint, clips=record.step_unit == CLIPS)
    return TrialInfo(t.number, t.state.name, dict(t.params), value, record, curve)


def _dimensions(trials, order: list[str]) -> list[Dimension]:
    dists: dict = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            for name, d in t.distributions.items():
                dists.setdefault(name, d)
    names = [n for n in order if n in dists] + sorted(n for n in dists if n not in order)
    out = []
    for n in names:
        d = dists[n]
        if isinstance(d, CategoricalDistribution):
            out.append(Dimension(n, "categorical", choices=tuple(d.choices)))
        elif isinstance(d, IntDistribution | FloatDistribution):
            out.append(Dimension(n, "int" if isinstance(d, IntDistribution) else "float", log=d.log,
                                 low=d.low, high=d.high))
    return out


def _importances(study: optuna.Study, target_i: int, n_complete: int) -> tuple[dict | None, str]:
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; "
                      f"this study has {n_complete}. Run more trials and regenerate the report.")
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # Optuna's default; needs no scikit-learn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                          target=lambda t: t.values[target_i])
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"Parameter importances could not be computed: {exc}"
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        return None, "Parameter importances are undefined: the completed trials' values or parameters do not vary."
    return dict(imp), (f"PED-ANOVA importances (Optuna's default, as in optuna-dashboard) over {n_complete} "
                       "completed trials: how much each parameter's distribution differs between the best "
                       "trials and the rest.")
