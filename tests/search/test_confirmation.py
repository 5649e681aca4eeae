"""A confirmation read from real SQLite studies built with `optuna.create_trial` and run folders holding
`test_translations.csv`: its numbers against numpy, scipy and sacrebleu's own PairedTest on the stored values
and written hypotheses; partial and failed confirmations; and every presentation of it (the report's HTML
section, the LaTeX table, the PDF/PNG figures, the terminal lines, `best --json` and `status`)."""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
import sacrebleu
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest
from scipy import stats as scipy_stats

from search.confirmation import (
    METRICS,
    build_confirmation,
    confirmation_progress,
    expected_best_of,
    open_confirmation,
)
from search.confirmation_view import best_confirmation, confirmation_dict, confirmation_lines
from search.records import ConfirmConfig, ConfirmPlan, StudyRecord, TrialRecord, confirmation_name
from search.report import write_report
from search.spec import load_spec
from search.stats import BEATS, NOT_DISTINGUISHABLE, expected_best
from search.translations import write_test_translations

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

V4 = {"d_model": 256, "nhead": 4, "encoder_layers": 2, "decoder_layers": 2, "dim_feedforward": 1024,
      "dropout": 0.3, "batch_size": 64, "lr": 1e-4}
DISTS = {"d_model": CategoricalDistribution([128, 192, 256, 384, 512]), "nhead": CategoricalDistribution([4, 8]),
         "encoder_layers": IntDistribution(1, 4), "decoder_layers": IntDistribution(1, 4),
         "dim_feedforward": CategoricalDistribution([256, 512, 1024, 2048]), "dropout": FloatDistribution(0.1, 0.5),
         "batch_size": CategoricalDistribution([16, 32, 64, 128]), "lr": FloatDistribution(1e-5, 3e-3, log=True)}
SEEDS = (101, 102, 103)
WORDS = ["the", "a", "man", "woman", "signs", "shows", "how", "to", "cut", "paint", "fold", "tie", "water", "paper",
         "knot", "wood", "board", "hand", "left", "right"]
# Parent trial -> the share of words a run gets wrong on the test split: trial 3 is much better than V4
# (trial 0), trial 5 is like it.
ERROR_RATE = {0: 0.45, 3: 0.12, 5: 0.44}


def references(n: int = 80) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))) for _ in range(n)]


def hypotheses(refs: list[str], error: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > error else rng.choice(WORDS) for w in r.split()) for r in refs]


def parent_study(url: str, values: list[float], anchor_value: float = 2.6) -> optuna.Study:
    """The search study: trial 0 is the anchor, then one complete trial per value, then a pruned one."""
    study = optuna.create_study(study_name="capacity", storage=url, direction="minimize")
    study.set_metric_names(["val_loss"])
    StudyRecord(spec=load_spec("capacity").raw, fingerprint="ab" * 32, budget=len(values) + 2,
                data="synthetic corpus for the test").write(study)
    rng = random.Random(1)
    for k, v in enumerate([anchor_value, *values]):
        params = dict(V4) if k == 0 else {**V4, "d_model": rng.choice([128, 384, 512]), "dropout": 0.1 + 0.03 * k}
        record = TrialRecord(anchor=k == 0, anchor_name="v4" if k == 0 else None, val_loss=v, bleu=1.0, gap=0.2,
                             n_params=3_000_000)
        study.add_trial(create_trial(state=TrialState.COMPLETE, params=params, distributions=DISTS, values=[v],
                                     user_attrs=record.attrs(), intermediate_values={1: v + 1, 2: v}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params=dict(V4), distributions=DISTS,
                                 user_attrs=TrialRecord(anchor=False, val_loss=4.0).attrs(),
                                 intermediate_values={1: 4.0}))
    return study


