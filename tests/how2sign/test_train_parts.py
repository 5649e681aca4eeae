"""The training library's parts: one validation rule per field, the Plan-B phase rule, batches
(prefetch, accelerator padding), the loss reductions, checkpoints and the background writer."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from how2sign import checkpoint
from how2sign.batches import Batcher, TrainData
from how2sign.config import Phase, TrainConfig
from how2sign.features import AUGMENT_RULES, augment
from how2sign.model import SignTranslator
from how2sign.rules import ConfigError
from how2sign.run_metrics import BestEpoch, MetricsError, RunMetrics, best_epoch_of
from how2sign.train import evaluate_loss, token_loss
from how2sign.vocab import PAD_ID


def test_aug_speed_of_one_and_a_half_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"aug_speed must be in \[0, 1\), got 1.5"):
        TrainConfig(aug_speed=1.5)
    with pytest.raises(ConfigError, match="study.toml: aug_scale must be in"):
        TrainConfig().replace({"aug_scale": 1.0}, "study.toml")


@pytest.mark.parametrize("knob", sorted(AUGMENT_RULES))
@pytest.mark.parametrize("value", [-0.5, 0.0, 0.3, 0.999, 1.0, 1.5, 20.0, math.nan, math.inf])
def test_config_and_augment_accept_exactly_the_same_knob_values(knob, value):
    clip = np.ones((4, 2, 3), dtype=np.float32)
    try:
        augment(clip, np.random.default_rng(0), **{knob: value})
        augment_ok = True
    except ValueError:
        augment_ok = False
    try:
        TrainConfig(**{f"aug_{knob}": value})
        config_ok = True
    except ConfigError:
        config_ok = False
    assert config_ok == augment_ok == TrainConfig.rules()[f"aug_{knob}"].admits(value)


def test_every_field_has_one_rule_and_check_value_applies_it():
    assert set(TrainConfig.rules()) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig.check_value("lr", 1) == 1.0  # ints are accepted for floats
    assert TrainConfig.check_value("scheduler", "plateau") == "plateau"
    for key, value, text in [("aug_speed", 1.5, "aug_speed must be in [0, 1)"), ("epochs", 0, "epochs must be >= 1"),
                             ("lr", 0.0, "lr must be > 0"), ("scheduler", "step", "scheduler must be one of"),
                             ("dropout", "high", "dropout must be float"), ("seed", -1, "seed must be in [0, "),
                             ("plateau_factor", 1.0, "plateau_factor must be in (0, 1)"),
                             ("learning_rate", 1.0, "unknown TrainConfig key 'learning_rate'")]:
        with pytest.raises(ConfigError) as err:
            TrainConfig.check_value(key, value, "space.toml")
        assert str(err.value).startswith("space.toml: ") and text in str(err.value), (key, str(err.value))
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got nan"):
        TrainConfig(lr=math.nan)
    with pytest.raises(ConfigError, match="lr_min must be <= lr"):
        TrainConfig(lr=1e-4, lr_min=1e-3)  # a rule across fields: the whole config checks it
    # A rule across fields reads like a field's rule, with the same "<where>: " and the key it is about.
    for values, text in [({"lr_min": 1.0}, "space.toml: lr_min must be <= lr=0.0001, got 1.0"),
                         ({"d_model": 100, "nhead": 8}, "space.toml: nhead must divide d_model=100 (legal nhead"),
                         ({"d_model": 32, "decoder_nhead": 3}, "space.toml: decoder_nhead must divide d_model=32 (legal "
                                                               "decoder_nhead for d_model=32: [1, 2, 4, 8, 16]), got 3")]:
        with pytest.raises(ConfigError) as err:
            TrainConfig(lr=1e-4).replace(values, "space.toml")
        assert str(err.value).startswith(text), str(err.value)
        with pytest.raises(ConfigError) as err:
            TrainConfig.from_dict({"lr": 1e-4, **values}, "space.toml")
        assert str(err.value).startswith(text), str(err.value)


def test_phase_is_the_plan_b_rule():
    plain = TrainConfig(epochs=3)
    assert [plain.phase(e) for e in (1, 3)] == [Phase(True, False, True)] * 2
    plan_b = TrainConfig(epochs=3, finetune_epochs=2, train_fraction=0.5)
    assert [plan_b.phase(e) for e in range(1, plan_b.total_epochs + 1)] == [
        Phase(full_split=False, reset_patience=False, may_stop_early=True),
        Phase(full_split=False, reset_patience=False, may_stop_early=True),
        Phase(full_split=False, reset_patience=False, may_stop_early=False),  # the last subset epoch
        Phase(full_split=True, reset_patience=True, may_stop_early=True),     # fine-tuning starts
        Phase(full_split=True, reset_patience=False, may_stop_early=True),
    ]


def _batcher(corpus, **kw) -> Batcher:
    data = TrainData.load(corpus)
    cfg = TrainConfig(d_model=32, nhead=4, encoder_layers=1, decoder_layers=1, dim_feedforward=64, batch_size=4,
                      max_frames=40, aug_noise=0.01, aug_frame_dropout=0.2, aug_speed=0.2)
    return Batcher(data.train, data.vocab, cfg, **kw)


def test_prefetched_batches_and_rng_draws_are_those_built_in_line(corpus):
    batcher = _batcher(corpus)
    plan = batcher.plan(np.arange(len(batcher.split)), shuffle=True, rng=np.random.default_rng(1))
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    inline = list(batcher.batches(plan, rng_a))
    ahead = list(batcher.batches(plan, rng_b, prefetch=True))
    assert len(inline) == len(ahead) == len(plan)
    for a, b in zip(inline, ahead, strict=True):
        for name in ("src", "src_pad", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert (a.frames, a.indices, a.tokens) == (b.frames, b.indices, b.tokens)
        assert a.tokens == int(a.tgt_out.ne(PAD_ID).sum())
    assert rng_a.random() == rng_b.random()  # the same number of draws, so the next epoch is the same too


def test_a_prefetching_iterator_closed_early_stops_cleanly(corpus):
    batcher = _batcher(corpus)
    plan = batcher.plan(np.arange(len(batcher.split)), shuffle=False, rng=None)
    it = batcher.batches(plan, prefetch=True)
    first = next(it)
    it.close()
    assert first.indices == plan[0]


def test_accelerator_padding_is_masked_and_changes_no_loss(corpus):
    tight, padded = _batcher(corpus), _batcher(corpus, pad_to=(16, 8))
    torch.manual_seed(0)
    data = TrainData.load(corpus)
    model = SignTranslator(tight.cfg.model_config(data.input_dim, len(data.vocab))).eval()
    plan = tight.plan(np.arange(len(tight.split)), shuffle=False, rng=None)
    assert all(padded.make(i).src.shape[1] in (16, 32, tight.cfg.max_frames) for i in plan)  # capped at max_frames
    a, b = tight.make(plan[0]), padded.make(plan[0])  # the shortest clips: padding is added to both lengths
    assert b.src.shape[1] == 32 > a.src.shape[1] and b.tgt_in.shape[1] % 8 == 0 and b.tgt_in.shape[1] > a.tgt_in.shape[1]
    assert (a.frames, a.tokens) == (b.frames, b.tokens) and int((~b.src_pad).sum()) == b.frames
    with torch.no_grad():
        la = token_loss(model(a.src, a.src_pad, a.tgt_in), a.tgt_out)
        lb = token_loss(model(b.src, b.src_pad, b.tgt_in), b.tgt_out)
    assert torch.allclose(la, lb, atol=1e-5)


def test_evaluate_loss_is_the_per_batch_arithmetic_it_always_was(corpus):
    batcher = _batcher(corpus)
    data = TrainData.load(corpus)
    torch.manual_seed(0)
    model = SignTranslator(batcher.cfg.model_config(data.input_dim, len(data.vocab)))
    total, tokens = 0.0, 0
    with torch.no_grad():
        model.eval()
        for idx in batcher.plan(np.arange(len(batcher.split)), shuffle=False, rng=None):
            b = batcher.make(idx)
            n = int(b.tgt_out.ne(PAD_ID).sum())
            total += float(token_loss(model(b.src, b.src_pad, b.tgt_in), b.tgt_out)) * n  # a read per batch
            tokens += n
    assert evaluate_loss(model, batcher, torch.device("cpu")) == total / tokens  # bit for bit


def test_gap_at_the_best_epoch_has_one_definition():
    history = [{"epoch": 1, "train_loss": 5.0, "val_loss": 5.5}, {"epoch": 2, "train_loss": 4.0, "val_loss": 4.75}]
    assert best_epoch_of(history, 2) == BestEpoch(2, 4.0, 4.75) and best_epoch_of(history, 2).gap == 0.75
    assert best_epoch_of(history, 0) is None and best_epoch_of([], 1) is None


def test_run_metrics_refuses_a_damaged_file(tmp_path):
    assert RunMetrics.read(tmp_path) is None and RunMetrics.read(None) is None
    with pytest.raises(MetricsError, match="metrics.json"):
        RunMetrics.load(tmp_path)
    (tmp_path / "metrics.json").write_text('{"epochs": [')
    with pytest.raises(MetricsError):
        RunMetrics.load(tmp_path)
    (tmp_path / "metrics.json").write_text('{"epochs": []}')  # no best_epoch
    assert RunMetrics.read(tmp_path) is None


def test_checkpoint_snapshot_is_a_copy_that_training_cannot_change():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ck = checkpoint.run_checkpoint({"params": 8}, checkpoint.TrainState(), ["<pad>"], model, opt, sched, scaler,
                                   torch.device("cpu"))
    before = ck["model"]["weight"].clone(), ck["optimizer"]["state"][0]["exp_avg"].clone()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # in place, as the next epoch's steps are
    assert torch.equal(ck["model"]["weight"], before[0]) and torch.equal(ck["optimizer"]["state"][0]["exp_avg"], before[1])
    assert not torch.equal(model.weight.detach(), before[0])


def test_tied_weights_stay_one_tensor_in_the_snapshot():
    emb = torch.nn.Embedding(5, 4)
    head = torch.nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    copy = checkpoint.cpu_copy(torch.nn.ModuleDict({"e": emb, "h": head}).state_dict())
    assert copy["e.weight"] is copy["h.weight"]


def test_background_writer_hands_errors_to_the_training_thread(tmp_path):
    writer = checkpoint.BackgroundWriter()
    done = []
    writer.submit(done.append, 1)
    writer.submit(lambda: 1 / 0)
    assert done == [1]
    with pytest.raises(ZeroDivisionError):
        writer.wait()
    writer.wait()  # the error is raised once
    writer.submit(lambda: 1 / 0)
    writer.wait(raise_errors=False)


def test_restore_keeps_this_devices_optimizer_implementation(corpus, tiny_cfg, tmp_path):
    # A checkpoint written by a fused AdamW (as on CUDA) resumed by the default one (as on the CPU).
    data = TrainData.load(corpus)
    model = SignTranslator(tiny_cfg.model_config(data.input_dim, len(data.vocab)))
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    model.embed.weight.grad = torch.ones_like(model.embed.weight)
    fused.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(fused, T_max=3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meta = {"fingerprint": data.fingerprint, "train_config": tiny_cfg.to_dict()}
    state = checkpoint.TrainState(epoch=1, best_val_loss=3.0, best_epoch=1,
                                  history=[{"epoch": 1, "train_loss": 2.0, "val_loss": 3.0}])
    checkpoint.save(tmp_path / "ck.pt", checkpoint.run_checkpoint(meta, state, data.vocab.to_list(), model, fused,
                                                                  sched, scaler, torch.device("cpu")))
    plain = torch.optim.AdamW(model.parameters())
    restored = checkpoint.restore_run(tmp_path / "ck.pt", model=model, opt=plain,
                                      sched=torch.optim.lr_scheduler.CosineAnnealingLR(plain, T_max=3),
                                      scaler=scaler, device=torch.device("cpu"), fingerprint=data.fingerprint,
                                      train_config=tiny_cfg.to_dict())
    assert restored == state and restored.best == BestEpoch(1, 2.0, 3.0)
    assert plain.param_groups[0]["fused"] is None
    assert plain.state[model.embed.weight]["step"].device.type == "cpu"


def test_the_cpu_optimizer_gives_the_default_adamws_exact_results(tiny_cfg):
    from how2sign.train import make_optimizer

    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)))
    default = torch.optim.AdamW(models[0].parameters(), lr=tiny_cfg.lr, weight_decay=tiny_cfg.weight_decay)
    ours, _ = make_optimizer(models[1], tiny_cfg, torch.device("cpu"))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, opt in zip(models, (default, ours), strict=True):
            opt.zero_grad()
            model(x).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))
