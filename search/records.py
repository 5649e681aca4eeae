"""What a trial and a study record: one typed schema each, and the only module that spells the attribute names.

Scripts, the report and optuna-dashboard read these user attributes, so their stored names are a contract
(docs/architecture.md lists them). Code uses the field names; `n_params` is stored as `params`, the name the
contract fixed before Optuna's own `trial.params` (the hyperparameters) was in the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


class _Unset:
    """A field the record does not touch (unlike None, which is stored as null)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()

CLIPS = "clips"  # TrialRecord.step_unit of a trial whose steps count train clips (how2sign.reporting)

# Field name -> stored user-attribute name, where the two differ.
STORED_AS = {"n_params": "params"}
STUDY_STORED_AS = {"budget": "n_trials"}


def _attrs(record, stored_as: dict) -> dict[str, Any]:
    """The set fields of a record under their stored names; non-finite floats become None (JSON has no NaN)."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is UNSET:
            continue
        out[stored_as.get(f.name, f.name)] = None if isinstance(value, float) and not math.isfinite(value) else value
    return out


@dataclass(frozen=True)
class TrialRecord:
    """A trial's user attributes. Fields left UNSET are neither written nor cleared."""

    # anchor
    anchor: bool | None = UNSET
    anchor_name: str | None = UNSET
    # size: the measured parameter count
    n_params: int | None = UNSET
    # progress
    epochs_run: int | None = UNSET
    best_epoch: int | None = UNSET
    step_unit: str | None = UNSET  # "clips" where the intermediate values' steps are train clips seen; else epochs
    # losses (at the best epoch)
    train_loss: float | None = UNSET
    val_loss: float | None = UNSET
    gap: float | None = UNSET
    # translation quality (completed trials)
    bleu: float | None = UNSET
    chrf: float | None = UNSET
    vocab_coverage: float | None = UNSET
    repetition_rate: float | None = UNSET
    verdict: str | None = UNSET
    # where and how fast
    device: str | None = UNSET
    host: str | None = UNSET
    slurm_job_id: str | None = UNSET  # "<array>_<task>" or "<job>" inside Slurm (search.slurm.slurm_job_id)
    slurm_restart_count: int | None = UNSET  # inside Slurm: the job's re-queues so far (0 on its first run)
    seconds: float | None = UNSET
    frames_per_second: float | None = UNSET
    # where the time went; the four add up to `seconds`
    seconds_train: float | None = UNSET
    seconds_validate: float | None = UNSET
    seconds_evaluate: float | None = UNSET
    seconds_other: float | None = UNSET
    # recovery
    resumed_from_epoch: int | None = UNSET
    fail_reason: str | None = UNSET
    preempted_at: str | None = UNSET  # a preempted attempt: when the signal reached its worker (ISO 8601, UTC)
    # outputs
    checkpoint: str | None = UNSET
    # reproducibility
    seed: int | None = UNSET
    h2s_version: str | None = UNSET
    torch_version: str | None = UNSET
    optuna_version: str | None = UNSET
    # diagnosis
    overfit_epoch: int | None = UNSET
    final_gap: float | None = UNSET
    lr_collapsed: bool | None = UNSET
    diagnosis: str | None = UNSET
    samples: list | None = UNSET
    # confirmation runs (trials of `<study>.confirm`): the parent trial re-trained, and the test split's scores.
    # On these trials val_loss, bleu and chrf are the validation split's, as on a search trial.
    confirms_trial: int | None = UNSET
    test_loss: float | None = UNSET
    test_bleu: float | None = UNSET
    test_chrf: float | None = UNSET

    @staticmethod
    def stored_name(field_name: str) -> str:
        return STORED_AS.get(field_name, field_name)

    def attrs(self) -> dict[str, Any]:
        """The set fields under their stored names; non-finite floats become None (JSON has no NaN)."""
        return _attrs(self, STORED_AS)

    def write(self, trial) -> None:
        """Store the set fields on a live trial, in one database transaction where the storage allows it."""
        from .storage import set_user_attrs

        set_user_attrs(trial, self.attrs())

    @classmethod
    def read(cls, trial) -> TrialRecord:
        """From a FrozenTrial (or anything with user_attrs); attributes the trial lacks read as None."""
        attrs = trial.user_attrs
        return cls(**{f.name: attrs.get(cls.stored_name(f.name)) for f in fields(cls)})

    def get(self, name: str):
        """A field's value, None when UNSET."""
        value = getattr(self, name)
        return None if value is UNSET else value