def run(confirm: optuna.Study, tmp_path: Path, parent: optuna.Study, trial: int, seed: int,
        state: TrialState = TrialState.COMPLETE, refs: list[str] | None = None, store=None) -> None:
    """One (config, seed) run: its folder with test_translations.csv and the record a worker writes; with an
    artifact store, the file uploaded to it while the run runs, as the worker does."""
    params = parent.trials[trial].params
    anchor = trial == 0
    base = TrialRecord(anchor=anchor, anchor_name="v4" if anchor else None, confirms_trial=trial, seed=seed)
    if state != TrialState.COMPLETE:
        record = base if state != TrialState.FAIL else TrialRecord(**{**base.attrs(), "fail_reason": "nan loss"})
        confirm.add_trial(create_trial(state=state, params=params, distributions=DISTS, user_attrs=record.attrs(),
                                       values=None))
        return
    refs = refs or references()
    hyps = hypotheses(refs, ERROR_RATE[trial], seed * 100 + trial)
    folder = tmp_path / "runs" / f"t{trial}-s{seed}"
    folder.mkdir(parents=True)
    write_test_translations(folder, refs, hyps)
    rng = random.Random(seed + 31 * trial)
    val_loss = parent.trials[trial].values[0] + rng.uniform(-0.05, 0.05)
    record = TrialRecord(**{**base.attrs(), "val_loss": val_loss, "bleu": 10 - 8 * ERROR_RATE[trial] + rng.uniform(-1, 1),
                            "chrf": 40.0, "test_loss": val_loss + 0.1, "checkpoint": str(folder),
                            "test_bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                            "test_chrf": sacrebleu.corpus_chrf(hyps, [refs]).score})
    if store is None:
        confirm.add_trial(create_trial(state=state, params=params, distributions=DISTS, values=[val_loss],
                                       user_attrs=record.attrs()))
        return
    from optuna.artifacts import upload_artifact

    from search.storage import study_storage

    confirm.add_trial(create_trial(state=TrialState.RUNNING, params=params, distributions=DISTS,
                                   user_attrs=record.attrs()))
    live = confirm.trials[-1]
    upload_artifact(artifact_store=store, file_path=str(folder / "test_translations.csv"), study_or_trial=live,
                    storage=study_storage(confirm), mimetype="text/csv")
    confirm.tell(live.number, [val_loss])


def confirm_study(url: str, parent: optuna.Study, configs=(3, 5)) -> optuna.Study:
    study = optuna.create_study(study_name=confirmation_name("capacity"), storage=url, direction="minimize")
    study.set_metric_names(["val_loss"])
    plan = ConfirmPlan("capacity", len(configs), SEEDS,
                       (ConfirmConfig(0, True, parent.trials[0].params),
                        *(ConfirmConfig(k, False, parent.trials[k].params) for k in configs)))
    StudyRecord(spec=load_spec("capacity").raw, confirm=plan.attr()).write(study)
    return study


SEARCH_VALUES = [3.2, 2.9, 2.4, 3.5, 2.6, 3.1, 2.95, 2.2, 3.3, 2.8]   # trial k + 1 has value SEARCH_VALUES[k]


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """A finished confirmation: V4 and trials 3 and 5, three seeds each, every run complete."""
    tmp = tmp_path_factory.mktemp("confirm")
    url = f"sqlite:///{tmp / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent)
    for trial in (0, 3, 5):
        for seed in SEEDS:
            run(confirm, tmp, parent, trial, seed)
    return url, parent, confirm, build_confirmation(parent, confirm)


def stored(confirm: optuna.Study, trial: int, name: str) -> list[float]:
    return [TrialRecord.read(t).get(name) for t in confirm.trials
            if TrialRecord.read(t).confirms_trial == trial and t.state == TrialState.COMPLETE]


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["reference"] for r in rows], [r["hypothesis"] for r in rows]


# --------------------------------------------------------------------------- the numbers
def test_mean_sd_and_interval_equal_numpy_and_scipy_on_the_stored_values(complete):
    _, _, confirm, c = complete
    for row in c.rows:
        for name in ("val_loss", "bleu", "test_bleu", "test_chrf"):
            values = np.array(stored(confirm, row.trial, name))
            s = row.summaries[name]
            assert s.n == 3 and sorted(s.values) == sorted(values.tolist())
            assert s.mean == pytest.approx(np.mean(values), rel=1e-12)
            assert s.sd == pytest.approx(np.std(values, ddof=1), rel=1e-12)
            ci = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
            assert (s.low, s.high) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_welch_against_the_anchor_equals_scipy(complete):
    _, _, confirm, c = complete
    for row in c.rows[1:]:
        for name in ("val_loss", "test_bleu"):
            a, b = stored(confirm, row.trial, name), stored(confirm, 0, name)
            ref = scipy_stats.ttest_ind(a, b, equal_var=False)
            w = row.welch[name]
            assert w.p == pytest.approx(ref.pvalue, rel=1e-12) and w.diff == pytest.approx(np.mean(a) - np.mean(b))
            assert (w.low, w.high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-12)


def median_run_csv(confirm: optuna.Study, trial: int) -> Path:
    runs = sorted((TrialRecord.read(t).test_bleu, TrialRecord.read(t).seed, TrialRecord.read(t).checkpoint)
                   for t in confirm.trials if TrialRecord.read(t).confirms_trial == trial
                   and t.state == TrialState.COMPLETE)
    return Path(runs[(len(runs) - 1) // 2][2]) / "test_translations.csv"


def test_the_paired_p_value_is_sacrebleus_own_on_the_written_hypotheses(complete):
    _, _, confirm, c = complete
    refs, base = read_csv(median_run_csv(confirm, 0))
    for row in c.rows[1:]:
        _, hyps = read_csv(median_run_csv(confirm, row.trial))
        assert row.median is not None and row.median.record.checkpoint in str(median_run_csv(confirm, row.trial))
        _, scores = PairedTest([("V4", base), ("system", hyps)], {"BLEU": BLEU(), "chrF": CHRF()}, [refs],
                               test_type="bs", n_samples=1000)()
        bleu, chrf = scores["BLEU"][1], scores["chrF2"][1]
        assert row.paired["bleu"].p == bleu.p_value and row.paired["chrf"].p == chrf.p_value
        assert row.paired["bleu"].score == pytest.approx(bleu.score)
        assert row.paired["bleu"].baseline == pytest.approx(scores["BLEU"][0].score)
        # The paired test scores the same numbers the runs recorded.
        assert row.paired["bleu"].score == pytest.approx(row.median.record.test_bleu)


def test_the_verdicts_and_sentences(complete):
    _, _, _, c = complete
    anchor, good, same = c.rows
    assert anchor.anchor and anchor.label == "anchor V4" and "is the reference" in anchor.sentence
    assert good.verdicts["test_bleu"] == BEATS and good.sentence.startswith("trial 3 beats V4 on test BLEU by +")
    assert re.search(r"95 % CI \+\d+\.\d\d to \+\d+\.\d\d, p = [\d.e-]+; 3 seeds; paired bootstrap p < 0\.001\)$",
                     good.sentence), good.sentence
    assert same.verdicts["test_bleu"] == NOT_DISTINGUISHABLE, same.sentence
    assert same.sentence.startswith("trial 5 is not distinguishable from V4 on test BLEU: ")
    # val loss: lower is better, so trial 3 (search value 2.4 against 2.6) beats V4 there too.
    assert good.verdicts["val_loss"] == BEATS and good.welch["val_loss"].diff < 0


def test_the_expected_best_curve_comes_from_the_search_without_the_anchor(complete):
    _, parent, _, c = complete
    e = c.expected
    assert e.draws == tuple(SEARCH_VALUES) and e.anchor == 2.6 and e.minimize and e.metric == "val_loss"
    assert list(e.curve) == pytest.approx(expected_best(SEARCH_VALUES, minimize=True))
    assert e.first_n == next(n for n, v in enumerate(e.curve, 1) if v < 2.6) and e.first_n > 1
    assert expected_best_of(parent) == e


def test_the_terminal_table_shows_mean_sd_and_the_interval_of_every_metric(complete):
    _, _, _, c = complete
    lines = confirmation_lines(c)
    assert lines[1].split()[:8] == ["config", "seeds", "val", "loss", "val", "BLEU", "test", "BLEU"]
    for line, r in zip(lines[2:5], c.rows, strict=True):
        assert line.startswith(r.label)
        for m in METRICS:
            s = r.summaries[m.field]
            assert f"{s.mean:{m.spec}} ± {s.sd:{m.spec}} [{s.low:{m.spec}}, {s.high:{m.spec}}]" in line
            assert s.low < s.mean < s.high
    assert lines[5] == ("each metric: mean ± sd [95 % interval of the mean] over each config's complete seeds (sd "
                        "with ddof 1; one seed has neither)")
    assert lines[6].startswith("anchor V4: d_model=256")


def test_progress_of_a_finished_confirmation(complete):
    _, _, confirm, c = complete
    assert c.progress == confirmation_progress(confirm)
    assert (c.progress.planned, c.progress.complete, c.progress.missing) == (9, 9, 0) and c.progress.done
    assert c.progress.line(c.study) == "confirmation capacity.confirm: 9/9 runs complete"


# --------------------------------------------------------------------------- partial and failed
def test_a_confirmation_in_progress_with_a_failed_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent)
    for seed in SEEDS:
        run(confirm, tmp_path, parent, 0, seed)
    run(confirm, tmp_path, parent, 3, 101)                       # trial 3: one seed done, one failed, one running
    run(confirm, tmp_path, parent, 3, 102, TrialState.FAIL)
    run(confirm, tmp_path, parent, 3, 103, TrialState.RUNNING)
    run(confirm, tmp_path, parent, 5, 101)                       # trial 5: two done, the third not enqueued
    run(confirm, tmp_path, parent, 5, 102)
    c = build_confirmation(parent, confirm)
    p = c.progress
    assert (p.planned, p.complete, p.running, p.waiting, p.failed, p.missing) == (9, 6, 1, 0, 1, 1) and not p.done
    assert p.line(c.study) == "confirmation capacity.confirm: 6/9 runs complete (1 running, 1 failed, 1 not enqueued)"
    anchor, three, five = c.rows
    assert (anchor.seeds_done, three.seeds_done, five.seeds_done) == (3, 1, 2)
    s = three.summaries["test_bleu"]
    assert s.n == 1 and s.sd is None and s.low is None and s.text(".2f").endswith("(1 seed)")
    assert three.verdicts["test_bleu"] == "too few seeds" and three.welch["test_bleu"].p is None
    # One seed is still a run with hypotheses: its paired test is there, and the sentence says both.
    assert three.paired["bleu"].p < 0.05 and "too few seeds (1 and 3; 2 each needed); paired bootstrap" in three.sentence
    assert five.summaries["test_bleu"].n == 2 and five.welch["test_bleu"].p is not None
    lines = confirmation_lines(c)
    assert lines[0].startswith("confirmation capacity.confirm: 6/9 runs complete") and "1/3" in lines[3]
    assert f"{s.mean:.2f} (1 seed)  " in lines[3] and "(1 seed) [" not in lines[3]  # one seed: no interval
    json.dumps(confirmation_dict(c))  # JSON-able as it is


def test_a_missing_hypotheses_file_makes_the_paired_test_missing_not_an_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent, configs=(3,))
    for trial in (0, 3):
        for seed in SEEDS:
            run(confirm, tmp_path, parent, trial, seed)
    c = build_confirmation(parent, confirm)
    (Path(c.rows[1].median.record.checkpoint) / "test_translations.csv").unlink()
    c = build_confirmation(parent, confirm)
    row = c.rows[1]
    assert not row.paired and row.paired_missing.startswith("no test_translations.csv in ")
    # Welch alone is significant, the paired test is missing: the rule does not call it a win.
    assert row.welch["test_bleu"].p < 0.05 and row.verdicts["test_bleu"] == "inconclusive"
    assert "no paired test (no test_translations.csv in" in row.sentence
    assert row.verdicts["val_loss"] == BEATS  # val metrics have no paired test to miss


def test_without_the_run_folders_the_paired_test_reads_the_uploaded_hypotheses(tmp_path, monkeypatch):
    """A report made where the run folders are not (another machine): the median-seed runs' test hypotheses
    come from the artifact store they were uploaded to, and the paired test is the same as with the folders."""
    from search.artifacts import ARTIFACTS_ENV, open_store

    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent, configs=(3,))
    store = open_store(tmp_path / "art")
    for trial in (0, 3):
        for seed in SEEDS:
            run(confirm, tmp_path, parent, trial, seed, store=store)
    here = build_confirmation(parent, confirm)
    assert here.rows[1].paired and all(t.state == TrialState.COMPLETE for t in confirm.trials)
    shutil.move(tmp_path / "runs", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    row = build_confirmation(parent, confirm).rows[1]   # ./h2s-artifacts does not hold them
    median = row.median.record.checkpoint
    assert not row.paired and row.paired_missing.startswith("the anchor's hypotheses: no test_translations.csv in ")
    assert "is not in the artifact store" in row.paired_missing and not (tmp_path / "h2s-artifacts").exists()
    for c in (build_confirmation(parent, confirm, artifacts=tmp_path / "art"),
              (monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "art")), build_confirmation(parent, confirm))[1]):
        row = c.rows[1]
        assert not row.paired_missing and row.paired == here.rows[1].paired and row.paired["bleu"].p < 0.05
        assert row.verdicts == here.rows[1].verdicts and row.sentence == here.rows[1].sentence
    assert not Path(median).exists()


