"""search.stats against the libraries it stands on (numpy, scipy, sacrebleu) and against brute force."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest
from scipy import stats as scipy_stats

from search.stats import (
    BEATS,
    FEW_SEEDS,
    INCONCLUSIVE,
    NOT_DISTINGUISHABLE,
    WORSE,
    PairedScore,
    Welch,
    expected_best,
    first_beating,
    format_p,
    judge,
    paired_bootstrap,
    sentence,
    summarize,
    welch,
)


# --------------------------------------------------------------------------- over seeds
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_summary_equals_numpy_and_the_t_interval_equals_scipys(n):
    x = np.random.default_rng(n).normal(3.0, 0.2, n)
    s = summarize(list(x))
    assert s.n == n and s.mean == pytest.approx(np.mean(x), rel=1e-14) and s.sd == pytest.approx(np.std(x, ddof=1))
    ci = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (s.low, s.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert s.low < s.mean < s.high


def test_one_seed_has_no_spread_and_says_so_and_missing_values_are_left_out():
    s = summarize([2.5, None, math.nan])
    assert (s.n, s.mean, s.sd, s.low, s.high) == (1, 2.5, None, None, None)
    assert s.text(".2f") == "2.50 (1 seed)" and s.to_dict()["ci95"] is None
    empty = summarize([])
    assert empty.mean is None and empty.text(".2f") == "–"
    assert summarize([1.0, 2.0]).text(".2f") == "1.50 ± 0.71"


def test_welch_equals_scipy_with_the_interval_of_the_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(2.0, 0.1, 3), rng.normal(2.3, 0.3, 4)
    w = welch(list(a), list(b))
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert w.p == pytest.approx(ref.pvalue, rel=1e-12) and w.df == pytest.approx(ref.df)
    assert w.diff == pytest.approx(a.mean() - b.mean())
    ci = ref.confidence_interval(0.95)
    assert (w.low, w.high) == pytest.approx((ci.low, ci.high)) and w.low < w.diff < w.high
    assert (w.n_a, w.n_b, w.reason) == (3, 4, "")


def test_welch_without_enough_seeds_or_spread_has_no_p_and_says_why():
    w = welch([1.0], [2.0, 2.1])
    assert w.p is None and w.diff == pytest.approx(-1.05) and w.reason == "too few seeds (1 and 2; 2 each needed)"
    assert welch([], [1.0, 2.0]).diff is None
    flat = welch([1.0, 1.0], [2.0, 2.0])
    assert flat.p is None and flat.reason == "no spread over seeds on either side"


# --------------------------------------------------------------------------- the paired bootstrap
def corpus(seed: int, n: int = 40) -> tuple[list[str], list[str], list[str]]:
    words = ["sign", "hand", "the", "a", "paper", "fold", "cut", "left", "right", "water"]
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(n)]

    def noisy(error: float) -> list[str]:
        return [" ".join(w if rng.random() > error else rng.choice(words) for w in r.split()) for r in refs]

    return refs, noisy(0.5), noisy(0.2)


def test_paired_bootstrap_is_sacrebleus_paired_test_per_system():
    refs, base, better = corpus(1)
    _, _, other = corpus(2)
    got = paired_bootstrap(base, {"better": better, "other": other}, refs, n_samples=500)
    for name, hyps in (("better", better), ("other", other)):
        # each system alone against the baseline: the same resamples, the same p
        _, scores = PairedTest([("base", base), (name, hyps)], {"BLEU": BLEU(), "chrF": CHRF()}, [refs],
                               test_type="bs", n_samples=500)()
        assert got[name]["bleu"].p == scores["BLEU"][1].p_value
        assert got[name]["chrf"].p == scores["chrF2"][1].p_value
        assert got[name]["bleu"].score == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
        assert got[name]["bleu"].baseline == pytest.approx(BLEU().corpus_score(base, [refs]).score)
        assert got[name]["bleu"].n_samples == 500 and got[name]["bleu"].seed == "12345"
    assert got["better"]["bleu"].diff > 0 and got["better"]["bleu"].p < 0.05
    assert paired_bootstrap(base, {}, refs) == {}


# --------------------------------------------------------------------------- the expected best
def brute_force(values: list[float], n: int, pick) -> float:
    """The mean of the best over every n-tuple drawn with replacement: each tuple is equally likely."""
    tuples = list(itertools.product(values, repeat=n))
    return sum(pick(t) for t in tuples) / len(tuples)


@pytest.mark.parametrize("values", [[2.0, 1.5, 2.0, 3.0, 1.5], [4.0], [1.0, 1.0, 1.0], [3.2, 2.9, 2.4, 3.5, 2.6, 3.1]])
def test_the_expected_best_equals_brute_force_enumeration(values):
    for minimize, pick in ((True, min), (False, max)):
        curve = expected_best(values, minimize=minimize)
        assert len(curve) == len(values)
        assert curve == pytest.approx([brute_force(values, n, pick) for n in range(1, len(values) + 1)], rel=1e-12)
        assert curve[0] == pytest.approx(np.mean(values))  # one draw: the mean
        steps = np.diff(curve)
        assert all(steps <= 1e-12) if minimize else all(steps >= -1e-12)  # more trials never hurt


def test_the_expected_best_of_a_larger_set_equals_the_exact_rational_sum():
    """Beyond brute force's reach: the same formula in exact fractions, so no rounding builds up in the float
    version's running powers."""
    rng = random.Random(3)
    pool = [round(rng.uniform(1.5, 4.0), 3) for _ in range(25)]
    values = [rng.choice(pool) for _ in range(40)]   # 40 draws of 25 values: ties
    assert len(set(values)) < len(values)
    big_n = len(values)
    v = [Fraction(x) for x in sorted(values, reverse=True)]
    exact = [sum(x * (Fraction(i, big_n) ** n - Fraction(i - 1, big_n) ** n) for i, x in enumerate(v, 1))
             for n in range(1, big_n + 1)]
    assert expected_best(values, minimize=True) == pytest.approx([float(e) for e in exact], rel=1e-13)


