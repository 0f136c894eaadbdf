"""The numbers an evaluation reports: pass@k, majority-vote@k, perplexity and bits per byte.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with n samples of which c are
correct, the unbiased estimate of the probability that at least one of k samples drawn without replacement is
correct is

    pass@k = 1 − C(n−c, k) / C(n, k) = 1 − ∏_{i=n−c+1}^{n} (1 − k/i)

The product form never builds the huge binomials (C(200, 100) ≈ 9·10^58) and stays in [0, 1] in floating point.

maj@k (self-consistency, Wang et al. 2022; DeepSeek-R1's cons@64): the majority answer among k samples, scored.
With n ≥ k samples we vote over the first k: the samples are i.i.d., so that is one unbiased draw.

The 95% confidence interval of an accuracy over problems: with one sample per problem (greedy), the Wilson score
interval of c successes in n Bernoulli trials (z = 1.96),
    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n),
which stays inside [0, 1] and keeps its coverage near 0 and 1 where the plain p̂ ± z·sqrt(p̂(1−p̂)/n) does not; with
several samples per problem, the normal interval of the mean of the per-problem fractions (their sample standard deviation).
It measures the uncertainty from the finite set of problems, for a fixed model.

Bits per byte normalises the negative log-likelihood by the text's UTF-8 bytes instead of its tokens, so models
with different tokenizers compare: bpb = NLL_nats / (ln 2 · bytes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples (requires 1 <= k <= n)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"pass_at_k: n, c, k must be integers (got {n!r}, {c!r}, {k!r})")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n (got c={c}, n={n})")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n (got k={k}, n={n})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (n samples, c correct)."""
    if not counts:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1 (got {successes}, {n})")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Normal interval of a mean of values in [0, 1] (per-problem accuracies), clipped to [0, 1]."""
    n = len(values)
    if n < 2:
        raise ValueError("mean_interval: needs at least two values")
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return max(0.0, m - z * sd / math.sqrt(n)), min(1.0, m + z * sd / math.sqrt(n))


def accuracy_ci95(counts: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """95% interval of the mean accuracy of problems given as (samples, correct): Wilson for one sample each."""
    if all(n == 1 for n, _ in counts):
        return wilson_interval(sum(c for _, c in counts), len(counts))
    return mean_interval([c / n for n, c in counts])


def perplexity(nll_nats: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per token); inf when that overflows."""
    if tokens <= 0:
        raise ValueError("perplexity: no tokens were scored")
    mean = nll_nats / tokens
    return math.exp(mean) if mean < 700 else math.inf


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Negative log-likelihood in bits per UTF-8 byte of the text."""
    if n_bytes <= 0:
        raise ValueError("bits_per_byte: the text has no bytes")
    return nll_nats / (math.log(2) * n_bytes)