def test_runs_on_other_test_sentences_are_not_paired(tmp_path):
    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent, configs=(3,))
    for seed in SEEDS:
        run(confirm, tmp_path, parent, 0, seed)
        run(confirm, tmp_path, parent, 3, seed, refs=references(60))
    row = build_confirmation(parent, confirm).rows[1]
    assert not row.paired and "are not the same test sentences (60 and 80 rows)" in row.paired_missing
    assert row.paired_missing.startswith(str(tmp_path / "runs"))  # the files, named


def test_no_run_yet_and_a_plan_read_from_the_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = optuna.create_study(study_name="capacity.confirm", storage=url)   # no plan stored
    for trial in (0, 3):
        for seed in SEEDS:
            run(confirm, tmp_path, parent, trial, seed, TrialState.WAITING)
    c = build_confirmation(parent, confirm)
    assert c.plan.seeds == SEEDS and [cfg.trial for cfg in c.plan.configs] == [0, 3] and c.plan.top == 1
    assert (c.progress.planned, c.progress.waiting, c.progress.complete) == (6, 6, 0)
    assert c.rows[1].sentence == "trial 3: no complete V4 run to compare with yet"
    assert c.rows[0].sentence == "anchor V4 (the reference) has no complete run yet"


# --------------------------------------------------------------------------- the report
def test_the_report_page_has_the_confirmation_section(complete, tmp_path):
    _, parent, confirm, c = complete
    res = write_report(parent, tmp_path / "r.html", confirmation=confirm)
    page = res.path.read_text()
    assert res.figures[-2:] == ["confirm-seeds", "expected-best"] and not res.missing
    assert '<h2 id="confirmation">Confirmation</h2>' in page
    for name in ("confirm-seeds", "expected-best"):
        assert f'id="fig-{name}"' in page
    table = page.split('id="confirmation-table"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class=\"([^\"]*)\">(.*?)</tr>", table)
    assert [cls for cls, _ in rows] == ["anchor", "", ""] and ">anchor V4<" in rows[0][1]
    good = c.rows[1]
    assert good.summaries["test_bleu"].text(".2f") in rows[1][1] and ">beats<" in rows[1][1]
    for r, (_, cells) in zip(c.rows, rows, strict=True):  # every metric with its 95 % interval over seeds
        for m in METRICS:
            s = r.summaries[m.field]
            assert f">{s.mean:{m.spec}} ± {s.sd:{m.spec}} [{s.low:{m.spec}}, {s.high:{m.spec}}]<" in cells
    assert "Each metric: mean ± sd [95 % interval of the mean] over each config&#x27;s complete seeds" in page
    for r in c.rows:
        assert html_escape(r.sentence) in page
    assert "it first beats V4&#x27;s 2.6000 at n = " in page
    # The figures' data: the strip has one point per seed at the config's position, plus the means.
    strip = figure_json(page, "confirm-seeds")
    assert [t["name"] for t in strip] == ["anchor V4", "anchor V4: mean", "trial 3", "trial 3: mean", "trial 5",
                                          "trial 5: mean"]
    assert sorted(strip[2]["y"]) == pytest.approx(sorted(stored(confirm, 3, "test_bleu")))
    assert all(0.8 < x < 1.2 for x in strip[2]["x"])
    assert strip[3]["y"] == pytest.approx([c.rows[1].summaries["test_bleu"].mean] * 2)
    curve = figure_json(page, "expected-best")
    assert curve[0]["y"] == pytest.approx(list(c.expected.curve)) and curve[1]["y"] == [2.6, 2.6]
    assert curve[2]["x"] == [c.expected.first_n]


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def figure_json(page: str, name: str) -> list[dict]:
    calls = re.findall(rf'Plotly\.newPlot\(\s*"fig-{name}",\s*(\[.*?\]),\s*\{{', page, re.S)
    assert calls, name
    return json.loads(calls[0])


def test_the_latex_table_has_mean_sd_and_marks(complete, tmp_path):
    _, parent, confirm, c = complete
    tex = write_report(parent, tmp_path / "t.tex", fmt="latex", confirmation=confirm).path.read_text()
    search_table, confirmation = tex.split("% Confirmation of study capacity", 1)
    assert search_table.rstrip().endswith("\\end{tabular}")
    assert "% $^{*}$ / $^{**}$: Welch's t-test over seeds" in confirmation and "\\dagger" in confirmation
    lines = [line for line in confirmation.splitlines() if line.endswith("\\\\") and "multicolumn" not in line]
    assert lines[0] == "config & seeds & val loss & val BLEU & test BLEU & test chrF & verdict \\\\"
    assert all(line.count(" & ") == 6 for line in lines)
    good = c.rows[1].summaries["test_bleu"]
    assert lines[2].startswith("trial 3 & 3/3 & ") and lines[2].endswith("& beats \\\\")
    assert f"${good.mean:.2f} \\pm {good.sd:.2f}^{{**\\dagger}}$" in lines[2] or \
        f"${good.mean:.2f} \\pm {good.sd:.2f}^{{*\\dagger}}$" in lines[2]
    a = c.rows[0].summaries["test_bleu"]
    assert lines[1].startswith("anchor V4 & 3/3 & ") and f"${a.mean:.2f} \\pm {a.sd:.2f}$" in lines[1]


def test_pdf_and_png_figures_of_the_confirmation(complete, tmp_path):
    from PIL import Image

    _, parent, confirm, _ = complete
    res = write_report(parent, tmp_path / "r.html", figures_dir=tmp_path / "figs", confirmation=confirm)
    names = {p.name for p in res.files}
    for fig in ("confirm-seeds", "expected-best"):
        assert {f"{fig}.pdf", f"{fig}.png"} <= names
        assert (tmp_path / "figs" / f"{fig}.pdf").read_bytes().startswith(b"%PDF")
        with Image.open(tmp_path / "figs" / f"{fig}.png") as im:
            assert im.width > 600 and len(im.convert("RGB").getcolors(1 << 20) or []) > 20


def test_both_renderers_draw_the_same_confirmation_figures(complete):
    from search.report import to_matplotlib, to_plotly
    from search.report.confirm import confirmation_model

    _, _, _, c = complete
    for name, (model, _) in confirmation_model(c).items():
        fig = to_plotly(model)
        assert [t.name for t in fig.data] == [s.name for s in model.series], name
        assert [t.line.color if t.mode == "lines" else t.marker.color for t in fig.data] == \
            [s.colour for s in model.series], name
        ax = to_matplotlib(model).axes[0]
        legend = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
        assert legend == ([s.name for s in model.series] if model.legend else []), name
        assert fig.layout.showlegend == model.legend
        assert ax.get_xlabel() == model.x.title and ax.get_ylabel() == model.y.title
    strip, _ = confirmation_model(c)["confirm-seeds"]
    ax = to_matplotlib(strip).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["anchor V4", "trial 3", "trial 5"]
    assert list(to_plotly(strip).layout.xaxis.ticktext) == ["anchor V4", "trial 3", "trial 5"]


def test_a_partial_confirmation_renders_and_says_what_is_missing(tmp_path):
    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    parent = parent_study(url, SEARCH_VALUES)
    confirm = confirm_study(url, parent)
    run(confirm, tmp_path, parent, 3, 101)
    run(confirm, tmp_path, parent, 0, 101, TrialState.RUNNING)
    res = write_report(parent, tmp_path / "r.html", figures_dir=tmp_path / "figs", confirmation=confirm)
    page = res.path.read_text()
    assert "1/9 runs complete (1 running, 7 not enqueued)" in page
    assert "trial 3: no complete V4 run to compare with yet" in page
    assert "confirm-seeds" in res.figures and (tmp_path / "figs" / "confirm-seeds.png").exists()
    tex = write_report(parent, tmp_path / "t.tex", fmt="latex", confirmation=confirm).path.read_text()
    assert "anchor V4 & 0/3 & -- & -- & -- & -- & reference \\\\" in tex


def test_a_study_without_a_confirmation_has_no_section(complete, tmp_path):
    _, parent, _, _ = complete
    res = write_report(parent, tmp_path / "r.html")
    assert "confirm-seeds" not in res.figures and 'id="confirmation"' not in res.path.read_text()
    tex = write_report(parent, tmp_path / "t.tex", fmt="latex").path.read_text()
    assert "Confirmation" not in tex


# --------------------------------------------------------------------------- the commands
def test_report_best_and_status_commands_find_the_confirmation(complete, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from search.cli import app

    url, parent, confirm, c = complete
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--study", "capacity", "--storage", url, "--out", "r.html"])
    assert res.exit_code == 0, res.output
    assert "and the confirmation 'capacity.confirm'" in res.output and 'id="confirmation"' in Path("r.html").read_text()
    res = runner.invoke(app, ["best", "--study", "capacity", "--storage", url, "--json"])
    assert res.exit_code == 0, res.output
    best = json.loads(res.output)
    assert best["best"][0]["number"] == 8  # the search's best (2.2) was not re-trained here
    assert best["confirmed"] is False and "trial 8 is not among the configs" in best["confirmation"]["note"]
    assert best_confirmation(c, 3)["confirmed"] is True
    res = runner.invoke(app, ["status", "--study", "capacity", "--storage", url, "--json"])
    assert json.loads(res.output)["confirmation"]["complete"] == 9
    res = runner.invoke(app, ["status", "--study", "capacity", "--storage", url])
    assert res.exit_code == 0 and "confirmation capacity.confirm: 9/9 runs complete" in res.output


def test_best_json_of_a_confirmed_best_trial(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from search.cli import app

    url = f"sqlite:///{tmp_path / 'h2s.db'}"
    values = [3.2, 2.9, 2.1, 3.5]   # trial 3 is the search's best
    parent = parent_study(url, values)
    confirm = confirm_study(url, parent, configs=(3,))
    for trial in (0, 3):
        for seed in SEEDS:
            run(confirm, tmp_path, parent, trial, seed)
    res = CliRunner().invoke(app, ["best", "--study", "capacity", "--storage", url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["confirmed"] is True and out["best"][0]["number"] == 3
    assert out["confirmation"]["test_bleu"]["mean"] == pytest.approx(np.mean(stored(confirm, 3, "test_bleu")))
    assert out["confirmation"]["verdict"] == BEATS and out["confirmation"]["sentence"].startswith("trial 3 beats V4")
    # Without a confirmation study, best says so.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    parent_study(other, values)
    out = json.loads(CliRunner().invoke(app, ["best", "--study", "capacity", "--storage", other, "--json"]).output)
    assert out["confirmed"] is False and out["confirmation"] is None
    assert open_confirmation(other, "capacity") is None and open_confirmation(url, "capacity") is not None


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_confirmation_figures_render_in_headless_chromium(complete, tmp_path):
    _, parent, confirm, _ = complete
    res = write_report(parent, tmp_path / "r.html", confirmation=confirm)
    run_ = subprocess.run(
        [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", res.path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert run_.returncode == 0, run_.stderr[-2000:]
    console = [line for line in run_.stderr.splitlines() if (":CONSOLE" in line or "Uncaught" in line)
               and not any(noise in line for noise in ('"[.WebGL-', "GL Driver Message", "software WebGL"))]
    assert not console, console
    for name in ("confirm-seeds", "expected-best"):
        div = run_.stdout.split(f'id="fig-{name}"', 1)[1][:20000]
        assert 'class="main-svg"' in div, name
