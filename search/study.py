"""Creating, loading and budgeting a study in shared storage.

`start` creates a study once (under a cross-process lock), stores the parsed study definition and the
dataset fingerprint as study user attributes, and enqueues the anchor only if none exists. Workers
rebuild everything from those attributes, never from a local file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from how2sign import __version__

from .errors import UserError
from .records import STUDY_STORED_AS, UNSET, StudyRecord, TrialRecord
from .spec import StudySpec, parse
from .storage import (
    RETRY_HISTORY,
    HyperbandPruner,
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


def build_pruner(spec: StudySpec):
    p = dict(spec.pruner)
    kind = p.pop("type", "none")
    epochs = spec.base_config().total_epochs
    if kind == "hyperband":
        # max_resource='auto' prunes nothing until a trial finishes; the epoch budget is known.
        return HyperbandPruner(max_resource=epochs, **p)
    if kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(**p)
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    return optuna.pruners.NopPruner()


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
            sid = _study_id(storage, spec.name)
            created = sid is None
            if created:
                study = optuna.create_study(study_name=spec.name, storage=storage,
                                            directions=list(spec.directions))
                with warnings.catch_warnings():  # experimental in Optuna; silenced here only
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(list(spec.metrics))
                note = (f"Trial with user attribute anchor=true is the {spec.anchor_name} setting, enqueued once "
                        "as the reference.") if spec.anchor_name else UNSET
                StudyRecord(spec=spec.raw, fingerprint=fingerprint, budget=n_trials or spec.n_trials,
                            data=data_desc, h2s_version=__version__, optuna_version=optuna.__version__,
                            anchor_note=note).write(study)
                from .artifacts import write_study_note

                write_study_note(study, spec)  # optuna-dashboard's study note: what the anchor is
            else:
                study = optuna.load_study(study_name=spec.name, storage=storage)
                record = StudyRecord.read(study)
                stored = record.fingerprint
                if stored != fingerprint:
                    raise FingerprintMismatch(
                        f"study {spec.name!r} was created on data with fingerprint {str(stored)[:12]}, "
                        f"this data has {fingerprint[:12]}; use the same data or another study name")
                spec = parse(record.spec or {}, f"study {spec.name!r} in {u.masked}")
                if n_trials is not None:
                    StudyRecord(budget=n_trials).write(study)
            enqueued = False
            if spec.anchor_name and not anchor_trials(study):
                study.enqueue_trial(spec.anchor_params,
                                    user_attrs=TrialRecord(anchor=True, anchor_name=spec.anchor_name).attrs())
                enqueued = True
    return Opened(study, spec, fingerprint, created, enqueued, url)


def load_stored(url: str | None, name: str, *, worker_index: int | None = 0, heartbeat: bool = True) -> Opened:
    """Attach to an existing study; the definition comes from the database.

    worker_index None: take the study's next worker number (0, 1, 2, ... across every machine), so that
    no two workers share a sampler seed and suggest the same trials. The study is loaded once, on a
    FleetCachedStorage: a worker's reads then cost the same with 8 or 256 workers running.
    """
    url = resolve_url(url)
    u = parse_url(url)
    with creation_lock(url, name):
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


class Admission:
    """The right to start one trial: `release(number)` notes which trial it became (the first time only).

    It holds no lock: the budget is enforced where the trial is created (see BudgetGate), so workers start
    trials concurrently. Releasing again is harmless.
    """

    def __init__(self):
        self.trial: int | None = None  # the number of the trial admitted, once released with it

    def release(self, trial: int | None = None) -> None:
        if trial is not None and self.trial is None:
            self.trial = trial


class BudgetGate:
    """Admits a new trial only while the study's budget has room: N trials exactly, across all workers.

    The exact check is in the storage (`limit_new_trials`): Optuna's trial creation, in the transaction
    that locks the study row, refuses a trial beyond the budget with BudgetSpent. `enter` is the cheap
    look before it, from the worker's cached view of the study, that also notices a spent budget.
    """

    def __init__(self, opened: Opened):
        self.o = opened
        storage = study_storage(opened.study)
        if hasattr(storage, "limit_new_trials"):
            storage.limit_new_trials(STUDY_STORED_AS["budget"])

    def budget(self) -> int:
        stored = StudyRecord.read(self.o.study).budget
        return int(stored if stored is not None else self.o.spec.n_trials)

    def enter(self) -> Admission | None:
        """An Admission while the budget looks open, else None."""
        budget = self.budget()
        used, waiting = budget_used(self.o.study)
        if used >= budget and waiting == 0 and self.running():
            # A dead worker's trial must be failed and re-queued before we give up: Optuna does this only
            # at the start of a trial (inside optimize), and with the budget spent no trial would start,
            # so it would stay RUNNING for ever.
            fail_stale_trials(self.o.study)
            used, waiting = budget_used(self.o.study)
        if used >= budget and waiting == 0:
            return None
        return Admission()

    def running(self) -> list[int]:
        """Numbers of RUNNING trials: with the budget spent, one of them may yet go stale and be re-queued."""
        return [t.number for t in self.o.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose heartbeat stopped (their worker died) and re-queue them via the retry callback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
