import math

from how2sign.evaluate import Criteria, corpus_scores, is_repetitive, repetition_rate, verdict, vocab_coverage
from how2sign.vocab import Vocab


def test_bleu_is_on_the_0_to_100_scale():
    refs = ["then you cut the onion.", "stir the sauce slowly."]
    bleu, chrf = corpus_scores(refs, refs)
    assert math.isclose(bleu, 100.0) and math.isclose(chrf, 100.0)
    bleu, _ = corpus_scores(["a b c d", "e f g h"], refs)
    assert bleu < 1.0


def test_repetitions_and_coverage():
    assert is_repetitive(["the", "the", "the", "onion"])
    assert is_repetitive(["cut", "the", "cut", "the"])
    assert not is_repetitive(["cut", "the", "onion"])
    assert repetition_rate(["cut the onion", "the the the"]) == 0.5
    v = Vocab.build(["cut the onion", "stir the sauce"])
    assert vocab_coverage(["cut the", "zebra"], v) == 2 / 5


def test_verdict_follows_the_notes():
    c = Criteria()
    assert verdict(4.6, 0.1, 10, 0.5, 0.0, c) == "none"
    assert verdict(4.4, 0.4, 1.6, 0.0, 0.5, c) == "minimum"
    assert verdict(3.9, 0.25, 3.5, 0.03, 0.5, c) == "good"
    assert verdict(3.7, 0.1, 9.0, 0.03, 0.0, c) == "excellent"
    assert verdict(3.7, 0.1, 9.0, 0.03, 0.1, c) == "good"  # repetitions keep it from excellent
    assert verdict(3.7, math.nan, 9.0, 0.03, 0.0, c) == "none"
    assert verdict(3.0, 0.1, 2.0, 0.5, 0.0, Criteria(good_bleu=1.0, excellent_bleu=1.5)) == "excellent"
