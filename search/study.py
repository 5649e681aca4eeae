"""Creating, loading and budgeting a study in shared storage.

`start` creates a study once (under a cross-process lock), stores the parsed study definition and the
dataset fingerprint as study user attributes, and enqueues the anchor only if none exists. Workers
rebuild everything from those attributes, never from a local file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from how2sign import __version__
from how2sign.reporting import Schedule, steps_in_clips

from .errors import UserError
from .paths import check_name
from .records import STUDY_STORED_AS, UNSET, StudyRecord, TrialRecord
from .spec import NO_RESOURCE, RESOURCES, StudySpec, load_spec, parse
from .storage import (
    RETRY_HISTORY,
    HyperbandPruner,
    TrialBudget,
    creation_lock,
    open_storage,
    parse_url,
    resolve_url,
    storage_errors,
    study_storage,
)


class StudyNotFound(UserError):
    pass


class FingerprintMismatch(UserError):
    pass


@dataclass
class Opened:
    study: optuna.Study
    spec: StudySpec
    fingerprint: str
    created: bool
    anchor_enqueued: bool
    url: str
    worker_index: int = 0  # this worker's number in the study (offsets the sampler seed)


def build_sampler(spec: StudySpec, worker_index: int = 0):
    s = dict(spec.sampler)
    kind = s.pop("type", "tpe")
    seed = s.pop("seed", None)
    if seed is not None:
        seed += worker_index  # equal seeds in parallel workers would suggest the same trials
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, **s)
    return optuna.samplers.TPESampler(seed=seed, **s)


def build_pruner(spec: StudySpec, train_clips: int | None = None):
    """The study's pruner, its resources in the unit of the trials' steps (how2sign.reporting).

    train_clips: the study's train split size (the fingerprint fixes it for every worker). Where the steps are
    clips, resources written in epochs (report_every 0) count train_clips clips each; with report_every set
    they are clips already. Without it (no data at hand: read-only commands, which never prune) steps are
    taken as epochs unless report_every is set. A worker builds it again with its data (run_worker).
    """
    p = dict(spec.pruner)
    kind = p.pop("type", "none")
    base = spec.base_config()
    unit = ResourceUnit(base.report_every, train_clips)
    for key in RESOURCES.get(kind, ()):
        if key in p and p[key] != "auto" and p[key] != NO_RESOURCE.get(key):  # 0 / 1: the same in either unit
            p[key] = unit.steps(p[key])
    if kind == "hyperband":
        # max_resource='auto' prunes nothing until a trial finishes; the budget is known. The first rung is
        # by default the first report.
        p.setdefault("max_resource", unit.budget(base.total_epochs))
        p.setdefault("min_resource", unit.first_report())
        return HyperbandPruner(**p)
    if kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(**p)
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class ResourceUnit:
    """Pruner resources as steps: epochs (rounded up to whole ones), or train clips."""

    report_every: int
    train_clips: int | None

    @property
    def clips(self) -> bool:
        return self.report_every > 0 or (self.train_clips is not None
                                         and steps_in_clips(self.report_every, self.train_clips))

    def steps(self, value: float) -> int:
        if not self.clips:
            return math.ceil(value)  # a fraction of an epoch: steps are epochs, so its first report
        if self.report_every:
            return int(value)  # written in clips (search.spec checks it)
        return math.ceil(value * self.train_clips)

    def budget(self, epochs: int) -> int | str:
        """The whole epoch budget in steps ('auto' where it needs the train split and that is unknown)."""
        if self.clips and self.train_clips is None:
            return "auto"
        return epochs * self.train_clips if self.clips else epochs

    def first_report(self) -> int:
        if not self.clips:
            return 1
        return self.report_every or Schedule.of(0, self.train_clips).mark(1)


def _study_id(storage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def anchor_trials(study: optuna.Study) -> list:
    """Trials with anchor=true; a stale anchor that was re-queued is represented by its retry alone."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if TrialRecord.read(t).anchor is True and t.number not in retried]


