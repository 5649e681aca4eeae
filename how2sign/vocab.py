"""Word-level vocabulary for English sentences.

Sentences are lower-cased and split into words and punctuation marks, so "Then you cut it." becomes
``["then", "you", "cut", "it", "."]``. The vocabulary travels inside every checkpoint, which is what
makes a checkpoint self-describing: decoding needs nothing but the file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")
_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)'\"])")
_NO_SPACE_AFTER = re.compile(r"([($]) ")


def tokenize(sentence: str) -> list[str]:
    """Lower-case words and single punctuation marks."""
    return _TOKEN.findall(sentence.lower())


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens back into a sentence, with no space before punctuation."""
    text = " ".join(tokens)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    return _NO_SPACE_AFTER.sub(r"\1", text)


class Vocab:
    """Token <-> id mapping; ids 0-3 are the special tokens."""

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: Iterable[str], min_freq: int = 1) -> Vocab:
        counts = Counter(tok for s in sentences for tok in tokenize(s))
        # Most frequent first, ties alphabetical: deterministic for a given corpus.
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def words(self) -> list[str]:
        """The real words, without the special tokens."""
        return self.itos[len(SPECIALS):]

    def encode(self, sentence: str, max_tokens: int | None = None) -> list[int]:
        """<bos> w1 ... wn <eos>, truncated to max_tokens ids in all."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokenize(sentence)]
        if max_tokens is not None:
            ids = ids[: max_tokens - 2]
        return [BOS_ID, *ids, EOS_ID]

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return detokenize(self.decode_tokens(ids))

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> Vocab:
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError("vocabulary does not start with the special tokens")
        return cls(itos[len(SPECIALS):])
