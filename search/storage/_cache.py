"""A worker's reads that do not grow with the fleet: Optuna's cached storage, refreshed incrementally.

Optuna's `_CachedStorage` keeps finished trials, but re-reads every unfinished trial in full (parameters,
attributes, intermediate values) on every `get_all_trials`: with 256 workers that is 256 running trials,
three times per `ask` and again at each pruning rung. Here each read instead runs a few narrow queries:
the id and state of every trial of the study, and the parameter, intermediate-value and attribute rows
added since the last read (row ids above a mark). Trials that are new, changed state or were written by
this process are loaded in full. So the set of trials, their states, and whatever other workers *added*
to running trials (reports, rung results) are exact on every read; only an attribute another worker
*overwrote* in place may lag, by at most `ttl` seconds, the interval of a full re-read of running trials.
Writes and heartbeats are never cached. See docs/architecture.md ("Storage").
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.trial import FrozenTrial

from ._url import CACHE_SECONDS


class FleetCachedStorage(_CachedStorage):
    """`_CachedStorage` whose full re-reads of running trials happen at most every `ttl` seconds; reads in
    between cost a few index range scans (see the module's docstring)."""

    def __init__(self, backend: RDBStorage, ttl: float = CACHE_SECONDS) -> None:
        super().__init__(backend)
        self.ttl = float(ttl)
        self._reset_clock()

    def _reset_clock(self) -> None:
        self._full_at: dict[int, float] = {}      # study id -> monotonic time of its last full read
        self._dirty: dict[int, set[int]] = {}     # study id -> trial ids written by this process since
        self._names: dict[str, tuple[float, int]] = {}
        self._user_attrs: dict[int, tuple[float, dict[str, Any]]] = {}
        self._marks: dict[int, dict[str, int]] = {}  # study id -> highest row id seen per per-trial table

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._reset_clock()  # another process's clock: its first read is a full one

    @property
    def engine(self):
        return self._backend.engine

    def invalidate(self, study_id: int | None = None) -> None:
        """Make the next read of the study (or of every study) a full one."""
        with self._lock:
            if study_id is None:
                self._full_at.clear()
                self._marks.clear()
                self._user_attrs.clear()
            else:
                self._full_at.pop(study_id, None)
                self._marks.pop(study_id, None)
                self._user_attrs.pop(study_id, None)

    # ------------------------------------------------------------------ study look-ups
    def _fresh(self, stamp: float) -> bool:
        return self.ttl > 0 and time.monotonic() - stamp < self.ttl

    def get_study_id_from_name(self, study_name: str) -> int:
        with self._lock:
            hit = self._names.get(study_name)
        if hit is not None and self._fresh(hit[0]):
            return hit[1]
        study_id = self._backend.get_study_id_from_name(study_name)
        with self._lock:
            self._names[study_name] = (time.monotonic(), study_id)
        return study_id

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        with self._lock:
            hit = self._user_attrs.get(study_id)
        if hit is not None and self._fresh(hit[0]):
            return copy.deepcopy(hit[1])
        attrs = self._backend.get_study_user_attrs(study_id)
        with self._lock:
            self._user_attrs[study_id] = (time.monotonic(), copy.deepcopy(attrs))
        return attrs

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        try:
            super().set_study_user_attr(study_id, key, value)
        finally:
            with self._lock:
                self._user_attrs.pop(study_id, None)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._names = {k: v for k, v in self._names.items() if v[1] != study_id}
            self._user_attrs.pop(study_id, None)
            self._full_at.pop(study_id, None)
            self._dirty.pop(study_id, None)
        super().delete_study(study_id)

    # ------------------------------------------------------------------ trial writes
    # A row this process adds (a report, a parameter, a new attribute) comes back with the next read's
    # narrow queries, and a state change with its state listing. Only an attribute overwritten in place
    # leaves no trace there: that trial is marked, and the next read loads it in full.
    def _mark(self, trial_id: int, table: str = "", keys=()) -> None:
        with self._lock:
            where = self._trial_id_to_study_id_and_number.get(trial_id)
            if where is None or where[0] not in self._studies:
                return
            cached = self._studies[where[0]].trials.get(where[1])
            if cached is None or not hasattr(self._backend, "_trial_news") or any(
                    k in (cached.user_attrs if table == "user" else cached.system_attrs) for k in keys):
                self._dirty.setdefault(where[0], set()).add(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        try:
            super().set_trial_user_attr(trial_id, key, value)
        finally:
            self._mark(trial_id, "user", (key,))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        try:
            super().set_trial_system_attr(trial_id, key, value)
        finally:
            self._mark(trial_id, "system", (key,))

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes in one transaction, where the backend offers it."""
        try:
            if hasattr(self._backend, "set_trial_user_attrs"):
                self._backend.set_trial_user_attrs(trial_id, attrs)
            else:
                for key, value in attrs.items():
                    self._backend.set_trial_user_attr(trial_id, key, value)
        finally:
            self._mark(trial_id, "user", tuple(attrs))

    # ------------------------------------------------------------------ reads
    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """What a pruner reads of its own trial at every epoch: one query, not a whole trial's six."""
        with self._lock:
            trial = self._get_cached_trial(trial_id)
        if trial is not None:
            return trial.system_attrs
        if hasattr(self._backend, "_trial_system_attrs"):
            return self._backend._trial_system_attrs(trial_id)
        return super().get_trial_system_attrs(trial_id)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            known = study_id in self._studies and study_id in self._marks
            full = (not known or self.ttl <= 0 or not hasattr(self._backend, "_trial_news")
                    or now - self._full_at.get(study_id, -math.inf) >= self.ttl)
            if full:
                self._dirty.pop(study_id, None)  # the full read below sees every write made so far
        if not full:
            self._light_refresh(study_id)
            return
        # Marks first: a row added during the full read is then read again next time, never missed.
        marks = self._backend._child_marks() if hasattr(self._backend, "_child_marks") else None
        super()._read_trials_from_remote_storage(study_id)
        with self._lock:
            self._full_at[study_id] = now
            if marks is not None:
                self._marks[study_id] = marks

    def _light_refresh(self, study_id: int) -> None:
        with self._lock:
            marks = self._marks[study_id]
        rows, news, marks = self._backend._trial_news(study_id, marks)
        with self._lock:
            study = self._studies.setdefault(study_id, _StudyInfo())
            known = {t._trial_id: t.state for t in study.trials.values()}
            dirty = self._dirty.pop(study_id, set())
            want = {tid for tid, state in rows if known.get(tid) != state} | (dirty & known.keys())
            self._apply(study, news, skip=want)
            self._marks[study_id] = marks
        if not want:
            return
        try:
            trials = self._backend._get_trials(study_id, None, included_trial_ids=want,
                                               trial_id_greater_than=max(want))
        except BaseException:
            with self._lock:
                self._dirty.setdefault(study_id, set()).update(dirty)
            raise
        with self._lock:
            self._absorb(study_id, trials)

    def _apply(self, study: _StudyInfo, news: dict[str, list], skip: set[int]) -> None:
        """Other workers' new rows onto copies of the cached running trials (the caller holds the lock).

        Copies, not edits: a caller may still hold the old FrozenTrial objects (deepcopy=False).
        """
        fresh: dict[int, FrozenTrial] = {}
        for name, rows in news.items():
            for row in rows:
                tid = row[0]
                where = self._trial_id_to_study_id_and_number.get(tid)
                if tid in skip or where is None or where[1] not in study.trials:
                    continue  # reloaded in full below, or not ours to know yet
                t = fresh.get(tid)
                if t is None:
                    old = study.trials[where[1]]
                    if old.state.is_finished():
                        continue
                    t = fresh[tid] = copy.copy(old)
                    t.params, t.distributions = dict(old.params), dict(old.distributions)
                    t.user_attrs, t.system_attrs = dict(old.user_attrs), dict(old.system_attrs)
                    t.intermediate_values = dict(old.intermediate_values)
                if name == "params":
                    t.params[row[1]], t.distributions[row[1]] = row[2], row[3]
                elif name == "intermediate":
                    t.intermediate_values[row[1]] = row[2]
                elif name == "user":
                    t.user_attrs[row[1]] = row[2]
                else:
                    t.system_attrs[row[1]] = row[2]
        for t in fresh.values():
            study.trials[t.number] = t

    def _absorb(self, study_id: int, trials: list[FrozenTrial]) -> None:
        """What _CachedStorage does with freshly read trials (the caller holds the lock)."""
        study = self._studies[study_id]
        self._add_trials_to_cache(study_id, trials)
        for trial in trials:
            if not trial.state.is_finished():
                study.unfinished_trial_ids.add(trial._trial_id)
                continue
            study.unfinished_trial_ids.discard(trial._trial_id)