def test_the_first_n_that_beats_the_reference_is_strict_and_direction_aware():
    curve = expected_best([2.0, 1.5, 2.0, 3.0, 1.5], minimize=True)   # 2.0, 1.74, ...
    assert first_beating(curve, 2.0, minimize=True) == 2
    assert first_beating(curve, 2.1, minimize=True) == 1
    assert first_beating(curve, 1.0, minimize=True) is None
    assert first_beating(curve, None, minimize=True) is None
    up = expected_best([1.0, 2.0, 3.0], minimize=False)                 # 2.0, 2.44, 2.67
    assert first_beating(up, 2.0, minimize=False) == 2 and first_beating(up, 3.0, minimize=False) is None
    assert expected_best([], minimize=True) == []


# --------------------------------------------------------------------------- the rule and the words
def w(diff: float, p: float | None, n: int = 3) -> Welch:
    return Welch(n, n, diff, diff - 0.8, diff + 0.8, p, 3.5,
                 "" if p is not None else f"too few seeds ({n} and {n}; 2 each needed)")


def ps(diff: float, p: float) -> PairedScore:
    return PairedScore("bleu", 10 + diff, 10.0, p, 10 + diff, 1.0, 1000, "12345")


@pytest.mark.parametrize(("welch_", "paired", "higher", "on_test", "verdict"), [
    (w(1.2, 0.01), ps(1.0, 0.002), True, True, BEATS),
    (w(-1.2, 0.01), ps(-1.0, 0.002), True, True, WORSE),
    (w(-0.1, 0.01), None, False, False, BEATS),            # a loss: lower is better, no paired test expected
    (w(0.1, 0.01), None, False, False, WORSE),
    (w(0.3, 0.41), ps(0.2, 0.35), True, True, NOT_DISTINGUISHABLE),
    (w(0.3, 0.41), None, True, True, NOT_DISTINGUISHABLE),  # the seeds already cannot tell them apart
    (w(1.2, 0.01), ps(0.4, 0.30), True, True, INCONCLUSIVE),  # survives another seed, not the test resampling
    (w(0.3, 0.41), ps(1.0, 0.001), True, True, INCONCLUSIVE),
    (w(1.2, 0.01), ps(-1.0, 0.001), True, True, INCONCLUSIVE),  # both significant, opposite signs
    (w(1.2, 0.01), None, True, True, INCONCLUSIVE),           # the paired test is missing
    (w(1.2, None, n=1), ps(1.0, 0.001), True, True, FEW_SEEDS),
    (w(0.0, 1.0), ps(0.0, 0.000999), True, True, NOT_DISTINGUISHABLE),  # the same score: sacrebleu's floor p
])
def test_the_decision_rule(welch_, paired, higher, on_test, verdict):
    assert judge(welch_, paired, higher_is_better=higher, paired_expected=on_test) == verdict


