import dataclasses
import json
import math

import pytest
import torch

from how2sign import checkpoint
from how2sign.batches import TrainData
from how2sign.evaluate import evaluate_checkpoint
from how2sign.train import NonFiniteLoss, train


def losses(history):
    return [(h["epoch"], round(h["train_loss"], 6), round(h["val_loss"], 6)) for h in history]


def test_train_writes_checkpoints_and_metrics(corpus, tiny_cfg, tmp_path):
    data = TrainData.load(corpus)
    seen = []
    r = train(tiny_cfg, data, tmp_path / "run", device="cpu", report=lambda e, v, _point: seen.append((e, v)))
    assert r.epochs_run == tiny_cfg.epochs and [e for e, _ in seen] == [1, 2, 3, 4]
    assert r.params == sum(p.numel() for p in
                           __import__("how2sign.model", fromlist=["x"]).SignTranslator(
                               tiny_cfg.model_config(data.input_dim, len(data.vocab))).parameters())
    # Learning happens: validation loss falls.
    assert r.history[-1]["val_loss"] < r.history[0]["val_loss"]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [set(e) for e in m["epochs"]] == [{"epoch", "train_loss", "val_loss", "lr", "seconds",
                                               "frames_per_second"}] * 4
    # Cosine schedule from lr towards lr_min.
    lrs = [e["lr"] for e in m["epochs"]]
    assert lrs[0] == tiny_cfg.lr and lrs == sorted(lrs, reverse=True)
    state = checkpoint.load(tmp_path / "run" / checkpoint.LAST)
    desc = checkpoint.describe(state)
    assert desc["epoch"] == 4 and desc["fingerprint"] == data.fingerprint and desc["params"] == r.params
    assert state["train_config"] == tiny_cfg.to_dict() and state["vocab"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    best = checkpoint.load(tmp_path / "run" / checkpoint.BEST)
    assert best["epoch"] == r.best_epoch and math.isclose(r.gap, r.best_val_loss - r.train_loss)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(corpus, tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, aug_noise=0.01, aug_frame_dropout=0.1)  # RNG-heavy on purpose
    data = TrainData.load(corpus)
    full = train(cfg, data, tmp_path / "full", device="cpu")
    done = []
    part = train(cfg, data, tmp_path / "part", device="cpu", on_epoch=lambda r: done.append(r["epoch"]),
                 should_stop=lambda: len(done) >= 2)
    assert part.interrupted and part.epochs_run == 2
    rest = train(cfg, data, tmp_path / "part", device="cpu", resume=True)
    assert rest.resumed_from_epoch == 2
    assert losses(rest.history) == losses(full.history)
    assert rest.best_val_loss == full.best_val_loss


def test_early_stopping_ends_the_run(corpus, tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, epochs=10, patience=2, min_delta=100.0)  # nothing counts as better
    r = train(cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1


def test_report_can_stop_a_run_after_checkpointing(corpus, tiny_cfg, tmp_path):
    class Stop(Exception):
        pass

    def report(epoch, _val, _point):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_cfg, TrainData.load(corpus), tmp_path / "r", device="cpu", report=report)
    assert checkpoint.load(tmp_path / "r" / checkpoint.LAST)["epoch"] == 2


def test_a_report_of_two_arguments_still_gets_the_epoch_and_the_loss(corpus, tiny_cfg, tmp_path):
    """Scripts outside this repo wrote report(epoch, val_loss) before reports came inside epochs."""
    from how2sign.train import report_hook

    seen, three = [], []
    train(dataclasses.replace(tiny_cfg, epochs=2), TrainData.load(corpus), tmp_path / "r", device="cpu",
          report=lambda epoch, val_loss: seen.append((epoch, val_loss)))
    train(dataclasses.replace(tiny_cfg, epochs=2), TrainData.load(corpus), tmp_path / "s", device="cpu",
          report=lambda step, val_loss, point: three.append((step, val_loss, point.epoch)))
    assert [e for e, _ in seen] == [1, 2] and all(math.isfinite(v) for _, v in seen)
    assert seen == [(s, v) for s, v, _ in three]  # the same run, told the same values
    with pytest.raises(TypeError):
        report_hook(lambda only_one: None)  # neither shape: refused before the run, not at its first report
    assert report_hook(None) is None


def test_nan_loss_raises(corpus, tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, lr=1e12, lr_min=0.0, epochs=2)
    with pytest.raises(NonFiniteLoss, match="nan|inf"):
        train(cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")


def test_plan_b_subset_then_finetune_with_augmentation(corpus, tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, epochs=2, finetune_epochs=2, train_fraction=0.5, aug_speed=0.2,
                              aug_rotate=5.0, aug_scale=0.1, aug_shear=0.1, scheduler="plateau")
    r = train(cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")
    assert r.epochs_run == 4 and all(math.isfinite(h["val_loss"]) for h in r.history)


def test_resume_refuses_other_data_or_config(corpus, tiny_cfg, tmp_path):
    data = TrainData.load(corpus)
    train(dataclasses.replace(tiny_cfg, epochs=1), data, tmp_path / "r", device="cpu")
    with pytest.raises(checkpoint.CheckpointError, match="different TrainConfig"):
        train(dataclasses.replace(tiny_cfg, epochs=1, lr=5e-4), data, tmp_path / "r", device="cpu", resume=True)


def test_evaluate_reports_every_metric(corpus, tiny_cfg, tmp_path):
    data = TrainData.load(corpus)
    train(tiny_cfg, data, tmp_path / "r", device="cpu")
    ev = evaluate_checkpoint(tmp_path / "r" / checkpoint.BEST, corpus, "val", device="cpu")
    m = ev.metrics()
    assert {"bleu", "chrf", "val_loss", "gap", "vocab_coverage", "repetition_rate", "verdict"} <= set(m)
    assert 0 <= m["bleu"] <= 100 and 0 <= m["vocab_coverage"] <= 1 and m["verdict"] in (
        "none", "minimum", "good", "excellent")
    assert len(ev.hypotheses) == len(data.val) and ev.names == list(data.val.names)
    beam = evaluate_checkpoint(tmp_path / "r" / checkpoint.BEST, corpus, "val", device="cpu", beam_size=3)
    assert beam.decoding == "beam3" and len(beam.hypotheses) == len(ev.hypotheses)


def test_foreign_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="not an h2s-search checkpoint"):
        checkpoint.load(bad)
    (tmp_path / "y.pt").write_text("hello")
    with pytest.raises(checkpoint.CheckpointError, match="not an h2s-search checkpoint"):
        checkpoint.load(tmp_path / "y.pt")


def test_run_metrics_reads_what_train_wrote(corpus, tiny_cfg, tmp_path):
    from how2sign.run_metrics import RunMetrics

    data = TrainData.load(corpus)
    r = train(tiny_cfg, data, tmp_path / "run", device="cpu")
    m = RunMetrics.load(tmp_path / "run")
    assert (m.best_epoch, m.best_val_loss, m.epochs_run, m.params) == (r.best_epoch, r.best_val_loss, 4, r.params)
    assert (m.train_loss, m.gap) == (r.train_loss, r.gap) and m.history == r.history
    assert m.fingerprint == data.fingerprint and m.train_config == tiny_cfg.to_dict()
    assert m.val_curve() == [(h["epoch"], h["val_loss"]) for h in r.history]
    assert math.isclose(m.frames_per_second, r.frames_per_second, rel_tol=1e-9)
    ev = evaluate_checkpoint(tmp_path / "run" / checkpoint.BEST, corpus, "val", device="cpu")
    assert ev.gap == r.gap and ev.train_loss == r.train_loss


def test_time_split_adds_up_to_at_most_the_wall_time(corpus, tiny_cfg, tmp_path):
    r = train(tiny_cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")
    parts = (r.seconds_train, r.seconds_validate, r.seconds_checkpoint)
    assert all(p > 0 for p in parts) and sum(parts) <= r.seconds
    assert math.isclose(r.seconds_other, r.seconds - sum(parts), abs_tol=1e-12)
    assert r.seconds_train >= sum(h["seconds"] for h in r.history)


def test_times_are_kept_when_a_report_stops_the_run(corpus, tiny_cfg, tmp_path):
    from how2sign.train import TrainTimes

    times = TrainTimes()

    def report(epoch, _val, _point):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg, TrainData.load(corpus), tmp_path / "r", device="cpu", report=report, times=times)
    assert times.train > 0 and times.validate > 0 and times.checkpoint > 0


def test_background_writes_leave_loadable_checkpoints_when_train_returns(corpus, tiny_cfg, tmp_path):
    from how2sign.run_metrics import RunMetrics

    out = tmp_path / "r"
    r = train(dataclasses.replace(tiny_cfg, epochs=3), TrainData.load(corpus), out, device="cpu")
    last, best = checkpoint.load(out / checkpoint.LAST), checkpoint.load(out / checkpoint.BEST)
    assert last["epoch"] == r.epochs_run == 3 and last["history"] == r.history
    assert best["epoch"] == r.best_epoch and best["best_val_loss"] == r.best_val_loss
    assert RunMetrics.load(out).epochs_run == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([checkpoint.LAST, checkpoint.BEST, "metrics.json"])
    # The files are complete: a run resumed from them has nothing left to do and agrees with the first.
    again = train(dataclasses.replace(tiny_cfg, epochs=3), TrainData.load(corpus), out, device="cpu", resume=True)
    assert again.resumed_from_epoch == 3 and again.history == r.history and again.best_val_loss == r.best_val_loss
