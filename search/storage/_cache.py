"""A worker's reads that do not grow with the fleet: Optuna's cached storage, refreshed incrementally.

Optuna's `_CachedStorage` keeps finished trials, but re-reads every unfinished trial in full (parameters,
attributes, intermediate values) on every `get_all_trials`: with 256 workers that is 256 running trials,
several times per trial and again at each pruning rung. Here each read is one statement (one round trip,
one snapshot): the states of the trials this cache holds as unfinished and of the new ones, and the
parameter, intermediate-value, attribute and value rows added since the last read (row ids above a mark,
plus the ids skipped below it, which a slower transaction may still commit). A finished trial never
changes, and ReconnectingRDBStorage writes an overwritten attribute as a new row, so the trials, their
states, values, reports and attributes are exact on every read, whoever wrote them through this storage.
Only a program that updates a row in place (plain Optuna overwriting an attribute) is seen late: at the
next full re-read, every `ttl` seconds ($H2S_CACHE_SECONDS). Writes and heartbeats are never cached.
That one statement is the narrow read (`FleetBackend.narrow_read`); the backend's side of the contract
is `search.storage._contract.FleetBackend`. See docs/architecture.md ("Storage").
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ._contract import FleetBackend
from ._narrow import local_time
from ._optuna import CachedStorageBase, trial_id_of
from ._url import CACHE_SECONDS

LOOKUP_SECONDS = 30.0  # a study's id and user attributes (its budget, its definition) are re-read this often


class FleetCachedStorage(CachedStorageBase):
    """Optuna's cached storage whose reads cost one small statement, with a full re-read at most every
    `ttl` seconds (see the module's docstring). The backend must be an RDBStorage that is a FleetBackend."""

    def __init__(self, backend: RDBStorage, ttl: float = CACHE_SECONDS) -> None:
        if not (isinstance(backend, RDBStorage) and isinstance(backend, FleetBackend)):
            raise TypeError(f"FleetCachedStorage needs an RDBStorage that is a FleetBackend (such as "
                            f"ReconnectingRDBStorage), not {type(backend).__name__}")
        super().__init__(backend)
        self.ttl = float(ttl)
        self._reset_clock()

    def _reset_clock(self) -> None:
        self._full_at: dict[int, float] = {}      # study id -> monotonic time of its last full read
        self._names: dict[str, tuple[float, int]] = {}  # study name -> (when read, its id)
        self._study_attrs: dict[int, tuple[float, dict[str, Any]]] = {}  # study id -> (when, user attributes)
        self._readers: dict[int, _Reader] = {}    # study id -> where its next narrow read starts
        self._own: set[int] = set()               # running trials this process created or popped

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._reset_clock()  # another process's clock: its first read is a full one

    @property
    def engine(self):
        return self.backend.engine

    def invalidate(self, study_id: int | None = None) -> None:
        """Make the next read of the study (or of every study) a full one."""
        with self.lock:
            if study_id is None:
                self._full_at.clear()
                self._readers.clear()
                self._study_attrs.clear()
            else:
                self._full_at.pop(study_id, None)
                self._readers.pop(study_id, None)
                self._study_attrs.pop(study_id, None)

    # ------------------------------------------------------------------ study look-ups
    def _fresh(self, stamp: float) -> bool:
        """Study look-ups (id, user attributes such as the budget) are kept at most LOOKUP_SECONDS."""
        return self.ttl > 0 and time.monotonic() - stamp < min(self.ttl, LOOKUP_SECONDS)

    def get_study_id_from_name(self, study_name: str) -> int:
        with self.lock:
            hit = self._names.get(study_name)
        if hit is not None and self._fresh(hit[0]):
            return hit[1]
        study_id = self.backend.get_study_id_from_name(study_name)
        with self.lock:
            self._names[study_name] = (time.monotonic(), study_id)
        return study_id

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        with self.lock:
            hit = self._study_attrs.get(study_id)
        if hit is not None and self._fresh(hit[0]):
            return copy.deepcopy(hit[1])
        attrs = self.backend.get_study_user_attrs(study_id)
        with self.lock:
            self._study_attrs[study_id] = (time.monotonic(), copy.deepcopy(attrs))
        return attrs

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        try:
            super().set_study_user_attr(study_id, key, value)
        finally:
            with self.lock:
                self._study_attrs.pop(study_id, None)

    def delete_study(self, study_id: int) -> None:
        with self.lock:
            self._names = {k: v for k, v in self._names.items() if v[1] != study_id}
        self.invalidate(study_id)
        super().delete_study(study_id)

    # ------------------------------------------------------------------ trial writes
    # The trials this process runs ("own": created or popped here) change only through this process: no
    # other worker writes their parameters, reports or attributes (another may only fail one whose
    # heartbeat stopped, which the next read of the study shows, and which any write then refuses). So
    # each write to an own trial is also applied to its cached copy, and reading it (get_trial, the
    # pruner's look at its system attributes every epoch) costs no statement at all.
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self.lock:
            trial = self._cached(trial_id)
            if trial is not None and trial.state == TrialState.RUNNING and study_id in self._readers:
                self._own.add(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        with self.lock:
            self._own.discard(trial_id)
        done = super().set_trial_state_values(trial_id, state, values)
        if done and state == TrialState.RUNNING:  # popped: one read brings its state and start time
            with self.lock:
                where = self.trial_location(trial_id)
                narrow = where is not None and where[0] in self._readers
            if narrow:
                self.refresh(where[0])
                with self.lock:
                    trial = self._cached(trial_id)
                    if trial is not None and trial.state == TrialState.RUNNING:
                        self._own.add(trial_id)
        return done

    def _own_trial(self, trial_id: int) -> FrozenTrial | None:
        """The cached copy of a trial this process runs, else None (the caller holds the lock)."""
        return self._cached(trial_id) if trial_id in self._own else None

    def _write_through(self, trial_id: int, change) -> None:
        with self.lock:
            trial = self._own_trial(trial_id)
            if trial is None:
                return
            if trial.state.is_finished():
                self._own.discard(trial_id)
                return
            trial = _copy(trial)  # copies: a caller may hold the old object
            change(trial)
            study_id, number = self.trial_location(trial_id)
            self.study_info(study_id).trials[number] = trial

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution) -> None:
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

        def change(t: FrozenTrial) -> None:
            t.params[param_name] = distribution.to_external_repr(param_value_internal)
            t.distributions[param_name] = distribution

        self._write_through(trial_id, change)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._write_through(trial_id, lambda t: t.intermediate_values.__setitem__(step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_user_attrs(trial_id, {key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._added(trial_id, {key: value}, user=False):
            super().set_trial_system_attr(trial_id, key, value)
        self._write_through(trial_id, lambda t: t.system_attrs.__setitem__(key, copy.deepcopy(value)))

    def _added(self, trial_id: int, attrs: dict[str, Any], *, user: bool) -> bool:
        """New attributes of a trial this process runs, in one statement (FleetBackend.add_trial_attrs):
        its cached copy is exact, so it tells whether a key is new. False, with nothing written, for any
        other write, which then takes the backend's transaction (and its errors)."""
        with self.lock:
            own = self._own_trial(trial_id)
            new = bool(attrs) and own is not None and not own.state.is_finished() and not (
                attrs.keys() & (own.user_attrs if user else own.system_attrs).keys())
        return new and self.backend.add_trial_attrs(trial_id, attrs, user=user)

    def limit_new_trials(self, budget_attr: str | None) -> None:
        """See ReconnectingRDBStorage.limit_new_trials."""
        self.backend.limit_new_trials(budget_attr)

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes in one statement (new keys of a trial this process runs), else in one
        transaction."""
        if not self._added(trial_id, attrs, user=True):
            self.backend.set_trial_user_attrs(trial_id, attrs)
        self._write_through(trial_id, lambda t: t.user_attrs.update(copy.deepcopy(attrs)))

    # ------------------------------------------------------------------ reads
    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        """As Optuna's cached storage, with the trials ordered by sorting their numbers (plain ints)
        instead of calling a key function on every trial: a few times cheaper at 5,000 trials."""
        self.refresh(study_id)
        with self.lock:
            trials = self.study_info(study_id).trials
            out = [trials[number] for number in sorted(trials)]
        if states is not None:
            out = [t for t in out if t.state in states]
        return copy.deepcopy(out) if deepcopy else out

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """A finished trial from the cache; an unfinished one after a narrow read of its study (one
        statement, exact for everything written through this storage), where Optuna re-reads it in full."""
        with self.lock:
            where = self.trial_location(trial_id)
            narrow = where is not None and where[0] in self._readers and self.study_info(where[0]) is not None
            trial = self.cached_trial(trial_id)
            own = self._own_trial(trial_id)
            if trial is None and own is not None:
                return _copy(own)
        if trial is not None or not narrow or self.ttl <= 0:
            return trial if trial is not None else self.backend.get_trial(trial_id)
        self.refresh(where[0])
        with self.lock:
            trial = self._cached(trial_id)
        # A copy: optuna.Trial records its suggestions in the FrozenTrial it holds.
        return self.backend.get_trial(trial_id) if trial is None else _copy(trial)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """What a pruner reads of its trial at every epoch: nothing for an own trial (see above), else one
        query, not a whole trial's six."""
        with self.lock:
            trial = self.cached_trial(trial_id) or self._own_trial(trial_id)
        if trial is not None:
            return dict(trial.system_attrs)
        return self.backend.get_trial_system_attrs(trial_id)

    def refresh(self, study_id: int) -> None:
        """Before a read of the study's trials: the narrow read, or every `ttl` seconds a full one."""
        now = time.monotonic()
        with self.lock:
            reader = self._readers.get(study_id) if self.study_info(study_id) is not None else None
            full = reader is None or self.ttl <= 0 or now - self._full_at.get(study_id, -math.inf) >= self.ttl
        if not full:
            self._narrow_read(study_id, reader, now)
            return
        # Marks first: a row added during the full read is then read again next time, never missed.
        marks = self.backend.row_marks()
        self.full_refresh(study_id)
        with self.lock:
            self._full_at[study_id] = now
            since = max((trial_id_of(t) for t in self.study_info(study_id).trials.values()), default=-1)
            self._readers[study_id] = _Reader(since, marks)

    def _narrow_read(self, study_id: int, reader: _Reader, now: float) -> None:
        """One statement: the new and unfinished trials' states, and every per-trial row added since."""
        with self.lock:
            study = self.study_info(study_id)
            since, marks, pending = reader.since, dict(reader.marks), reader.pending_ids(now)
            open_ids = set(study.unfinished_trial_ids)
        listing, rows = self.backend.narrow_read(study_id, since, marks, pending, open_ids)
        with self.lock:
            fresh = self._apply(listing, rows)
            self.add_to_cache(study_id, list(fresh.values()))
            for tid, _number, state, _start, _complete in listing:
                if state.is_finished():
                    study.unfinished_trial_ids.discard(tid)
                else:
                    study.unfinished_trial_ids.add(tid)
            reader.advance("trials", [tid for tid, *_ in listing], now)
            for name, got in rows.items():
                reader.advance(name, [row[0] for row in got], now)
            # Every trial up to the last listing's start has been listed (or is pending): Optuna's own full
            # read may start above it.
            late = reader.pending.get("trials")
            study.last_finished_trial_id = max(study.last_finished_trial_id,
                                               min(since, min(late, default=since + 1) - 1))

    def _apply(self, listing: list[tuple], rows: dict[str, list[tuple]]) -> dict:
        """The news onto copies of the cached trials (the caller holds the lock); returns them by id.

        Copies, not edits: a caller may still hold the old FrozenTrial objects (deepcopy=False). A finished
        trial never changes, so rows for one the cache holds as finished are ones it has already seen.
        """
        fresh: dict[int, FrozenTrial] = {}
        for tid, number, state, start, complete in listing:
            old = self._cached(tid)
            if old is None:
                fresh[tid] = FrozenTrial(number=number, state=state, value=None, datetime_start=local_time(start),
                                         datetime_complete=local_time(complete), params={}, distributions={},
                                         user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=tid)
            elif old.state != state:
                t = fresh[tid] = _copy(old)
                t.state, t.datetime_start, t.datetime_complete = state, local_time(start), local_time(complete)
        values: dict[int, dict[int, float]] = {}
        for name, got in rows.items():
            for row in got:
                tid = row[1]
                t = fresh.get(tid)
                if t is None:
                    old = self._cached(tid)
                    if old is None or old.state.is_finished():
                        continue
                    t = fresh[tid] = _copy(old)
                if name == "params":
                    t.params[row[2]], t.distributions[row[2]] = row[3], row[4]
                elif name == "intermediate":
                    t.intermediate_values[row[2]] = row[3]
                elif name == "user":
                    t.user_attrs[row[2]] = row[3]
                elif name == "system":
                    t.system_attrs[row[2]] = row[3]
                else:
                    values.setdefault(tid, dict(enumerate(t.values or [])))[row[2]] = row[3]
        for tid, by_objective in values.items():
            fresh[tid].values = [by_objective[k] for k in sorted(by_objective)]
        return fresh

    def _cached(self, trial_id: int) -> FrozenTrial | None:
        """The cached copy of any trial, finished or not (the caller holds the lock)."""
        where = self.trial_location(trial_id)
        return None if where is None else self.study_info(where[0]).trials.get(where[1])


def _copy(trial: FrozenTrial) -> FrozenTrial:
    t = copy.copy(trial)
    t.params, t.distributions = dict(trial.params), dict(trial.distributions)
    t.user_attrs, t.system_attrs = dict(trial.user_attrs), dict(trial.system_attrs)
    t.intermediate_values = dict(trial.intermediate_values)
    return t


# A row becomes visible when the transaction that wrote it commits, which is not always in the order of
# row ids: a reader that has seen id 101 may not yet have seen id 100. So the ids skipped below the highest
# one seen are asked for again, by id, for this many seconds (our writes' transactions are short);
# skipped ids are also rows of other studies and rolled-back inserts, which simply never turn up.
PENDING_SECONDS = 10.0
PENDING_LIMIT = 5000  # a jump of more ids than this (another study's burst) is not tracked id by id


class _Reader:
    """Where a study's next narrow read starts: the highest trial id and row id per table seen so far,
    and the ids skipped below them that may yet turn up."""

    def __init__(self, since: int, marks: dict[str, int]):
        self.since, self.marks = since, dict(marks)
        self.pending: dict[str, dict[int, float]] = {}  # table ("trials" for trial ids) -> id -> until when

    def pending_ids(self, now: float) -> dict[str, list[int]]:
        for ids in self.pending.values():
            for gone in [i for i, until in ids.items() if until < now]:
                del ids[gone]
        return {name: sorted(ids) for name, ids in self.pending.items() if ids}

    def advance(self, name: str, seen: list[int], now: float) -> None:
        """Note the ids a read returned for `name`; the ones it skipped become pending."""
        waiting = self.pending.setdefault(name, {})
        for i in seen:
            waiting.pop(i, None)
        old = self.since if name == "trials" else self.marks.get(name, 0)
        top = max(seen, default=old)
        if top <= old:
            return
        if top - old <= PENDING_LIMIT:
            got = set(seen)
            waiting.update((i, now + PENDING_SECONDS) for i in range(old + 1, top) if i not in got)
        if name == "trials":
            self.since = top
        else:
            self.marks[name] = top