def test_the_sentences():
    assert sentence("trial 17", "V4", "test BLEU", BEATS, w(1.2, 0.01), ps(1.0, 0.002), paired_expected=True) == (
        "trial 17 beats V4 on test BLEU by +1.20 (95 % CI +0.40 to +2.00, p = 0.01; 3 seeds; "
        "paired bootstrap p = 0.002)")
    assert sentence("trial 17", "V4", "test BLEU", NOT_DISTINGUISHABLE, w(0.3, 0.41), ps(0.2, 0.35),
                    paired_expected=True) == (
        "trial 17 is not distinguishable from V4 on test BLEU: +0.30 (95 % CI -0.50 to +1.10, p = 0.41; 3 seeds; "
        "paired bootstrap p = 0.35)")
    assert sentence("trial 4", "V4", "val loss", WORSE, w(0.1234, 0.0004), spec=".4f") == (
        "trial 4 is worse than V4 on val loss by +0.1234 (95 % CI -0.6766 to +0.9234, p < 0.001; 3 seeds)")
    assert sentence("trial 17", "V4", "test BLEU", INCONCLUSIVE, w(1.2, 0.01), ps(0.4, 0.3), paired_expected=True) == (
        "trial 17 against V4 on test BLEU is inconclusive: +1.20 (95 % CI +0.40 to +2.00, p = 0.01; 3 seeds) over "
        "seeds, paired bootstrap p = 0.3 (+0.40 on the median-seed runs) on the test sentences")
    assert sentence("trial 17", "V4", "test BLEU", INCONCLUSIVE, w(1.2, 0.01), None, paired_expected=True,
                    missing="no test_translations.csv in runs/7").endswith(
        "over seeds, no paired test (no test_translations.csv in runs/7) on the test sentences")
    assert sentence("trial 17", "V4", "test BLEU", FEW_SEEDS, w(1.2, None, n=1), ps(1.0, 0.03)) == (
        "trial 17 against V4 on test BLEU: too few seeds (1 and 1; 2 each needed); paired bootstrap p = 0.03 "
        "(+1.00 on the median-seed runs)")
    assert (format_p(0.0004), format_p(0.0123), format_p(1.0), format_p(None)) == (
        "p < 0.001", "p = 0.012", "p = 1", "p undefined")


def test_sacrebleus_p_for_identical_output_is_its_floor_and_counts_for_nothing():
    hyps, refs = ["a cat sat on the mat", "the dog ran"], ["a cat sat on a mat", "the dog ran home"]
    paired = paired_bootstrap(hyps, {"same": hyps}, refs, n_samples=200)["same"]["bleu"]
    assert paired.diff == 0 and paired.p == pytest.approx(1 / 201)  # sacrebleu: (0 + 1) / (n + 1)
    assert judge(w(0.0, 1.0), paired, higher_is_better=True, paired_expected=True) == NOT_DISTINGUISHABLE
    assert "score the same" in sentence("trial 1", "V4", "test BLEU", NOT_DISTINGUISHABLE, w(0.0, 1.0), paired,
                                        paired_expected=True)