def stored_names() -> tuple[str, ...]:
    """Every user-attribute name a trial may carry, as stored."""
    return tuple(TrialRecord.stored_name(f.name) for f in fields(TrialRecord))


@dataclass(frozen=True)
class StudyRecord:
    """A study's user attributes: its definition, data and budget, as `start` stored them.

    Workers rebuild the study from these, never from a local file. Fields left UNSET are not written.
    """

    spec: dict | None = UNSET            # the parsed study file (search.spec.parse reads it back)
    fingerprint: str | None = UNSET      # the dataset's fingerprint; every worker must have the same data
    budget: int | None = UNSET           # trials the study runs, across all workers; stored as `n_trials`
    data: str | None = UNSET             # a description of the data the study was created on
    h2s_version: str | None = UNSET
    optuna_version: str | None = UNSET
    anchor_note: str | None = UNSET      # says which trial is the anchor, for people reading the attributes
    confirm: dict | None = UNSET         # on `<study>.confirm` only: what it re-trains (ConfirmPlan.attr())
    slurm_arrays: list | None = UNSET    # Slurm array job ids `h2s-search slurm` submitted, oldest first

    def attrs(self) -> dict[str, Any]:
        return _attrs(self, STUDY_STORED_AS)

    def write(self, study) -> None:
        """Store the set fields on a study (Optuna writes a study's attributes one at a time)."""
        for name, value in self.attrs().items():
            study.set_user_attr(name, value)

    @classmethod
    def read(cls, study) -> StudyRecord:
        """From a Study (or anything with user_attrs); attributes the study lacks read as None."""
        return cls._from(study.user_attrs)

    @classmethod
    def read_stored(cls, storage, study_id: int) -> StudyRecord:
        """Straight from a storage, before the study is loaded (a worker loads it once, with its sampler)."""
        return cls._from(storage.get_study_user_attrs(study_id))

    @classmethod
    def _from(cls, attrs: dict) -> StudyRecord:
        return cls(**{f.name: attrs.get(STUDY_STORED_AS.get(f.name, f.name)) for f in fields(cls)})


def study_stored_names() -> tuple[str, ...]:
    """Every user-attribute name a study may carry, as stored."""
    return tuple(STUDY_STORED_AS.get(f.name, f.name) for f in fields(StudyRecord))


# --------------------------------------------------------------------------- the confirmation study
CONFIRM_SUFFIX = ".confirm"
SEED = "seed"  # the TrainConfig field each confirmation run's seed is enqueued as, a parameter of its space


def confirmation_name(parent: str) -> str:
    """The linked confirmation study of a search study, in the same storage: `<parent>.confirm`."""
    return parent + CONFIRM_SUFFIX


@dataclass(frozen=True)
class ConfirmConfig:
    """One configuration a confirmation re-trains: a parent trial (the anchor among them) and its params."""

    trial: int
    anchor: bool
    params: dict

    def attr(self) -> dict[str, Any]:
        return {"trial": self.trial, "anchor": self.anchor, "params": dict(self.params)}


@dataclass(frozen=True)
class ConfirmPlan:
    """The `confirm` study attribute: {"of": parent name, "top": K, "seeds": [...], "configs": [...]}.

    Every config is re-trained once per seed: len(configs) x len(seeds) runs.
    """

    of: str
    top: int
    seeds: tuple[int, ...]
    configs: tuple[ConfirmConfig, ...]

    def attr(self) -> dict[str, Any]:
        return {"of": self.of, "top": self.top, "seeds": list(self.seeds),
                "configs": [c.attr() for c in self.configs]}

    @classmethod
    def from_attr(cls, attr: dict) -> ConfirmPlan:
        configs = tuple(ConfirmConfig(int(c["trial"]), bool(c["anchor"]), dict(c["params"]))
                        for c in attr["configs"])
        return cls(str(attr["of"]), int(attr["top"]), tuple(int(s) for s in attr["seeds"]), configs)

    @property
    def runs(self) -> int:
        return len(self.configs) * len(self.seeds)
