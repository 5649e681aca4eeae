"""Incremental decoding (how2sign/decoding.py) against the full-recomputation algorithms it replaced."""

import math

import pytest
import torch
from decoding_reference import (
    checkpoint_step_logit_difference,
    evaluate_with_full_recomputation,
    old_decode,
    reference_beam,
    reference_greedy,
)

from how2sign import checkpoint, decoding
from how2sign import evaluate as evaluate_module
from how2sign.batches import TrainData
from how2sign.config import TrainConfig
from how2sign.data import csv_path, load_split, read_csv
from how2sign.evaluate import decode_limit, evaluate_checkpoint, translate
from how2sign.model import SignTranslator
from how2sign.train import train
from how2sign.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab, tokenize


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: a second thread only adds contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_model(seed: int, *, d_model=32, nhead=4, layers=2, vocab=24, max_tokens=16, input_dim=6,
                 decoder_nhead=0, decoder_feedforward=0) -> SignTranslator:
    torch.manual_seed(seed)
    cfg = TrainConfig(d_model=d_model, nhead=nhead, encoder_layers=1, decoder_layers=layers,
                      dim_feedforward=64, dropout=0.1, max_tokens=max_tokens, decoder_nhead=decoder_nhead,
                      decoder_feedforward=decoder_feedforward)
    m = SignTranslator(cfg.model_config(input_dim=input_dim, vocab_size=vocab))
    with torch.no_grad():  # sharper, more varied distributions than the initialisation, EOS reachable
        for p in m.decoder.parameters():
            p.mul_(3.0)
        m.embed.weight.mul_(4.0)
        m.embed.weight[PAD_ID].zero_()
    return m.eval()


