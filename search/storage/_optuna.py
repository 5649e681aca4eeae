"""The one place h2s-search reaches into Optuna's private internals: a compatibility layer.

Every private Optuna name the service relies on is spelled in this module and nowhere else; the rest
of search/ (and benchmarks/) uses the public names given to them here:

* `CachedStorageBase`: Optuna's cached storage (`_CachedStorage`) with public names for its backend, its
  lock, a study's cache (`StudyInfo`), where a trial sits, and a `refresh(study_id)` hook that Optuna's
  re-read of a study's trials goes through;
* `RDBStorageBase`: Optuna's `RDBStorage` with public hooks for the two private steps h2s-search changes
  (`check_new_trial`, `write_trial_attrs`), its ORM `models`, a `session()`, the stored time columns,
  the reconnect retry on the private methods Optuna's cached storage calls on its backend, and Optuna's
  schema check made without two connections at once (`check_schema`);
* `trial_id_of`, `frozen_trial_of`, `study_storage`, `study_id_of`, `backend_of`: private attributes of
  Optuna's Study, Trial, FrozenTrial and cached storage;
* `HyperbandPruner`: Optuna's Hyperband with each trial's bracket remembered;
* `finished_elsewhere(exc)`: whether an exception out of `study.optimize` says that the trial was
  finished under us (by type where Optuna gives one; its message text only where it gives nothing else);
* `incompatible_schema(exc)`: whether an exception is Optuna's refusal of tables another Optuna version set
  up (a bare RuntimeError: its message text is all there is to recognise);
* `RETRY_HISTORY`: the system attribute in which Optuna's retry callback lists the trials a retry stands in for.

Importing this module checks the installed Optuna against TESTED_OPTUNA (pyproject.toml pins the same
range) and says so in one line when it is outside. tests/search/test_optuna_adapter.py asserts the exact
shape of every internal used here: run it first after an Optuna upgrade.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial

from ._retry import RetryDepth, reconnecting

__all__ = ["RETRY_HISTORY", "TESTED_OPTUNA", "TRIAL_COMPLETE", "TRIAL_START", "CachedStorageBase",
           "HyperbandPruner", "RDBStorageBase", "StudyInfo", "backend_of", "finished_elsewhere",
           "frozen_trial_of", "incompatible_schema", "models", "study_id_of", "study_storage", "trial_id_of", "version_note"]

TESTED_OPTUNA = ((5, 0), (5, 1))  # the (major, minor) versions this module was tested with


def version_note(version: str) -> str | None:
    """One line saying that Optuna `version` is outside TESTED_OPTUNA; None inside it."""
    parts = version.split(".")
    try:
        minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        minor = None
    if minor in TESTED_OPTUNA:
        return None
    tested = " and ".join(f"{a}.{b}" for a, b in TESTED_OPTUNA)
    return (f"Optuna {version} is installed, but h2s-search was tested with Optuna {tested} only (it relies "
            f"on Optuna internals); if storage calls fail, install 'optuna>={TESTED_OPTUNA[0][0]}."
            f"{TESTED_OPTUNA[0][1]},<{TESTED_OPTUNA[-1][0]}.{TESTED_OPTUNA[-1][1] + 1}'")


# Once per process: a module is imported once.
if (_note := version_note(optuna.__version__)) is not None:
    logging.getLogger("h2s_search.storage").warning(_note)

# Optuna 5 stores a trial's start and end as naive UTC in these columns; its ORM turns them into local time.
TRIAL_START = models.TrialModel._datetime_start_utc
TRIAL_COMPLETE = models.TrialModel._datetime_complete_utc

RETRY_HISTORY = "retry_history"  # RetryHeartbeatStaleTrialCallback's system attribute: trial numbers
FIXED_PARAMS = "fixed_params"    # Study.enqueue_trial's system attribute: the parameters a trial was enqueued with


# --------------------------------------------------------------------------- Study, Trial, FrozenTrial
def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was enqueued with ({} for a trial that was not): a WAITING trial has no
    `params` yet, and a retry of an enqueued trial carries them over."""
    return dict(trial.system_attrs.get(FIXED_PARAMS) or {})


def frozen_trial_of(trial: optuna.Trial) -> FrozenTrial:
    """The FrozenTrial an optuna.Trial keeps of itself, which its `user_attrs` and `params` read."""
    return trial._cached_frozen_trial