def create_or_load(url: str | None, spec: StudySpec, fingerprint: str, data_desc: str = "",
                   n_trials: int | None = None) -> Opened:
    """Create the study or load it; enqueue the anchor exactly once. Safe to race."""
    url = resolve_url(url)
    u = parse_url(url)
    with creation_lock(url, spec.name):
        storage = open_storage(url, cache=True)
        with storage_errors(u):
            created = _study_id(storage, spec.name) is None
            if created:
                study = create(storage, spec, fingerprint, data_desc, n_trials or spec.n_trials)
            else:
                study, spec = load(storage, spec.name, fingerprint, f"study {spec.name!r} in {u.masked}")
                if n_trials is not None:
                    StudyRecord(budget=n_trials).write(study)
            enqueued = ensure_anchor(study, spec)
    return Opened(study, spec, fingerprint, created, enqueued, url)


def create(storage, spec: StudySpec, fingerprint: str, data_desc: str, budget: int, *,
           note: bool = True, **record) -> optuna.Study:
    """A new study holding the definition, the data's fingerprint and the budget (the caller holds the study
    lock). `record`: more StudyRecord fields; `note`: the dashboard's note on what the anchor is."""
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=list(spec.directions))
    write_definition(study, spec, fingerprint, data_desc, budget, note=note, **record)
    return study


def write_definition(study: optuna.Study, spec: StudySpec, fingerprint: str, data_desc: str, budget: int, *,
                     note: bool = True, **record) -> None:
    """Store a new study's definition (create's second half; also what completes a creation that was killed
    before its attributes were all written)."""
    with warnings.catch_warnings():  # experimental in Optuna; silenced here only
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(spec.metrics))
    anchor_note = (f"Trial with user attribute anchor=true is the {spec.anchor_name} setting, enqueued once as the "
                   "reference.") if spec.anchor_name else UNSET
    StudyRecord(spec=spec.raw, fingerprint=fingerprint, budget=budget, data=data_desc, h2s_version=__version__,
                optuna_version=optuna.__version__, anchor_note=anchor_note, **record).write(study)
    if note:
        from .artifacts import write_study_note

        write_study_note(study, spec)  # optuna-dashboard's study note: what the anchor is


def load(storage, name: str, fingerprint: str, where: str) -> tuple[optuna.Study, StudySpec]:
    """An existing study and its stored definition; refused when it was created on other data."""
    study = optuna.load_study(study_name=name, storage=storage)
    record = StudyRecord.read(study)
    if record.fingerprint != fingerprint:
        raise FingerprintMismatch(
            f"study {name!r} was created on data with fingerprint {str(record.fingerprint)[:12]}, this data has "
            f"{fingerprint[:12]}; use the same data or another study name")
    return study, parse(record.spec or {}, where)


def ensure_anchor(study: optuna.Study, spec: StudySpec) -> bool:
    """Enqueue the anchor unless a trial with anchor=true exists (the caller holds the study lock)."""
    if not spec.anchor_name or anchor_trials(study):
        return False
    study.enqueue_trial(spec.anchor_params, user_attrs=TrialRecord(anchor=True, anchor_name=spec.anchor_name).attrs())
    return True


