"""Reports inside epochs (TrainConfig.report_every): where they come, what they validate on, what they change
(nothing), and resuming from a checkpoint inside an epoch. Real tiny training on the CPU.

The rungs corpus has 48 train clips: six full batches of 8 per epoch whatever the shuffle, so with
report_every = 12 the marks 12, 24, 36 fall after batches 2, 3 and 5 (16, 24 and 40 clips seen), 36 inside
the epoch and 48 at its end.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from how2sign import checkpoint
from how2sign.batches import TrainData
from how2sign.config import TrainConfig
from how2sign.reporting import (
    AUTO_MIN_CLIPS,
    MIN_VAL_CLIPS,
    TRAIN_PASSES,
    VAL_SHARE,
    Schedule,
    steps_in_clips,
    val_subset,
)
from how2sign.rules import ConfigError
from how2sign.run_metrics import RunMetrics
from how2sign.train import train
from search.tiny_study import TINY_TRAIN

# The tests' tiny model (tests/conftest.py: the tiny study's, 4 heads), over 2 epochs, RNG-heavy on purpose.
TINY = {**TINY_TRAIN, "nhead": 4, "dropout": 0.1, "lr": 1e-3, "epochs": 2, "patience": 10, "aug_noise": 0.01,
        "aug_frame_dropout": 0.1}
STEPS = [12, 24, 36, 48, 60, 72, 84, 96]          # the pruner's steps over two epochs
CLIPS = [16, 24, 40, 48, 64, 72, 88, 96]          # train clips seen when each was measured
ENDS = [False, False, False, True] * 2


def epochs_of(history):
    return [(h["epoch"], h["train_loss"], h["val_loss"], h["lr"]) for h in history]


class Stop(Exception):
    pass


def test_a_run_reports_at_the_expected_clip_counts_on_the_val_subset_inside_epochs(rungs_corpus, tmp_path):
    data = TrainData.load(rungs_corpus)
    seen = []
    r = train(TrainConfig(**TINY, report_every=12), data, tmp_path / "r", device="cpu",
              report=lambda step, val, point: seen.append((step, val, point)))
    points = [p for _, _, p in seen]
    assert [s for s, _, _ in seen] == [p.step for p in points] == STEPS
    assert [p.clips for p in points] == CLIPS and [p.epoch_end for p in points] == ENDS
    assert [p.epoch for p in points] == [1, 1, 1, 1, 2, 2, 2, 2] and all(p.in_clips for p in points)
    # Inside epochs the val subset; at each epoch's end the whole split, whose value is the epoch's own.
    assert [p.val_clips for p in points] == [MIN_VAL_CLIPS] * 3 + [80] + [MIN_VAL_CLIPS] * 3 + [80]
    assert [v for _, v, p in seen if p.epoch_end] == [h["val_loss"] for h in r.history]
    assert r.clips == 96 and r.resumed_from_epoch is None
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [set(e) for e in doc["epochs"]] == [{"epoch", "train_loss", "val_loss", "lr", "seconds",
                                                 "frames_per_second"}] * 2  # what the per-epoch readers read
    assert [(rep["step"], rep["clips"], rep["val_clips"]) for rep in doc["reports"]] == \
        [(p.step, p.clips, p.val_clips) for p in points]
    assert RunMetrics.load(tmp_path / "r").report_curve() == [(s, v) for s, v, _ in seen]


def test_report_every_changes_no_result_and_per_epoch_runs_report_as_before(rungs_corpus, tmp_path):
    data = TrainData.load(rungs_corpus)
    per_epoch, inside = [], []
    base = train(TrainConfig(**TINY), data, tmp_path / "a", device="cpu",
                 report=lambda step, val, point: per_epoch.append((step, val, point)))
    clips = train(TrainConfig(**TINY, report_every=12), data, tmp_path / "b", device="cpu",
                  report=lambda step, val, point: inside.append((step, val)))
    assert epochs_of(clips.history) == epochs_of(base.history)  # validating inside epochs draws nothing
    assert (clips.best_val_loss, clips.best_epoch) == (base.best_val_loss, base.best_epoch)
    assert [(s, v) for s, v, _ in per_epoch] == [(1, base.history[0]["val_loss"]), (2, base.history[1]["val_loss"])]
    assert not any(p.in_clips for _, _, p in per_epoch) and all(p.val_clips == 80 for _, _, p in per_epoch)
    assert "reports" not in json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert checkpoint.load(tmp_path / "a" / checkpoint.LAST)["format_version"] == checkpoint.EPOCH_FORMAT


@pytest.mark.parametrize("stop_after", [2, 6])  # inside epoch 1 (no epoch finished yet), inside epoch 2
def test_a_run_resumes_bit_exactly_from_a_checkpoint_inside_an_epoch(rungs_corpus, tmp_path, stop_after):
    cfg, data = TrainConfig(**TINY, report_every=12), TrainData.load(rungs_corpus)
    whole = []
    full = train(cfg, data, tmp_path / "full", device="cpu", report=lambda s, v, p: whole.append((s, v)))
    made = []

    def pruned(step, val, _point):
        made.append((step, val))
        if len(made) == stop_after:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, data, tmp_path / "part", device="cpu", report=pruned)
    ck = checkpoint.load(tmp_path / "part" / checkpoint.LAST)
    epoch, batches = (1, 3) if stop_after == 2 else (2, 3)
    assert ck["format_version"] == checkpoint.INSIDE_EPOCH_FORMAT
    assert checkpoint.describe(ck)["inside_epoch"] == {"epoch": epoch, "batches": batches}
    if stop_after == 2:  # metrics.json before any epoch ended: no best yet, the reports so far
        m = RunMetrics.load(tmp_path / "part")
        assert (m.best_epoch, m.best_val_loss, m.history, len(m.reports)) == (0, float("inf"), [], 2)
    rest_reports = []
    rest = train(cfg, data, tmp_path / "part", device="cpu", resume=True,
                 report=lambda s, v, p: rest_reports.append((s, v)))
    assert (rest.resumed_from_epoch, rest.resumed_from_clips) == (epoch - 1, CLIPS[stop_after - 1])
    assert epochs_of(rest.history) == epochs_of(full.history)
    assert made + rest_reports == whole  # every value bit for bit, none reported twice
    assert RunMetrics.load(tmp_path / "part").reports == RunMetrics.load(tmp_path / "full").reports


def test_stopping_between_reports_resumes_from_the_last_one(rungs_corpus, tmp_path):
    cfg, data = TrainConfig(**TINY, report_every=12), TrainData.load(rungs_corpus)
    full = train(cfg, data, tmp_path / "full", device="cpu")
    made = []
    part = train(cfg, data, tmp_path / "part", device="cpu", report=lambda s, v, p: made.append(s),
                 should_stop=lambda: len(made) == 5)  # one batch after the report at 60 clips
    assert part.interrupted and part.epochs_run == 1
    assert checkpoint.describe(checkpoint.load(tmp_path / "part" / checkpoint.LAST))["inside_epoch"]["batches"] == 2
    rest = train(cfg, data, tmp_path / "part", device="cpu", resume=True)
    assert epochs_of(rest.history) == epochs_of(full.history)


def test_early_stopping_and_the_plateau_schedule_read_the_epochs_own_values(rungs_corpus, tmp_path):
    data = TrainData.load(rungs_corpus)
    cfg = TrainConfig(**{**TINY, "epochs": 6, "patience": 2}, min_delta=100.0, scheduler="plateau", plateau_patience=0)
    base = train(cfg, data, tmp_path / "a", device="cpu")
    clips = train(dataclasses.replace(cfg, report_every=12), data, tmp_path / "b", device="cpu")
    assert clips.stopped_early and clips.epochs_run == 3 and clips.best_epoch == 1
    assert epochs_of(clips.history) == epochs_of(base.history)  # the plateau's lr steps included


def test_a_checkpoint_from_before_report_every_still_resumes(rungs_corpus, tmp_path):
    cfg, data = TrainConfig(**TINY), TrainData.load(rungs_corpus)
    full = train(cfg, data, tmp_path / "full", device="cpu")
    done = []
    train(cfg, data, tmp_path / "part", device="cpu", on_epoch=lambda r: done.append(r), should_stop=lambda: done)
    ck = checkpoint.load(tmp_path / "part" / checkpoint.LAST)
    for key in checkpoint.TrainState.LATER_KEYS:  # what a checkpoint written before the change lacks
        del ck[key]
    del ck["train_config"]["report_every"]
    for key in ("format", "format_version", "h2s_version", "torch_version"):
        del ck[key]
    checkpoint.save(tmp_path / "part" / checkpoint.LAST, ck)
    rest = train(cfg, data, tmp_path / "part", device="cpu", resume=True)
    assert rest.resumed_from_epoch == 1 and epochs_of(rest.history) == epochs_of(full.history)


def test_the_setting_is_a_train_config_field():
    assert TrainConfig().report_every == 0
    assert TrainConfig().with_sets(["report_every=8000"]).report_every == 8000
    with pytest.raises(ConfigError, match="report_every"):
        TrainConfig().with_sets(["report_every=-1"])


def test_automatic_reports_are_per_epoch_below_10k_clips_and_quarters_above():
    assert not steps_in_clips(0, AUTO_MIN_CLIPS - 1) and steps_in_clips(0, AUTO_MIN_CLIPS) and steps_in_clips(5, 10)
    assert not Schedule.of(0, 800).in_clips and Schedule.of(0, 800).marks_reached(10**6) == 0
    how2sign = Schedule.of(0, 31_001)
    assert [how2sign.mark(k) for k in range(1, 6)] == [7751, 15501, 23251, 31001, 38752]  # the 4th: the epoch's end
    assert how2sign.marks_reached(7750) == 0 and how2sign.marks_reached(7751) == 1
    assert [Schedule.of(8000, 31_000).mark(k) for k in (1, 2, 4)] == [8000, 16000, 32000]


def test_the_val_subset_is_the_studys_and_costs_at_most_its_share_of_the_interval():
    rng = np.random.default_rng(1)
    train_len, val_len = rng.integers(50, 400, 31_000), rng.integers(50, 400, 1_741)
    assert val_subset(Schedule.of(0, 31_000), train_len, val_len) is None  # How2Sign: the whole split is cheap
    small = val_subset(Schedule.of(2_000, 31_000), train_len, val_len)
    smaller = val_subset(Schedule.of(1_000, 31_000), train_len, val_len)
    budget = VAL_SHARE * TRAIN_PASSES * 2_000 * train_len.mean()
    assert val_len[small].sum() <= budget < val_len.sum() and len(small) > len(smaller) >= MIN_VAL_CLIPS
    assert set(smaller) <= set(small)  # one seeded permutation: prefixes of it
    assert np.array_equal(small, val_subset(Schedule.of(2_000, 31_000), train_len, val_len))
    assert val_subset(Schedule.of(0, 800), train_len[:800], val_len) is None  # per epoch: the epoch's own only
