"""The statistics of a confirmation (`h2s-search confirm`), as pure functions of numbers and sentences.

* `summarize`: n, mean, sd (ddof = 1) and the 95 % t-interval of the mean over seeds. One seed has no sd
  and no interval, and says so.
* `welch`: a config against the anchor over seeds: the difference of the means, its 95 % interval and the
  two-sided p of Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`).
* `paired_bootstrap`: sacrebleu's own paired bootstrap resampling (`sacrebleu.significance.PairedTest`,
  test_type "bs", BLEU and chrF) of systems against a baseline on the same references; the resampling seed
  is sacrebleu's (`$SACREBLEU_SEED`, default 12345), so a report is reproducible.
* `expected_best`: Dodge et al. (2019, "Show Your Work"): the exact expected best of n draws with
  replacement from the empirical distribution of N values, n = 1..N, and `first_beating`.
* `judge` and `sentence`: the decision rule below, and one sentence per config.

The decision rule, at ALPHA = 0.05 per comparison (no correction for the K comparisons of a confirmation):
a config *beats* (or *is worse than*) the anchor on a metric when Welch's test over seeds has p < ALPHA and,
for the test-split metrics, sacrebleu's paired bootstrap on the median-seed runs also has p < ALPHA with the
difference of the same sign: it must survive another seed *and* resampling of the test sentences. Neither
test significant: *not distinguishable*. One significant and not the other (or the paired test missing):
*inconclusive*, and the sentence says which. Fewer than 2 complete seeds on either side: *too few seeds*.
Direction-aware: lower is better for losses, higher for BLEU and chrF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ALPHA", "BEATS", "CONFIDENCE", "FEW_SEEDS", "INCONCLUSIVE", "NOT_DISTINGUISHABLE", "PAIRED_METRICS",
           "WORSE", "PairedScore", "Summary", "Welch", "expected_best", "first_beating", "format_p", "judge",
           "paired_bootstrap", "sentence", "summarize", "welch"]

ALPHA = 0.05
CONFIDENCE = 0.95
BEATS, WORSE, NOT_DISTINGUISHABLE, INCONCLUSIVE, FEW_SEEDS = (
    "beats", "worse", "not distinguishable", "inconclusive", "too few seeds")
PAIRED_METRICS = ("bleu", "chrf")   # what the paired test scores, as sacrebleu computes them


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


# --------------------------------------------------------------------------- over seeds
@dataclass(frozen=True)
class Summary:
    """One metric over seeds. sd, low and high are None with fewer than 2 values (no spread to measure)."""

    values: tuple[float, ...]
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    def text(self, spec: str) -> str:
        """'3.0712 ± 0.0123'; one seed: '3.0712 (1 seed)'; none: '–'."""
        if self.mean is None:
            return "–"
        if self.sd is None:
            return f"{self.mean:{spec}} (1 seed)"
        return f"{self.mean:{spec}} ± {self.sd:{spec}}"

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": None if self.low is None else
                [self.low, self.high], "values": list(self.values)}


def summarize(values: Sequence[float | None]) -> Summary:
    """Mean, sd (ddof = 1) and the 95 % t-interval of the mean over the finite values."""
    x = np.asarray(_finite(values), dtype=float)
    if x.size == 0:
        return Summary((), None, None, None, None)
    mean = float(x.mean())
    if x.size < 2:
        return Summary(tuple(x.tolist()), mean, None, None, None)
    from scipy import stats

    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return Summary(tuple(x.tolist()), mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Welch:
    """mean(a) - mean(b) with its 95 % interval and Welch's two-sided p; `reason` says why p is None."""

    n_a: int
    n_b: int
    diff: float | None
    low: float | None = None
    high: float | None = None
    p: float | None = None
    df: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"n": [self.n_a, self.n_b], "diff": self.diff, "ci95": None if self.low is None else
                [self.low, self.high], "p": self.p, "df": self.df, "reason": self.reason or None}


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> Welch:
    """Welch's t-test of a against b over seeds (scipy), with the interval of the difference of the means."""
    xa, xb = np.asarray(_finite(a)), np.asarray(_finite(b))
    diff = float(xa.mean() - xb.mean()) if xa.size and xb.size else None
    if xa.size < 2 or xb.size < 2:
        return Welch(xa.size, xb.size, diff, reason=f"too few seeds ({xa.size} and {xb.size}; 2 each needed)")
    if xa.std() == 0 and xb.std() == 0:
        return Welch(xa.size, xb.size, diff, reason="no spread over seeds on either side")
    from scipy import stats

    res = stats.ttest_ind(xa, xb, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Welch(xa.size, xb.size, diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


# --------------------------------------------------------------------------- on the test sentences
@dataclass(frozen=True)
class PairedScore:
    """One system against the baseline on one metric: corpus scores, sacrebleu's p, the bootstrap mean and
    95 % half-width of the system's score."""

    metric: str          # "bleu" | "chrf"
    score: float
    baseline: float
    p: float
    mean: float
    ci: float
    n_samples: int
    seed: str            # sacrebleu's resampling seed, as its signature prints it

    @property
    def diff(self) -> float:
        return self.score - self.baseline

    def to_dict(self) -> dict:
        return {"score": self.score, "baseline": self.baseline, "diff": self.diff, "p": self.p,
                "bootstrap_mean": self.mean, "bootstrap_ci95": self.ci, "n_samples": self.n_samples,
                "seed": self.seed}


def _metrics() -> dict:
    from sacrebleu.metrics import BLEU, CHRF

    # The same defaults as sacrebleu.corpus_bleu / corpus_chrf, which score every trial.
    return {"bleu": BLEU(), "chrf": CHRF()}


def paired_bootstrap(baseline: Sequence[str], systems: dict[str, Sequence[str]], references: Sequence[str],
                     n_samples: int = 1000) -> dict[str, dict[str, PairedScore]]:
    """sacrebleu's paired bootstrap of each system against the baseline: name -> metric -> PairedScore."""
    from sacrebleu.significance import PairedTest

    if not systems:
        return {}
    metrics = _metrics()
    named = [("baseline", list(baseline)), *((name, list(h)) for name, h in systems.items())]
    test = PairedTest(named, metrics, references=[list(references)], test_type="bs", n_samples=n_samples)
    signatures, scores = test()
    # scores: {"System": names, <sacrebleu's metric name>: [baseline Result, system Results...]}, in the
    # order of `metrics`.
    columns = [k for k in scores if k != "System"]
    out: dict[str, dict[str, PairedScore]] = {name: {} for name in systems}
    for ours, column in zip(metrics, columns, strict=True):
        base, *rest = scores[column]
        seed = signatures[column].info.get("seed", "")
        for name, r in zip(systems, rest, strict=True):
            out[name][ours] = PairedScore(ours, float(r.score), float(base.score), float(r.p_value),
                                          float(r.mean), float(r.ci), n_samples, str(seed))
    return out


# --------------------------------------------------------------------------- how many trials were enough
def expected_best(values: Sequence[float], *, minimize: bool) -> list[float]:
    """E[best of n draws with replacement from `values`], n = 1..N (Dodge et al. 2019, eq. 1).

    With v sorted worst first, P(the best of n is no better than v_(i)) = (i/N)^n, so E = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n);
    ties need no care, since the weights of equal values add up to that value's probability mass.
    """
    v = np.sort(np.asarray(_finite(values), dtype=float))
    if minimize:
        v = v[::-1]  # worst (highest) first
    big_n = v.size
    upper = np.arange(1, big_n + 1) / big_n           # i / N
    lower = np.arange(0, big_n) / big_n               # (i - 1) / N
    up, low = np.ones(big_n), np.ones(big_n)
    out = []
    for _ in range(big_n):                            # the n-th powers by one product each: O(N) per n
        up *= upper
        low *= lower
        out.append(float(v @ (up - low)))
    return out


TIE = 1e-9   # relative: closer to the reference than this is a tie, not a win (the sum rounds in the last bits)


def first_beating(curve: Sequence[float], reference: float | None, *, minimize: bool) -> int | None:
    """The first n (1-based) whose expected best is better than the reference (beyond rounding); None if none is."""
    if reference is None:
        return None
    margin = TIE * max(1.0, abs(reference))
    for n, v in enumerate(curve, start=1):
        if (v < reference - margin) if minimize else (v > reference + margin):
            return n
    return None


# --------------------------------------------------------------------------- the decision rule and its words
def _significant(p: float | None) -> bool:
    return p is not None and p < ALPHA


def judge(w: Welch, paired: PairedScore | None, *, higher_is_better: bool, paired_expected: bool) -> str:
    """The decision rule of the module docstring. paired_expected: the metric is scored on the test split,
    so a paired test belongs with it (None then means it is missing)."""
    if w.p is None:
        return FEW_SEEDS if min(w.n_a, w.n_b) < 2 else INCONCLUSIVE
    seeds = _significant(w.p)
    if not paired_expected:
        agree, other = True, seeds
    elif paired is None:
        agree, other = False, False
    else:
        # sacrebleu's p counts resamples whose difference exceeds the observed one, plus one: for a difference
        # of exactly 0 (the same corpus score, e.g. identical output) it is its floor 1/(n+1), which is no
        # evidence of anything, so such a paired test is never significant.
        agree, other = (paired.diff > 0) == (w.diff > 0), paired.diff != 0 and _significant(paired.p)
    if not seeds and (not paired_expected or paired is None or not other):
        return NOT_DISTINGUISHABLE
    if seeds and other and agree:
        return BEATS if (w.diff > 0) == higher_is_better else WORSE
    return INCONCLUSIVE


def format_p(p: float | None) -> str:
    if p is None:
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _seeds(w: Welch) -> str:
    return f"{w.n_a} seeds" if w.n_a == w.n_b else f"{w.n_a} and {w.n_b} seeds"


def _over_seeds(w: Welch, spec: str) -> str:
    """'+1.20 (95 % CI +0.40 to +2.00, p = 0.01; 3 seeds)'."""
    ci = f"95 % CI {w.low:+{spec}} to {w.high:+{spec}}, " if w.low is not None else ""
    return f"{w.diff:+{spec}} ({ci}{format_p(w.p)}; {_seeds(w)})"


def _paired_words(paired: PairedScore | None, missing: str, spec: str) -> str:
    if paired is None:
        return f"no paired test ({missing})" if missing else "no paired test"
    if paired.diff == 0:
        return "the median-seed runs score the same on the test sentences (no paired difference to test)"
    return f"paired bootstrap {format_p(paired.p)} ({paired.diff:+{spec}} on the median-seed runs)"


def sentence(label: str, ref: str, metric: str, verdict: str, w: Welch, paired: PairedScore | None = None, *,
             spec: str = ".2f", paired_expected: bool = False, missing: str = "") -> str:
    """One sentence for one config and metric, such as "trial 17 beats V4 on test BLEU by +1.20 (95 % CI +0.40
    to +2.00, p = 0.01; 3 seeds; paired bootstrap p = 0.002)". `missing` says why the paired test is absent."""
    tail = ")" if paired is None else "; the median-seed runs score the same)" if paired.diff == 0 else \
        f"; paired bootstrap {format_p(paired.p)})"
    if verdict in (BEATS, WORSE):
        how = "beats" if verdict == BEATS else "is worse than"
        return f"{label} {how} {ref} on {metric} by {_over_seeds(w, spec)[:-1]}{tail}"
    if verdict == NOT_DISTINGUISHABLE:
        return f"{label} is not distinguishable from {ref} on {metric}: {_over_seeds(w, spec)[:-1]}{tail}"
    if verdict == FEW_SEEDS:
        extra = f"; {_paired_words(paired, '', spec)}" if paired is not None else ""
        return f"{label} against {ref} on {metric}: {w.reason}{extra}"
    seeds = _over_seeds(w, spec) if w.p is not None else f"{w.diff:+{spec}} ({w.reason})"
    paired_part = f", {_paired_words(paired, missing, spec)} on the test sentences" if paired_expected else ""
    return f"{label} against {ref} on {metric} is inconclusive: {seeds} over seeds{paired_part}"
