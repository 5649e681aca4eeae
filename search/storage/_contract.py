"""The contract between FleetCachedStorage and its backend, beyond Optuna's RDBStorage.

ReconnectingRDBStorage provides it; FleetCachedStorage refuses a backend that does not (a TypeError when
it is built), so neither looks for the other's methods at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

# The per-trial tables a narrow read reports rows of, by name, in the order of its "kind" column (1, 2, ...).
NARROW_TABLES = ("params", "intermediate", "user", "system", "values")


@runtime_checkable
class UserAttrsWriter(Protocol):
    """A storage that writes several user attributes of a trial at once (search.storage.set_user_attrs)."""

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes in one transaction (or one statement)."""
        ...


@runtime_checkable
class TrialBudget(Protocol):
    """A storage that refuses a new trial beyond the study's budget inside Optuna's own trial creation
    (ReconnectingRDBStorage, and FleetCachedStorage through its backend); search.study.BudgetGate needs one."""

    def limit_new_trials(self, budget_attr: str | None) -> None:
        """Create a new trial only while the study's budget (its user attribute `budget_attr`) has room."""
        ...


@runtime_checkable
class FleetBackend(UserAttrsWriter, TrialBudget, Protocol):
    """What FleetCachedStorage calls on its backend besides RDBStorage's own methods.

    The narrow read is what keeps a worker's reads flat as the fleet grows: `row_marks` once, at a full
    read, then `narrow_read` for every read after it. It is exact only if per-trial rows are only ever
    added: a backend writes an overwritten attribute as a new row (with a new row id).
    """

    def row_marks(self) -> dict[str, int]:
        """The highest row id of each table in NARROW_TABLES now: rows above it are news to a reader."""
        ...

    def narrow_read(self, study_id: int, since: int, marks: dict[str, int], pending: dict[str, list[int]],
                    open_ids: Iterable[int]) -> tuple[list[tuple], dict[str, list[tuple]]]:
        """What changed in a study since a reader's last look, in one statement: (listing, rows).

        listing: (trial id, number, state, start, complete) of the trials above `since`, in `open_ids` (the
        reader holds them as unfinished) or in `pending["trials"]`; times as stored (naive UTC).
        rows: per name in NARROW_TABLES, the rows whose id is above `marks[name]` or in `pending[name]`, as
        (row id, trial id, key, value[, distribution]), in id order.
        """
        ...

    def add_trial_attrs(self, trial_id: int, attrs: dict[str, Any], *, user: bool) -> bool:
        """Add attributes the trial does not have yet in one statement, if it is RUNNING; False, with
        nothing written, when it is not running or already has one of the keys."""
        ...