def random_batch(seed: int, B: int = 5, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(B, T, 6, generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    pad = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)
    return src.masked_fill(pad.unsqueeze(-1), 0.0), pad


@pytest.mark.parametrize("seed", range(4))
def test_decode_with_cached_causal_mask_equals_the_explicit_mask_exactly(seed):
    m = random_model(seed)
    src, pad = random_batch(seed)
    tgt = torch.randint(4, 24, (5, 7))
    tgt[:, 0] = BOS_ID
    tgt[1, 5:] = PAD_ID
    memory = m.encode(src, pad)
    for training in (False, True):
        m.train(training)
        torch.manual_seed(seed)
        new = m.decode(tgt, memory, pad)
        torch.manual_seed(seed)
        old = old_decode(m, tgt, memory, pad)
        assert torch.equal(new, old)
    assert "causal_mask" not in m.state_dict()  # checkpoints keep their keys


@pytest.mark.parametrize("seed", range(6))
def test_incremental_greedy_matches_full_recomputation(seed):
    m = random_model(seed, layers=1 + seed % 2, nhead=(2, 4, 8)[seed % 3])
    src, pad = random_batch(100 + seed)
    for max_len in (2, 6, 16):
        assert decoding.greedy(m, src, pad, max_len=max_len) == reference_greedy(m, src, pad, max_len)


@pytest.mark.parametrize("seed", range(6))
def test_batched_beam_matches_the_per_clip_algorithm(seed):
    m = random_model(seed, layers=1 + seed % 2)
    src, pad = random_batch(200 + seed, B=4)
    for beam_size, max_len, lp in ((2, 8, 1.0), (4, 16, 1.0), (3, 12, 0.6), (4, 3, 1.0)):
        got = decoding.beam(m, src, pad, beam_size=beam_size, max_len=max_len, length_penalty=lp)
        assert got == reference_beam(m, src, pad, beam_size, max_len, lp), (beam_size, max_len, lp)


# The decoder's own shape (a frozen-encoder study searches decoder_nhead and decoder_feedforward around a
# fixed encoder): the caches must split keys and values by the decoder's heads, not the encoder's.
DECODER_SHAPES = [(4, 8, 0), (4, 2, 0), (8, 1, 128), (2, 16, 32), (4, 0, 256)]


@pytest.mark.parametrize("nhead, decoder_nhead, decoder_feedforward", DECODER_SHAPES)
def test_decoding_with_the_decoders_own_heads_and_width_matches_full_recomputation(nhead, decoder_nhead,
                                                                                  decoder_feedforward):
    for seed in range(3):
        m = random_model(seed, nhead=nhead, decoder_nhead=decoder_nhead, decoder_feedforward=decoder_feedforward)
        layer = m.decoder.layers[0]
        assert layer.self_attn.num_heads == m.cfg.decoder_heads == (decoder_nhead or nhead)
        assert layer.linear1.out_features == (decoder_feedforward or 64)
        src, pad = random_batch(300 + seed)
        for max_len in (6, 16):
            assert decoding.greedy(m, src, pad, max_len=max_len) == reference_greedy(m, src, pad, max_len)
        for beam_size in (2, 4):
            got = decoding.beam(m, src, pad, beam_size=beam_size, max_len=12)
            assert got == reference_beam(m, src, pad, beam_size, 12, 1.0)


def test_a_trained_decoder_with_its_own_heads_gets_the_same_bleu_as_full_recomputation(corpus, tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_sets(["epochs=2", "decoder_nhead=8", "decoder_feedforward=128"])
    train(cfg, TrainData.load(corpus), tmp_path / "r", device="cpu")
    best = tmp_path / "r" / checkpoint.BEST
    incremental = evaluate_checkpoint(best, corpus, "val")
    full = evaluate_with_full_recomputation(best, corpus)
    assert incremental.hypotheses == full.hypotheses and incremental.bleu == full.bleu
    assert checkpoint_step_logit_difference(best, corpus) < 1e-4  # where the hypotheses cannot tell


def eos_bias(m: SignTranslator, bias: float) -> None:
    """Shift every <eos> logit, in the incremental and the full path alike (both end in m.head)."""
    def hook(_module, _inputs, out):
        out = out.clone()
        out[..., EOS_ID] += bias
        return out
    m.head.register_forward_hook(hook)


@pytest.mark.parametrize("bias", [2.0, 50.0])
def test_beam_collects_finished_hypotheses_like_the_per_clip_algorithm(bias):
    m = random_model(3)
    eos_bias(m, bias)  # many early <eos>: finished lists fill up, clips stop at different steps
    src, pad = random_batch(5, B=6)
    for K in (2, 4):
        assert decoding.beam(m, src, pad, beam_size=K) == reference_beam(m, src, pad, K, m.cfg.max_tokens)
    assert decoding.greedy(m, src, pad) == reference_greedy(m, src, pad, m.cfg.max_tokens)


def test_max_length_cap_is_respected():
    m = random_model(2)
    eos_bias(m, -math.inf)  # <eos> never wins: every hypothesis runs to the cap
    src, pad = random_batch(9, B=3)
    for cap in (2, 5, 9):
        assert [len(x) for x in decoding.greedy(m, src, pad, max_len=cap)] == [cap - 1] * 3
        b = decoding.beam(m, src, pad, beam_size=3, max_len=cap)
        assert b == reference_beam(m, src, pad, 3, cap) and all(len(x) <= cap - 1 for x in b)
    # Never past the positional table: max_tokens bounds any larger request.
    assert all(len(x) == m.cfg.max_tokens - 1 for x in decoding.greedy(m, src, pad, max_len=10 * m.cfg.max_tokens))


def test_ties_are_broken_like_the_per_clip_algorithm():
    # Logits rounded to whole numbers: many hypotheses score exactly alike, so rank order on ties matters.
    m = random_model(4)
    m.head.register_forward_hook(lambda _m, _i, out: out.round())
    src, pad = random_batch(11, B=6)
    for K, lp in ((3, 1.0), (4, 0.0), (4, 1.0)):
        assert decoding.beam(m, src, pad, beam_size=K, length_penalty=lp) == reference_beam(m, src, pad, K, 16, lp)
    assert decoding.greedy(m, src, pad) == reference_greedy(m, src, pad, 16)


def test_evaluation_decodes_up_to_the_longest_training_target_plus_a_margin(corpus, tiny_cfg, tmp_path):
    train = read_csv(csv_path(corpus, "train"))
    longest = max(len(tokenize(r.sentence)) for r in train) + 2  # with <bos> and <eos>
    vocab = Vocab.build(r.sentence for r in train)
    cfg = tiny_cfg.with_sets(["max_tokens=64"])
    assert longest + 4 < 64
    assert decode_limit(corpus, vocab, cfg) == longest + max(4, math.ceil(0.1 * longest))
    assert decode_limit(corpus, vocab, cfg.with_sets([f"max_tokens={longest}"])) == longest  # capped
    assert decode_limit(tmp_path, vocab, cfg) == 64  # no train CSV: max_tokens

    val = load_split(corpus, "val")
    m = random_model(5, vocab=len(vocab), max_tokens=64, input_dim=val.num_points * 3)
    eos_bias(m, -math.inf)  # runs to whatever cap it is given
    hyps = translate(m, val, vocab, cfg, max_len=5)
    assert [len(tokenize(h)) for h in hyps] == [4] * len(val)
    hyps = translate(m, val, vocab, cfg, beam_size=2, max_len=5)
    assert all(len(tokenize(h)) <= 4 for h in hyps)


def test_evaluate_checkpoint_can_take_the_training_loops_val_loss(corpus, tiny_cfg, tmp_path, monkeypatch):
    result = train(tiny_cfg.with_sets(["epochs=1"]), TrainData.load(corpus), tmp_path / "r", device="cpu")
    best = tmp_path / "r" / checkpoint.BEST
    ev = evaluate_checkpoint(best, corpus, "val")
    assert ev.val_loss == result.best_val_loss  # recomputing it repeats the training loop's value exactly

    def no_second_pass(*_args, **_kw):
        raise AssertionError("evaluate_loss ran although val_loss was given")

    monkeypatch.setattr(evaluate_module, "evaluate_loss", no_second_pass)
    again = evaluate_checkpoint(best, corpus, "val", val_loss=result.best_val_loss)
    assert again.metrics() == ev.metrics() and again.hypotheses == ev.hypotheses