def study_storage(study: optuna.Study):
    """The storage a study reads and writes through (ours, or Optuna's cache around ours)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    return study._study_id


def backend_of(storage) -> Any:
    """The storage inside Optuna's own cache (which a Study puts around any RDBStorage it is given); None
    for any other storage."""
    return storage._backend if isinstance(storage, _CachedStorage) else None


def finished_elsewhere(exc: BaseException) -> bool:
    """Whether an exception out of `study.optimize` says that its trial was finished by another process
    (a heartbeat retry failed it while it ran here). The caller still checks the trial's stored state.

    Optuna raises UpdateFinishedTrialError from a write; from `tell`, a bare ValueError "Cannot tell a FAIL
    trial."; and when the objective had succeeded, `_run_trial` turns that into AssertionError("Should not
    reach."). Only their text tells those two apart from any other ValueError or AssertionError.
    """
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return True
    if isinstance(exc, ValueError):
        return str(exc).startswith("Cannot tell a ")
    return isinstance(exc, AssertionError) and str(exc).startswith("Should not reach")


# Optuna's RDBStorage refuses, when it opens, tables whose schema another Optuna version set up: "The runtime
# optuna version X is no longer compatible with the table schema (set up by optuna Y). Please ...".
_SCHEMA_REFUSAL = "is no longer compatible with the table schema"


def incompatible_schema(exc: BaseException) -> bool:
    """Whether an exception out of opening an RDBStorage is Optuna's schema check refusing the database's
    tables (set up by another Optuna version): a bare RuntimeError, told apart from any other by its text."""
    return isinstance(exc, RuntimeError) and _SCHEMA_REFUSAL in str(exc)


# --------------------------------------------------------------------------- the cached storage
class StudyInfo:
    """What Optuna's cache holds of one study (a live view of its `_StudyInfo`).

    `trials`: number -> FrozenTrial; `unfinished_trial_ids`: the ids re-read on every refresh;
    `last_finished_trial_id`: every trial up to this id that is not in `unfinished_trial_ids` is finished
    and held, so a full refresh reads only the ids above it (and the unfinished ones).
    """

    __slots__ = ("_info",)

    def __init__(self, info: _StudyInfo) -> None:
        self._info = info

    @property
    def trials(self) -> dict[int, FrozenTrial]:
        return self._info.trials

    @property
    def unfinished_trial_ids(self) -> set[int]:
        return self._info.unfinished_trial_ids

    @property
    def last_finished_trial_id(self) -> int:
        return self._info.last_finished_trial_id

    @last_finished_trial_id.setter
    def last_finished_trial_id(self, trial_id: int) -> None:
        self._info.last_finished_trial_id = trial_id


class CachedStorageBase(_CachedStorage):
    """Optuna's cached storage, with public names for what a subclass needs.

    Optuna re-reads a study's unfinished and new trials (`_read_trials_from_remote_storage`) before every
    read of its trials; here that calls `refresh(study_id)`, which a subclass may override and which by
    default is Optuna's own re-read, `full_refresh(study_id)`.
    """

    @property
    def backend(self) -> RDBStorage:
        return self._backend

    @property
    def lock(self):
        """The lock that guards the cache (not re-entrant)."""
        return self._lock

    def study_info(self, study_id: int) -> StudyInfo | None:
        info = self._studies.get(study_id)
        return None if info is None else StudyInfo(info)

    def trial_location(self, trial_id: int) -> tuple[int, int] | None:
        """(study id, trial number) of a trial the cache holds, else None."""
        return self._trial_id_to_study_id_and_number.get(trial_id)

    def cached_trial(self, trial_id: int) -> FrozenTrial | None:
        """A finished trial the cache holds (never changes again), else None."""
        return self._get_cached_trial(trial_id)

    def add_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        """Put trials into the study's cache by number (the caller holds `lock`)."""
        self._add_trials_to_cache(study_id, trials)

    def full_refresh(self, study_id: int) -> None:
        """Optuna's own re-read of the study's unfinished and new trials, in full."""
        super()._read_trials_from_remote_storage(study_id)

    def refresh(self, study_id: int) -> None:
        self.full_refresh(study_id)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        self.refresh(study_id)