def load_stored(url: str | None, name: str, *, worker_index: int | None = 0, heartbeat: bool = True) -> Opened:
    """Attach to an existing study; the definition comes from the database.

    worker_index None: take the study's next worker number (0, 1, 2, ... across every machine), so that
    no two workers share a sampler seed and suggest the same trials. The study is loaded once, on a
    FleetCachedStorage: a worker's reads then cost the same with 8 or 256 workers running.
    """
    url = resolve_url(url)
    u = parse_url(url)
    name = study_name(name)
    if u.missing_file:  # opening it would create an empty one
        raise StudyNotFound(f"no study {name!r}: the database file {u.sqlite_file} does not exist; create the "
                            "study with h2s-search start")
    # Not under the study lock: the study must exist, so its tables do, and opening (Optuna's table and
    # schema checks; benchmarks/README.md, joins) is then only reads; many workers joining at once open in
    # parallel.
    storage = open_storage(url, heartbeat=heartbeat, cache=True)
    with storage_errors(u):
        sid = _study_id(storage, name)
        if sid is None:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise StudyNotFound(f"no study {name!r} in {u.masked}"
                                + (f" (it has: {', '.join(names)})" if names else " (it has no studies)")
                                + "; create it with h2s-search start")
        record = StudyRecord.read_stored(storage, sid)
        spec = parse(record.spec or {}, f"study {name!r} in {u.masked}")
        if worker_index is None:
            worker_index = _join(url, storage, name)
        study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec, worker_index),
                                  pruner=build_pruner(spec))
    return Opened(study, spec, record.fingerprint or "", False, False, url, worker_index)


def study_name(given: str) -> str:
    """--study as a stored study's name: a name, or a study file's path (its `name`)."""
    if given.endswith(".toml") or "/" in given:
        return load_spec(given).name
    return check_name(given, "--study")


ATTR_JOINED = "h2s:workers_joined"


def _join(url: str, storage, name: str) -> int:
    """The study's next worker number, counted under the study lock in a study system attribute."""
    with creation_lock(url, name, reconnect=True):
        sid = storage.get_study_id_from_name(name)
        n = int(storage.get_study_system_attrs(sid).get(ATTR_JOINED, 0))
        storage.set_study_system_attr(sid, ATTR_JOINED, n + 1)
    return n


def retried_numbers(trials) -> set[int]:
    """Numbers of stale trials that the heartbeat callback re-queued (their retry stands in for them)."""
    out = set()
    for t in trials:
        out.update(t.system_attrs.get(RETRY_HISTORY, []))
    return out


def budget_used(study: optuna.Study) -> tuple[int, int]:
    """(trials counted against the budget, trials waiting to run): every trial but those a retry stands in
    for. The storage enforces the same rule in SQL when it creates a trial (ReconnectingRDBStorage._check_budget);
    this is the worker's look at it from its cached view."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    counted = [t for t in trials if t.number not in retried]
    waiting = sum(t.state == TrialState.WAITING for t in counted)
    return len(counted), waiting


class BudgetGate:
    """Admits a new trial only while the study's budget has room: N trials exactly, across all workers.

    The exact check is in the storage (`limit_new_trials`): Optuna's trial creation, in the transaction
    that locks the study row, refuses a trial beyond the budget with BudgetSpent. `enter` is the cheap
    look before it, from the worker's cached view of the study, that also notices a spent budget.
    """

    def __init__(self, opened: Opened):
        self.o = opened
        storage = study_storage(opened.study)
        if not isinstance(storage, TrialBudget):  # load_stored's storage is one: open_storage(cache=True)
            raise TypeError(f"BudgetGate needs a storage that is a search.storage.TrialBudget, got "
                            f"{type(storage).__name__}")
        storage.limit_new_trials(STUDY_STORED_AS["budget"])

    def budget(self) -> int:
        stored = StudyRecord.read(self.o.study).budget
        return int(stored if stored is not None else self.o.spec.n_trials)

    def enter(self) -> bool:
        """Whether the budget looks open for one more trial."""
        budget = self.budget()
        used, waiting = budget_used(self.o.study)
        if used >= budget and waiting == 0 and self.running():
            # A dead worker's trial must be failed and re-queued before we give up: Optuna does this only
            # at the start of a trial (inside optimize), and with the budget spent no trial would start,
            # so it would stay RUNNING for ever.
            fail_stale_trials(self.o.study)
            used, waiting = budget_used(self.o.study)
        return used < budget or waiting > 0

    def running(self) -> list[int]:
        """Numbers of RUNNING trials: with the budget spent, one of them may yet go stale and be re-queued."""
        return [t.number for t in self.o.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose heartbeat stopped (their worker died) and re-queue them via the retry callback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
