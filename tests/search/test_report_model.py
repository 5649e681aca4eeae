"""Unit tests of the report package: the one figure model and its two renderers, the time split, the
encoder arms, the metrics.json reader, and that trial attributes are read only through TrialRecord."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import search.report as report
from how2sign.run_metrics import RunMetrics
from search.arms import ARM_NAMES
from search.records import TrialRecord
from search.report import (
    CONTROL_ARM,
    FIELD,
    PALETTE,
    STATE_COLOURS,
    build_figures,
    build_model,
    encoder_arms,
    latex_table,
    load_report_data,
    read_val_curve,
    table,
    to_matplotlib,
    to_plotly,
    write_report,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

ARMS = list(ARM_NAMES)
DISTS = {"encoder": CategoricalDistribution(ARMS), "lr": FloatDistribution(1e-5, 1e-2, log=True)}


def add(study: optuna.Study, state: TrialState, params: dict, record: TrialRecord, curve=(), dists=None) -> None:
    values = [record.val_loss] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, params=params, distributions=dists or DISTS, values=values,
                                 user_attrs=record.attrs(), intermediate_values=dict(enumerate(curve, start=1))))


def arms_study() -> optuna.Study:
    """Four encoder arms at a 4-epoch budget; every trial but the failed one records where its time went."""
    study = optuna.create_study(direction="minimize")
    study.set_metric_names(["val_loss"])

    def done(arm, val, bleu, seconds, epochs=4, state=TrialState.COMPLETE):
        split = dict(seconds_train=0.7 * seconds, seconds_validate=0.1 * seconds, seconds_evaluate=0.15 * seconds,
                     seconds_other=0.05 * seconds)
        rec = TrialRecord(anchor=False, val_loss=val, bleu=bleu, seconds=seconds, epochs_run=epochs,
                          n_params=1_000_000, **split)
        add(study, state, {"encoder": arm, "lr": 1e-3}, rec, curve=[val + 0.5] * (epochs - 1) + [val])

    done("scratch", 3.0, 1.0, 100.0)
    done("scratch", 3.2, 2.0, 120.0)
    done("pretrained-frozen", 2.5, 3.0, 40.0)
    done("pretrained-frozen", 2.9, 1.0, 60.0)
    done("pretrained-frozen", 3.5, None, 10.0, epochs=1, state=TrialState.PRUNED)
    done("random-frozen", 3.4, 0.5, 50.0)
    add(study, TrialState.FAIL, {"encoder": "pretrained-finetuned", "lr": 1e-3},
        TrialRecord(anchor=False, fail_reason="out of memory"))
    return study


def plain_study() -> optuna.Study:
    """Three complete trials of an older study: no encoder parameter, no time split, one anchor."""
    study = optuna.create_study(direction="minimize")
    study.set_metric_names(["val_loss"])
    dists = {"lr": DISTS["lr"]}
    for k, val in enumerate((3.1, 2.8, 2.6)):
        rec = TrialRecord(anchor=k == 0, anchor_name="v4" if k == 0 else None, val_loss=val, n_params=2_000_000 + k,
                          bleu=1.0 + k, gap=0.2)
        add(study, TrialState.COMPLETE, {"lr": 10 ** -(3 + k)}, rec, curve=[val + 1, val], dists=dists)
    return study


# --------------------------------------------------------------------------- the figure model
def test_one_model_feeds_both_renderers_with_the_same_series_and_colours():
    d = load_report_data(arms_study())
    for name, (model, _) in build_model(d).items():
        if model is None or model.parallel is not None:
            continue
        fig = to_plotly(model)
        assert [t.name or "" for t in fig.data] == [s.name for s in model.series], name
        plotly_colours = [t.marker.color if t.type == "bar" or t.mode == "markers" or "text" in t.mode
                          else t.line.color for t in fig.data]
        assert plotly_colours == [s.colour for s in model.series], name
        ax = to_matplotlib(model).axes[0]
        legend = ax.get_legend()
        shown = [s.name for s in model.series if s.legend and s.name]
        if model.legend:
            assert [t.get_text() for t in legend.get_texts()] == shown, name
        assert ax.get_xlabel() == model.x.title and ax.get_ylabel() == model.y.title, name
    assert set(STATE_COLOURS.values()) <= set(PALETTE.values())


def test_build_figures_is_the_model_drawn_by_plotly():
    d = load_report_data(plain_study())
    model, figs = build_model(d), build_figures(d)
    assert list(model) == list(figs)
    for name, (m, note) in model.items():
        assert figs[name][1] == note
        assert (m is None) == (figs[name][0] is None)
    star = next(s for s in model["history"][0].series if s.marker == "star")
    assert star.text == ["anchor V4"] and star.name == "anchor v4" and star.colour == PALETTE["anchor"]


# --------------------------------------------------------------------------- time split
def test_time_split_is_a_stacked_figure_and_table_columns_with_a_dash_where_missing(tmp_path):
    d = load_report_data(arms_study())
    model, note = build_model(d)["time"]
    assert model.stacked and [s.name for s in model.series] == ["train", "validate", "evaluate", "other"]
    # one bar per trial that recorded the split (the failed trial did not); the parts add up to its seconds
    assert model.series[0].x == ["#0", "#1", "#2", "#3", "#4", "#5"]
    totals = [sum(s.y[k] for s in model.series) for k in range(6)]
    assert totals == pytest.approx([100.0, 120.0, 40.0, 60.0, 10.0, 50.0])
    assert to_plotly(model).layout.barmode == "stack"
    headers, rows = table(d)
    i = headers.index("train s")
    assert headers[i:i + 4] == ["train s", "validate s", "evaluate s", "other s"]
    by_trial = {r.trial.number: cells for r, cells in rows if r.trial is not None}
    assert by_trial[2][i:i + 4] == ["28", "4.0", "6.0", "2.0"]
    study = arms_study()
    res = write_report(study, tmp_path / "r.html", figures_dir=tmp_path / "figs")
    assert "time" in res.figures and (tmp_path / "figs" / "time.png").exists()
    assert 'id="fig-time"' in res.path.read_text()
    tex = latex_table(load_report_data(study))
    assert "train s & validate s & evaluate s & other s" in tex


def test_an_older_study_without_the_split_shows_dashes_and_no_time_figure():
    d = load_report_data(plain_study())
    assert "time" not in build_model(d)
    headers, rows = table(d)
    i = headers.index("train s")
    for r, cells in rows:
        assert cells[i:i + 4] == ["–"] * 4, r.role
    assert "-- & -- & -- & --" in latex_table(d)


# --------------------------------------------------------------------------- encoder arms
def test_encoder_arms_compare_each_arm_with_the_control_named():
    c = encoder_arms(load_report_data(arms_study()))
    assert [r.arm for r in c.rows] == ARMS and c.epochs == 4
    rows = {r.arm: r for r in c.rows}
    pre = rows["pretrained-frozen"]
    assert (pre.trials, pre.complete) == (3, 2)
    assert (pre.best_val_loss, pre.mean_val_loss, pre.median_val_loss) == pytest.approx((2.5, 2.7, 2.7))
    assert (pre.best_bleu, pre.mean_bleu) == pytest.approx((3.0, 2.0))
    assert pre.seconds_per_trial == pytest.approx(50.0)
    assert pre.seconds_per_epoch == pytest.approx((10.0 + 15.0 + 10.0) / 3)  # the pruned trial counts per epoch
    assert rows[CONTROL_ARM].control and rows[CONTROL_ARM].label == "random-frozen (control)"
    assert not any(r.control for r in c.rows if r.arm != CONTROL_ARM)
    fin = rows["pretrained-finetuned"]
    assert (fin.trials, fin.complete, fin.best_val_loss, fin.seconds_per_trial) == (1, 0, None, None)
    assert "beats the random frozen control" in c.verdict and "2.5000 against 3.4000" in c.verdict


def test_the_page_has_an_arms_section_only_when_the_study_searches_an_encoder(tmp_path):
    page = write_report(arms_study(), tmp_path / "arms.html").path.read_text()
    section = page.split('id="encoder-arms"', 1)[1].split("<h2", 1)[0]
    assert "Encoder arms at an equal epoch budget" in page and "4 epochs" in section
    rows = re.findall(r'<tr class="(arm[^"]*)">(.*?)</tr>', section)
    assert [c for c, _ in rows] == ["arm", "arm", "arm control", "arm"]
    control = re.sub(r"<[^>]+>", "|", rows[2][1])
    assert "random-frozen (control)" in control and "|3.4000|" in control and "|50|" in control
    fin = re.sub(r"<[^>]+>", "|", rows[3][1])
    assert "|–|" in fin
    plain = write_report(plain_study(), tmp_path / "plain.html").path.read_text()
    assert "encoder-arms" not in plain and "Encoder arms" not in plain
    assert encoder_arms(load_report_data(plain_study())) is None


def test_the_verdict_says_plainly_when_pretraining_does_not_beat_the_control():
    study = optuna.create_study(direction="minimize")
    for arm, val in (("pretrained-frozen", 3.0), ("random-frozen", 2.9)):
        add(study, TrialState.COMPLETE, {"encoder": arm, "lr": 1e-3}, TrialRecord(val_loss=val, epochs_run=2))
    c = encoder_arms(load_report_data(study))
    assert "does not beat the random frozen control" in c.verdict and "nothing" in c.verdict
    assert [r.arm for r in c.rows] == ARMS  # every choice of the parameter, trials or not


# --------------------------------------------------------------------------- reading trials
def test_the_curve_of_a_trial_without_intermediate_values_comes_from_its_metrics_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"epoch": 1, "train_loss": 5.0, "val_loss": 4.0}, {"epoch": 2, "train_loss": 4.0, "val_loss": math.nan},
              {"epoch": 3, "train_loss": 3.0, "val_loss": 3.5}]
    RunMetrics(best_epoch=3, best_val_loss=3.5, history=epochs).write(run)
    assert read_val_curve(run) == [(1, 4.0), (3, 3.5)]
    assert read_val_curve(tmp_path / "nowhere") == [] and read_val_curve(None) == []
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(create_trial(state=TrialState.COMPLETE, params={"lr": 1e-3}, distributions={"lr": DISTS["lr"]},
                                 values=[3.5, 1e6], user_attrs=TrialRecord(checkpoint=str(run), val_loss=3.5).attrs()))
    (t,) = load_report_data(study).trials
    assert t.curve == [(1, 4.0), (3, 3.5)]


def test_non_finite_attributes_read_as_missing():
    study = optuna.create_study(direction="minimize")
    add(study, TrialState.COMPLETE, {"lr": 1e-3}, TrialRecord(val_loss=2.0), dists={"lr": DISTS["lr"]})
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 1e-3}, distributions={"lr": DISTS["lr"]},
                                 user_attrs={TrialRecord.stored_name("gap"): math.inf}))
    t = load_report_data(study).trials[1]
    assert t.record.gap is None


def test_field_names_the_stored_attribute_and_refuses_a_typo():
    assert FIELD.n_params == TrialRecord.stored_name("n_params") and FIELD.val_loss == "val_loss"
    with pytest.raises(AttributeError, match="no field 'val_los'"):
        _ = FIELD.val_los


def test_the_report_reads_trial_attributes_only_through_trial_record():
    """No module of the package touches a trial's user_attrs or a raw attribute dict: only TrialRecord fields."""
    folder = Path(report.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr == "user_attrs":
                assert isinstance(node.value, ast.Name) and node.value.id == "study", where  # the study's own
            assert not (isinstance(node, ast.Attribute) and node.attr in ("attrs", "attr")), where


def test_no_function_in_the_package_is_over_60_lines():
    for path in Path(report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"
