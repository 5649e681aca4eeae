"""Masked keypoint pretraining, the encoder file, and a pretrained encoder inside train()."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from how2sign import checkpoint, model
from how2sign.batches import TrainData
from how2sign.config import TrainConfig
from how2sign.encoder_file import (
    EncoderFileError,
    FeatureLayout,
    check_encoder,
    read_encoder,
    save_encoder,
)
from how2sign.encoder_init import apply_encoder_init, param_groups
from how2sign.model import PoseEncoder, SignTranslator
from how2sign.pretrain import PretrainConfig, interpolate, make_mask, masked_loss, pretrain
from how2sign.train import make_optimizer, train

TINY_PRE = PretrainConfig(d_model=32, nhead=4, encoder_layers=1, dim_feedforward=64, batch_size=8, lr=1e-3,
                          lr_min=1e-5, epochs=2)


@pytest.fixture(scope="module")
def pretrained(corpus_master, tmp_path_factory):
    """One tiny pretraining run on a private copy of the corpus: (root, out folder)."""
    root = tmp_path_factory.mktemp("pre") / "h2s"
    shutil.copytree(corpus_master, root, ignore=shutil.ignore_patterns("h2s-packed"))
    out = root.parent / "out"
    pretrain(TINY_PRE, root, out, device="cpu")
    return root, out


def encoder_state(m: SignTranslator) -> dict:
    return {k: v.clone() for k, v in m.encoder.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_writes_encoder_metrics_and_resumes_exactly(pretrained, tmp_path):
    root, out = pretrained
    m = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert m["interpolation_error"] > 0 and m["beats_interpolation"] == (m["best_val_error"] < m["interpolation_error"])
    assert ("does NOT beat" in m["verdict"]) != m["beats_interpolation"]
    lrs = [e["lr"] for e in m["epochs"]]
    assert lrs[0] == TINY_PRE.lr and lrs[1] < lrs[0]  # cosine
    ef = read_encoder(out / "encoder.pt")
    data = TrainData.load(root)
    assert ef.kind == "h2s" and ef.fingerprint == data.train.fingerprint
    assert ef.layout == FeatureLayout(tuple(data.train.points)) and ef.shape["d_model"] == 32
    # Interrupted after epoch 1, then resumed: the same losses as the uninterrupted run.
    done = []
    part = pretrain(TINY_PRE, root, tmp_path / "part", device="cpu", on_epoch=lambda r: done.append(r),
                    should_stop=lambda: len(done) >= 1)
    assert part.interrupted and part.epochs_run == 1
    rest = pretrain(TINY_PRE, root, tmp_path / "part", device="cpu", resume=True)
    assert rest.resumed_from_epoch == 1
    assert [round(e["train_loss"], 6) for e in rest.history] == [round(e["train_loss"], 6) for e in m["epochs"]]
    assert rest.val_error == pytest.approx(m["best_val_error"], rel=1e-6)


def test_pretraining_learns_from_train_only(pretrained, tmp_path):
    """Other val sentences change nothing: the encoder never sees them."""
    root, out = pretrained
    other = tmp_path / "h2s"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns("h2s-packed"))
    csv = next((other / "sentence_level" / "val").rglob("*.csv"))
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0]] + [ln.rsplit("\t", 1)[0] + "\tsomething else entirely" for ln in lines[1:]]) + "\n")
    cfg = dataclasses.replace(TINY_PRE, epochs=1)
    a = pretrain(cfg, root, tmp_path / "a", device="cpu")
    b = pretrain(cfg, other, tmp_path / "b", device="cpu")
    assert same(read_encoder(a.encoder).state_dict, read_encoder(b.encoder).state_dict)


def test_masks_hide_about_half_the_frames_in_spans_and_whole_hands():
    layout = FeatureLayout(tuple(range(0, 12)) + tuple(range(95, 137)))
    hands = layout.hand_points()
    assert len(hands[0]) == len(hands[1]) == 21
    cfg = dataclasses.replace(TINY_PRE, hand_drop=0.3)
    mask = make_mask(400, len(layout.points), np.random.default_rng(0), cfg, hands)
    frames = mask.all(axis=1)
    assert 0.45 <= frames.mean() <= 0.6
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, frames.astype(int), 0])))[::2]
    assert runs.min() >= cfg.span_min
    partial = mask.any(axis=1) & ~frames
    assert partial.any()
    for row in mask[partial]:
        hidden = set(np.flatnonzero(row))
        assert hidden in (set(hands[0]), set(hands[1]))


def test_interpolation_is_exact_on_linear_motion_and_loss_counts_only_hidden_visible_points():
    T, P = 20, 3
    clip = np.zeros((T, P, 3), dtype=np.float32)
    clip[..., 0] = np.arange(T)[:, None] * 0.1
    clip[..., 1] = 1.0
    clip[..., 2] = 1.0
    mask = np.zeros((T, P), dtype=bool)
    mask[5:11] = True
    assert np.allclose(interpolate(clip, mask)[mask], clip[..., :2][mask])
    src = torch.from_numpy(clip).unsqueeze(0)
    m = torch.from_numpy(mask).unsqueeze(0)
    src[0, 7, 1, 2] = 0.0  # hidden but not visible in the source: does not count
    pred = src[..., :2].clone()
    pred[0, 7, 1] += 5.0
    pred[0, 15] += 5.0  # shown frames do not count either
    assert float(masked_loss(pred, src, m)) == 0.0
    pred[0, 6, 0, 0] += 1.0
    assert float(masked_loss(pred, src, m)) > 0.0


def test_frozen_encoder_stays_bit_identical_through_training(pretrained, tiny_cfg, tmp_path):
    root, out = pretrained
    data = TrainData.load(root)
    cfg = dataclasses.replace(tiny_cfg, epochs=2, encoder_init=str(out / "encoder.pt"), freeze_encoder=True)
    r = train(cfg, data, tmp_path / "run", device="cpu")
    saved = read_encoder(out / "encoder.pt").state_dict
    for name in (checkpoint.LAST, checkpoint.BEST):
        ck = checkpoint.load(tmp_path / "run" / name)
        enc = {k[len("encoder."):]: v for k, v in ck["model"].items() if k.startswith("encoder.")}
        assert same(enc, saved)
    full = SignTranslator(cfg.model_config(data.input_dim, len(data.vocab)))
    assert r.params == full.trainable_parameters() - sum(p.numel() for p in full.encoder.parameters())  # trainable only


def test_cached_outputs_give_the_same_losses_and_skip_the_encoder(corpus, tiny_cfg, tmp_path, monkeypatch):
    data = TrainData.load(corpus)
    cfg = dataclasses.replace(tiny_cfg, epochs=2, freeze_encoder=True, dropout=0.2)  # random-frozen
    calls = {"n": 0}
    real = PoseEncoder.forward

    def counting(self, src, src_pad):
        calls["n"] += 1
        return real(self, src, src_pad)

    monkeypatch.setattr(model.PoseEncoder, "forward", counting)
    monkeypatch.setenv("H2S_ENCODER_CACHE_MB", "0")
    plain = train(cfg, data, tmp_path / "plain", device="cpu")
    uncached_calls, calls["n"] = calls["n"], 0
    monkeypatch.setenv("H2S_ENCODER_CACHE_MB", "64")
    cached = train(cfg, data, tmp_path / "cached", device="cpu")
    first_calls, calls["n"] = calls["n"], 0
    again = train(cfg, data, tmp_path / "again", device="cpu")  # the next trial of this worker
    # Once over each split instead of once per batch per epoch; none at all for the worker's next trial.
    assert first_calls * cfg.epochs == uncached_calls and calls["n"] == 0
    for a, b in ((plain, cached), (cached, again)):
        for ha, hb in zip(a.history, b.history, strict=True):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5)
            assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-5)
    # The cached run's checkpoint is an ordinary translation model: it decodes from keypoints.
    from how2sign.evaluate import evaluate_checkpoint

    ev = evaluate_checkpoint(cached.best_checkpoint, corpus, "val")
    assert ev.val_loss == pytest.approx(cached.best_val_loss, rel=1e-5)


def test_finetuning_uses_a_scaled_encoder_learning_rate(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, encoder_lr_scale=0.1)
    m = SignTranslator(cfg.model_config(30, 20))
    opt, _ = make_optimizer(m, cfg)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, pytest.approx(cfg.lr * 0.1)]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    assert len(param_groups(m, tiny_cfg)) == 1


@pytest.mark.parametrize("wrap", ["plain", "encoder.", "model.", "lightning"])
def test_plain_and_prefixed_state_dicts_load(corpus, tiny_cfg, tmp_path, wrap):
    data = TrainData.load(corpus)
    cfg = tiny_cfg.model_config(data.input_dim, len(data.vocab))
    torch.manual_seed(1)
    source = SignTranslator(cfg)
    enc = source.encoder.state_dict()
    doc = {"plain": enc, "encoder.": source.state_dict(), "model.": {f"model.{k}": v for k, v in enc.items()},
           "lightning": {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                         "pytorch-lightning_version": "2.4.0"}}[wrap]
    torch.save(doc, tmp_path / "enc.ckpt")
    torch.manual_seed(2)
    target = SignTranslator(cfg)
    assert not same(encoder_state(target), dict(enc))
    apply_encoder_init(target, dataclasses.replace(tiny_cfg, encoder_init=str(tmp_path / "enc.ckpt")), data)
    assert same(encoder_state(target), dict(enc))


def _bad(pretrained, tmp_path, **change):
    root, out = pretrained
    data = TrainData.load(root)
    cfg = TrainConfig(**{**dict(d_model=32, nhead=4, encoder_layers=1, dim_feedforward=64), **change})
    ef = read_encoder(out / "encoder.pt")
    layout = FeatureLayout(tuple(data.train.points))
    check_encoder(ef, cfg.model_config(data.input_dim, 5), layout, data.train.fingerprint)


@pytest.mark.parametrize(("change", "needle"), [
    ({"d_model": 64}, "d_model is 32"), ({"nhead": 2}, "nhead is 4"), ({"encoder_layers": 2}, "encoder_layers is 1"),
    ({"dim_feedforward": 128}, "dim_feedforward is 64")])
def test_encoder_from_another_architecture_is_refused(pretrained, tmp_path, change, needle):
    with pytest.raises(EncoderFileError, match=needle):
        _bad(pretrained, tmp_path, **change)


def test_other_layout_dataset_and_corrupt_files_are_refused(pretrained, corpus, tiny_cfg, tmp_path):
    root, out = pretrained
    data = TrainData.load(root)
    ef = read_encoder(out / "encoder.pt")
    cfg = tiny_cfg.model_config(data.input_dim, 5)
    layout = FeatureLayout(tuple(data.train.points))
    enc = PoseEncoder(cfg)
    save_encoder(tmp_path / "layout.pt", enc, cfg, dataclasses.replace(layout, points=layout.points[::-1]),
                 ef.fingerprint)
    with pytest.raises(EncoderFileError, match="feature layout differs in points"):
        check_encoder(read_encoder(tmp_path / "layout.pt"), cfg, layout, data.train.fingerprint)
    save_encoder(tmp_path / "other.pt", enc, cfg, layout, "0" * 64)
    with pytest.raises(EncoderFileError, match="another dataset"):
        check_encoder(read_encoder(tmp_path / "other.pt"), cfg, layout, data.train.fingerprint)
    narrow = dataclasses.replace(cfg, input_dim=cfg.input_dim - 3)
    torch.save(PoseEncoder(narrow).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(EncoderFileError, match="input features"):
        check_encoder(read_encoder(tmp_path / "narrow.pt"), cfg, layout, data.train.fingerprint)
    (tmp_path / "corrupt.pt").write_bytes((out / "encoder.pt").read_bytes()[:500])
    (tmp_path / "junk.pt").write_bytes(b"\x00not a file" * 50)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    for name, needle in (("corrupt.pt", "not a readable"), ("junk.pt", "not a readable"),
                         ("foreign.pt", "no pose-encoder weights"), ("absent.pt", "not found")):
        with pytest.raises(EncoderFileError, match=needle):
            read_encoder(tmp_path / name)
    bad_cfg = dataclasses.replace(tiny_cfg, encoder_init=str(tmp_path / "corrupt.pt"))
    with pytest.raises(checkpoint.CheckpointError):
        train(bad_cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")
