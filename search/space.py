"""config_from_trial: the ONLY place that calls trial.suggest_*. A trial's params read as a TrainConfig."""

from __future__ import annotations

from how2sign.config import TrainConfig
from how2sign.rules import ConfigError

from .arms import BY_NAME, ENCODER_PARAM
from .spec import StudySpec


def suggest(trial, p) -> object:
    if p.type == "categorical":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.type == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)


def config_from_trial(trial, spec: StudySpec) -> TrainConfig:
    """The study's fixed [train] settings, then one suggested value per [space] parameter.

    Raises how2sign.rules.ConfigError when the sampled values cannot form a model (for example a
    d_model that this nhead does not divide); the worker records that as the trial's fail_reason.
    """
    values = {p.name: suggest(trial, p) for p in spec.space}
    if ENCODER_PARAM in values:
        values.update(encoder_fields(values.pop(ENCODER_PARAM), spec))
    return spec.base_config().replace(values, f"trial {trial.number}")


def encoder_fields(arm: str, spec: StudySpec) -> dict:
    """The TrainConfig fields of one `encoder` arm (search/arms.py)."""
    chosen = BY_NAME[arm]
    if chosen.pretrained and not spec.encoder_init:
        raise ConfigError(f"encoder={arm} needs the study's encoder_init; `h2s-search start` sets it")
    return chosen.fields(spec.encoder_init)
