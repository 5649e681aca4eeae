"""The decoding algorithms incremental decoding (how2sign/decoding.py) replaced, kept as the reference it must
equal: the whole prefix recomputed at every step, one clip at a time for the beam. tests/how2sign/test_decoding.py
checks decoding against them on random models; a trained model's evaluation is checked with
`evaluate_with_full_recomputation` (there, and in tests/search/test_frozen_encoder.py for a study's trial)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from how2sign import decoding
from how2sign.batches import Batcher, TrainData
from how2sign.config import TrainConfig
from how2sign.evaluate import Evaluation, evaluate_checkpoint, load_model
from how2sign.model import SignTranslator
from how2sign.vocab import BOS_ID, EOS_ID, PAD_ID


def old_decode(m: SignTranslator, tgt_in, memory, src_pad):
    """decode() as it was: a causal mask built on every call, causality detected by PyTorch."""
    L = tgt_in.size(1)
    y = m.dropout(m.tgt_pos(m.embed(tgt_in) * math.sqrt(m.cfg.d_model)))
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    h = m.decoder(y, memory, tgt_mask=causal, tgt_key_padding_mask=tgt_in.eq(PAD_ID), memory_key_padding_mask=src_pad)
    return m.head(h)


@torch.no_grad()
def reference_greedy(m: SignTranslator, src, src_pad, max_len):
    """The greedy search it replaced: the whole prefix recomputed at every step."""
    memory = m.encode(src, src_pad)
    ys = torch.full((src.size(0), 1), BOS_ID, dtype=torch.long)
    done = torch.zeros(src.size(0), dtype=torch.bool)
    for _ in range(max_len - 1):
        nxt = old_decode(m, ys, memory, src_pad)[:, -1].argmax(-1).masked_fill(done, PAD_ID)
        ys = torch.cat([ys, nxt.unsqueeze(1)], dim=1)
        done |= nxt.eq(EOS_ID)
        if bool(done.all()):
            break
    return [decoding.strip(row) for row in ys[:, 1:].tolist()]


@torch.no_grad()
def step_logit_difference(m: SignTranslator, src, src_pad, steps: int) -> float:
    """The largest difference between the incremental decoder's logits (decoding.DecoderCache) and full
    recomputation's at each of `steps` greedy steps: sensitive where the hypotheses are not (a model that
    says one word whatever it sees still has logits that a mis-split cache would change)."""
    memory = m.encode(src, src_pad)
    cache = decoding.DecoderCache(m, memory, src_pad)
    ys = torch.full((src.size(0), 1), BOS_ID, dtype=torch.long)
    worst = 0.0
    for t in range(steps):
        incremental = cache.step(ys[:, -1], t)
        full = old_decode(m, ys, memory, src_pad)[:, -1]
        worst = max(worst, float((incremental - full).abs().max()))
        ys = torch.cat([ys, full.argmax(-1, keepdim=True)], dim=1)
    return worst


@torch.no_grad()
def reference_beam(m: SignTranslator, src, src_pad, beam_size, max_len, length_penalty=1.0):
    """The beam search it replaced: one clip at a time, Python lists of hypotheses, full recomputation."""
    results = []
    for b in range(src.size(0)):
        memory = m.encode(src[b : b + 1], src_pad[b : b + 1])
        beams, finished = [(0.0, [BOS_ID])], []
        for _ in range(max_len - 1):
            ys = torch.tensor([seq for _, seq in beams])
            mem = memory.expand(len(beams), -1, -1)
            logp = old_decode(m, ys, mem, src_pad[b : b + 1].expand(len(beams), -1))[:, -1].log_softmax(-1)
            cand = []
            for (score, seq), row in zip(beams, logp, strict=True):
                top = row.topk(beam_size)
                cand += [(score + v, [*seq, i]) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
            cand.sort(key=lambda c: -c[0])
            beams = []
            for score, seq in cand:
                (finished if seq[-1] == EOS_ID else beams).append((score, seq))
                if len(beams) == beam_size:
                    break
            if len(finished) >= beam_size or not beams:
                break
        pool = finished or beams
        best = max(pool, key=lambda c: c[0] / (len(c[1]) - 1) ** length_penalty)
        results.append(decoding.strip(best[1][1:]))
    return results


def evaluate_with_full_recomputation(checkpoint_path: Path, root: Path, split: str = "val") -> Evaluation:
    """`evaluate_checkpoint` as it is, with its greedy search replaced by the full-recomputation reference."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoding, "greedy", lambda m, src, pad, max_len=None: reference_greedy(
            m, src, pad, decoding.decode_limit(m, max_len)))
        return evaluate_checkpoint(checkpoint_path, root, split)


def checkpoint_step_logit_difference(checkpoint_path: Path, root: Path, steps: int = 12) -> float:
    """step_logit_difference for a checkpoint's model on every val clip of the data at `root`, in one batch."""
    model, vocab, state = load_model(checkpoint_path)
    val = TrainData.load(root, vocab=vocab).val
    batch = Batcher(val, vocab, TrainConfig.from_dict(state["train_config"])).make(list(range(len(val))))
    return step_logit_difference(model, batch.src, batch.src_pad, steps)
