"""Decoding and translation metrics: sacrebleu BLEU-4 and chrF (0-100), coverage, repetitions, verdict."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import sacrebleu
import torch

from . import checkpoint, decoding
from .batches import Batcher
from .config import TrainConfig
from .data import PackedSplit, csv_path, load_split, read_csv
from .device import amp_dtype, resolve_device
from .model import ModelConfig, SignTranslator
from .run_metrics import best_epoch_of
from .train import evaluate_loss
from .vocab import Vocab, tokenize

VERDICTS = ("none", "minimum", "good", "excellent")

# Decoding stops this far past the longest training target: at least MARGIN_TOKENS, or MARGIN_SHARE of it.
MARGIN_TOKENS = 4
MARGIN_SHARE = 0.1


@dataclass(frozen=True)
class Criteria:
    """Success thresholds from the V4 notes. BLEU is on sacrebleu's 0-100 scale (the notes' 0.015 is 1.5)."""

    minimum_val_loss: float = 4.5
    minimum_gap: float = 0.5
    minimum_bleu: float = 1.5
    good_val_loss: float = 4.0
    good_gap: float = 0.3
    good_bleu: float = 3.0
    good_coverage: float = 0.02
    excellent_val_loss: float = 3.8
    excellent_gap: float = 0.2
    excellent_bleu: float = 8.0
    excellent_repetition_rate: float = 0.0  # "coherent predictions (no repetitions)"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def verdict(val_loss: float, gap: float, bleu: float, coverage: float, repetition_rate: float,
            c: Criteria = Criteria()) -> str:
    """The highest level of the notes' success criteria that all hold."""
    ok = math.isfinite(val_loss) and math.isfinite(gap)
    minimum = ok and val_loss < c.minimum_val_loss and gap < c.minimum_gap and bleu > c.minimum_bleu
    good = minimum and val_loss < c.good_val_loss and gap < c.good_gap and bleu > c.good_bleu \
        and coverage > c.good_coverage
    excellent = good and val_loss < c.excellent_val_loss and gap < c.excellent_gap and bleu > c.excellent_bleu \
        and repetition_rate <= c.excellent_repetition_rate
    return "excellent" if excellent else "good" if good else "minimum" if minimum else "none"


def is_repetitive(tokens: list[str]) -> bool:
    """A token three times in a row, or any bigram that occurs twice."""
    if any(tokens[i] == tokens[i + 1] == tokens[i + 2] for i in range(len(tokens) - 2)):
        return True
    bigrams = Counter(zip(tokens, tokens[1:], strict=False))
    return any(n > 1 for n in bigrams.values())


def repetition_rate(hypotheses: list[str]) -> float:
    return sum(is_repetitive(tokenize(h)) for h in hypotheses) / max(len(hypotheses), 1)


def vocab_coverage(hypotheses: list[str], vocab: Vocab) -> float:
    """Distinct hypothesis words found in the training vocabulary, over the vocabulary's size."""
    words = set(vocab.words)
    used = {t for h in hypotheses for t in tokenize(h)} & words
    return len(used) / max(len(words), 1)


def corpus_scores(hypotheses: list[str], references: list[str]) -> tuple[float, float]:
    """BLEU-4 and chrF, 0-100. The vocabulary is lower-cased, so both are case-insensitive."""
    refs = [[r.lower() for r in references]]
    hyps = [h.lower() for h in hypotheses]
    return sacrebleu.corpus_bleu(hyps, refs).score, sacrebleu.corpus_chrf(hyps, refs).score


@dataclass
class Evaluation:
    split: str
    clips: int
    bleu: float
    chrf: float
    val_loss: float
    train_loss: float | None
    gap: float | None
    vocab_coverage: float
    repetition_rate: float
    verdict: str
    decoding: str
    hypotheses: list[str]
    references: list[str]
    names: list[str]

    def metrics(self) -> dict:
        d = asdict(self)
        for k in ("hypotheses", "references", "names"):
            d.pop(k)
        return d