# --------------------------------------------------------------------------- the RDB storage
class RDBStorageBase(RDBStorage):
    """Optuna's RDBStorage, with public hooks for the private steps a subclass changes.

    * `check_new_trial(study_id, template_trial, session)` runs inside trial creation before the trial
      row is added, in the transaction that holds the study row (FOR UPDATE); it may raise to refuse it.
    * `write_trial_attrs(session, model, trial_id, attrs)` writes trial attributes inside a transaction:
      every user or system attribute Optuna sets, one by one or from an enqueued trial's template.

    The private methods Optuna's cached storage calls on its backend retry a lost connection here
    (`reconnecting`, which needs `retry_depth`: a RetryDepth, made in __init__ and after unpickling).
    """

    models = models

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, skip_compatibility_check: bool = False,
                 **kwargs: Any) -> None:
        self.retry_depth = RetryDepth()
        super().__init__(url, engine_kwargs, True, **kwargs)
        self.skip_compatibility_check = skip_compatibility_check
        if not skip_compatibility_check:
            self.check_schema()

    def check_schema(self) -> None:
        """Optuna's check that it can use the database's tables, without two connections at once where it can.

        Optuna's own check reads the schema's revision on a second connection while a transaction on the
        first is open: behind a transaction pooler each storage opening then holds two server connections at
        once, and P storages opening together through P server connections would each hold one and wait for
        another. Here the revision is read alone; only tables at another revision go on to Optuna's own check,
        which refuses them in its own words (`incompatible_schema`).
        """
        manager = self._version_manager
        if manager.get_current_version() != manager.get_head_version():
            manager.check_table_schema_compatibility()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["retry_depth"]  # a thread-local: each process and copy counts its own calls
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.retry_depth = RetryDepth()
        super().__setstate__(state)

    @contextlib.contextmanager
    def session(self, *, ignore_integrity_error: bool = False) -> Iterator[Any]:
        """An ORM session in one transaction, committed at the end, as Optuna's own methods use: an
        IntegrityError is rolled back and dropped when `ignore_integrity_error` (a racing writer added
        the same row), any other database error becomes Optuna's StorageInternalError."""
        with _create_scoped_session(self.scoped_session, ignore_integrity_error) as session:
            yield session

    def check_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session) -> None:
        """Called before each new trial is added (see the class); accepts every trial."""

    def write_trial_attrs(self, session, model, trial_id: int, attrs: dict[str, Any]) -> None:
        """Write `attrs` as `model` rows of the trial (see the class); by default Optuna's upserts."""
        for key, value in attrs.items():
            super()._set_trial_attr_without_commit(session, model, trial_id, key, value)

    def _get_prepared_new_trial(self, study_id, template_trial, session):
        self.check_new_trial(study_id, template_trial, session)
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    def _set_trial_attr_without_commit(self, session, model_cls, trial_id, key, value) -> None:
        self.write_trial_attrs(session, model_cls, trial_id, {key: value})

    # The private calls of Optuna's cached storage on its backend, and of fail_stale_trials.
    @reconnecting
    def _create_new_trial(self, study_id, template_trial=None):
        return super()._create_new_trial(study_id, template_trial)

    @reconnecting
    def _get_best_trial_id(self, study_id, direction):
        return super()._get_best_trial_id(study_id, direction)

    @reconnecting
    def _get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than):
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    @reconnecting
    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution, previous_distribution):
        return super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                        previous_distribution)

    @reconnecting
    def _get_stale_trial_ids(self, study_id):
        return super()._get_stale_trial_ids(study_id)


# The private methods of a backend that Optuna's cached storage and fail_stale_trials call (the test
# checks Optuna's source against this list, so that a new one cannot go without the retry).
BACKEND_PRIVATE_CALLS = ("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials",
                         "_set_trial_param")


# --------------------------------------------------------------------------- the pruner
class HyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, with each trial's bracket worked out once per study.

    At every rung decision Optuna works out the bracket of every trial in the study (a CRC of the study
    name and the trial number) to pick the trials of one bracket, a cost that grows with the study
    (benchmarks/README.md, fleet.py: Hyperband's Python at a rung, before and after). A trial's bracket
    never changes once the brackets are set up, so it is remembered here; the brackets and the decisions
    are Optuna's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bracket_memo: dict[int, int] = {}   # trial number -> bracket, for the study named below
        self.memo_study: str | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if study.study_name != self.memo_study:  # the same pruner given to another study
            self.bracket_memo.clear()
            self.memo_study = study.study_name
        return super().prune(study, trial)

    def bracket_of(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """The trial's bracket (0 until the brackets are set up), as Optuna works it out."""
        return self._get_bracket_id(study, trial)

    def _get_bracket_id(self, study, trial) -> int:
        bracket = self.bracket_memo.get(trial.number)
        if bracket is None:
            bracket = super()._get_bracket_id(study, trial)
            if self._pruners:  # the brackets are set up: the answer is final
                self.bracket_memo[trial.number] = bracket
        return bracket
