"""The narrow read's one statement (see ReconnectingRDBStorage.narrow_read), and its rows as Optuna holds them."""

from __future__ import annotations

import datetime
import json

import sqlalchemy as sa
from optuna import distributions

from ._contract import NARROW_TABLES
from ._optuna import TRIAL_COMPLETE, TRIAL_START, models


def columns(name: str) -> tuple:
    """(model, row id, key column, number column, text column) of one per-trial table."""
    if name == "params":
        m = models.TrialParamModel
        return m, m.param_id, m.param_name, m.param_value, m.distribution_json
    if name == "intermediate":
        m = models.TrialIntermediateValueModel
        return m, m.trial_intermediate_value_id, m.step, m.intermediate_value, m.intermediate_value_type
    if name == "values":
        m = models.TrialValueModel
        return m, m.trial_value_id, m.objective, m.value, m.value_type
    m = models.TrialUserAttributeModel if name == "user" else models.TrialSystemAttributeModel
    pk = m.trial_user_attribute_id if name == "user" else m.trial_system_attribute_id
    return m, pk, m.key, None, m.value_json


def statement(dialect: str):
    """The narrow read for one SQL dialect, all its values bound parameters: a UNION ALL of the study's
    listed trials (kind 0) and each per-trial table's new rows (kind 1, 2, ... in NARROW_TABLES order), as
    (kind, pk, trial_id, k, num, txt, ts1, ts2), ordered by kind and row id."""
    trial = models.TrialModel
    text, number = sa.String, sa.Float

    def typed(value, type_):
        return sa.cast(sa.null(), type_) if value is None else sa.cast(value, type_)

    def moment(column):  # not cast: SQLite would turn a stored timestamp into a number
        return sa.cast(sa.null(), sa.DateTime) if column is None else column

    def branch(kind, pk, trial_id, key, num, value, where, start=None, complete=None):
        return sa.select(sa.literal(kind, sa.Integer).label("kind"), pk.label("pk"), trial_id.label("trial_id"),
                         typed(key, text).label("k"), typed(num, number).label("num"),
                         typed(value, text).label("txt"), moment(start).label("ts1"),
                         moment(complete).label("ts2")).where(where)

    study, since = sa.bindparam("study_id", type_=sa.Integer), sa.bindparam("since", type_=sa.Integer)
    parts = [branch(0, trial.trial_id, trial.trial_id, trial.state, trial.number, None,
                    sa.and_(trial.study_id == study,
                            sa.or_(trial.trial_id > since, _one_of(dialect, trial.trial_id, "ids_t"))),
                    TRIAL_START, TRIAL_COMPLETE)]
    for kind, name in enumerate(NARROW_TABLES, start=1):
        model, pk, key, num, value = columns(name)
        parts.append(branch(kind, pk, model.trial_id, key, num, value, sa.and_(
            model.trial_id == trial.trial_id, trial.study_id == study,
            sa.or_(pk > sa.bindparam(f"mark_{name}", type_=sa.Integer), _one_of(dialect, pk, f"ids_{name}")))))
    union = sa.union_all(*parts).subquery()
    return sa.select(union).order_by(union.c.kind, union.c.pk)


def _one_of(dialect: str, column, name: str):
    """`column IN :name`; on PostgreSQL one array parameter (`= ANY(:name)`), not one placeholder per id."""
    if dialect != "postgresql":
        return column.in_(sa.bindparam(name, expanding=True))
    from sqlalchemy.dialects.postgresql import ARRAY

    return column == sa.any_(sa.bindparam(name, type_=ARRAY(sa.Integer)))


def decode(name: str, trial_id: int, key: str, num: float | None, text: str | None) -> tuple:
    """(trial id, key, value[, distribution]) of one per-trial row, as FrozenTrial holds it."""
    if name == "params":
        dist = distributions.json_to_distribution(text)
        return trial_id, key, dist.to_external_repr(num), dist
    if name == "intermediate":
        kind = models.TrialIntermediateValueModel.TrialIntermediateValueType[text]
        return trial_id, int(key), models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(num, kind)
    if name == "values":
        kind = models.TrialValueModel.TrialValueType[text]
        return trial_id, int(key), models.TrialValueModel.stored_repr_to_value(num, kind)
    return trial_id, key, json.loads(text)


def local_time(utc):
    """A stored (naive UTC) datetime as Optuna's FrozenTrial holds it: naive local time."""
    if utc is None:
        return None
    if isinstance(utc, str):  # SQLite inside a UNION: the column's type is not known to the driver
        utc = datetime.datetime.fromisoformat(utc)
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)