def load_model(path: Path, device: str = "cpu") -> tuple[SignTranslator, Vocab, dict]:
    state = checkpoint.load(path, map_location="cpu")
    dev = resolve_device(device)
    model = SignTranslator(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), Vocab.from_list(state["vocab"]), state


def decode_limit(root: Path, vocab: Vocab, cfg: TrainConfig) -> int:
    """Ids per hypothesis (<bos>, <eos> included) worth decoding: the longest training target plus a margin.

    A model trained on targets of at most n ids has no reason to emit more, so stopping there instead of at
    max_tokens bounds the steps of clips that never emit <eos>. Read from the train CSV, which never packs.
    """
    path = csv_path(root, "train")
    if not path.is_file():
        return cfg.max_tokens
    longest = max((len(vocab.encode(r.sentence, cfg.max_tokens)) for r in read_csv(path)), default=cfg.max_tokens)
    return min(longest + max(MARGIN_TOKENS, math.ceil(MARGIN_SHARE * longest)), cfg.max_tokens)


@torch.no_grad()
def translate(model: SignTranslator, split: PackedSplit, vocab: Vocab, cfg: TrainConfig, *,
              beam_size: int = 1, batch_size: int = 64, max_len: int | None = None) -> list[str]:
    """Hypotheses in the split's order (the CSV's row order, skipped rows left out).

    max_len caps the ids per hypothesis, <bos> and <eos> included (default and upper bound: max_tokens).
    """
    dev = next(model.parameters()).device
    batcher = Batcher(split, vocab, TrainConfig.from_dict({**cfg.to_dict(), "batch_size": batch_size}))
    out: list[str] = [""] * len(split)
    for idx in batcher.plan(np.arange(len(split)), shuffle=False, rng=None):
        b = batcher.make(idx).to(dev)
        if beam_size <= 1:
            ids = decoding.greedy(model, b.src, b.src_pad, max_len)
        else:
            ids = decoding.beam(model, b.src, b.src_pad, beam_size, max_len)
        for i, seq in zip(idx, ids, strict=True):
            out[i] = vocab.decode(seq)
    return out


def evaluate_checkpoint(path: Path, root: Path, split: str = "val", *, device: str = "cpu", beam_size: int = 1,
                        criteria: Criteria = Criteria(), limit: int | None = None,
                        val_loss: float | None = None) -> Evaluation:
    """Decode a split with a checkpoint and compute every metric (see docs/architecture.md).

    val_loss: the split's loss when the caller already has it. The training loop's validation loss at the
    best epoch is exactly what evaluate_loss would recompute here for the "val" split, so a caller that just
    trained can pass it and skip one pass over the split.
    """
    model, vocab, state = load_model(path, device)
    cfg = TrainConfig.from_dict(state["train_config"])
    data = load_split(root, split)
    if limit is not None and limit < len(data):
        data = data.subset(np.arange(limit))
    dev = next(model.parameters()).device
    hyps = translate(model, data, vocab, cfg, beam_size=beam_size, max_len=decode_limit(root, vocab, cfg))
    bleu, chrf = corpus_scores(hyps, list(data.sentences))
    loss = val_loss if val_loss is not None else evaluate_loss(model, Batcher(data, vocab, cfg), dev, amp_dtype(dev))
    # The gap is a property of training: validation loss minus train loss at the best epoch.
    best = best_epoch_of(state["history"], state["best_epoch"])
    train_loss, gap = (best.train_loss, best.gap) if best else (None, None)
    cov, rep = vocab_coverage(hyps, vocab), repetition_rate(hyps)
    v = verdict(loss, gap if gap is not None else math.nan, bleu, cov, rep, criteria)
    return Evaluation(split=split, clips=len(data), bleu=bleu, chrf=chrf, val_loss=loss, train_loss=train_loss,
                      gap=gap, vocab_coverage=cov, repetition_rate=rep, verdict=v,
                      decoding="greedy" if beam_size <= 1 else f"beam{beam_size}",
                      hypotheses=hyps, references=list(data.sentences), names=list(data.names))
