"""Test-time scaling over n samples: self-consistency (majority vote over extracted answers) and best-of-n.

Self-consistency (Wang et al. 2022): sample several chains of thought, extract each final answer, return the most
frequent one; DeepSeek-R1 reports it as cons@64. Best-of-n keeps the sample a user-supplied scorer likes best.
Sample with `SamplingParams(n=..., temperature > 0)`: the n samples share one prefill of the prompt.
Answers are read by `nanoseek.rewards.extract_answer`, the one extractor that rewards and evaluation use too.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .. import rewards
from .outputs import CompletionOutput, RequestOutput


def extract_answer(text: str) -> str | None:
    """A completion's final answer for voting: `rewards.extract_answer` on the text after the reasoning (nothing
    when a think block never closed), leniently, falling back to the last number. None when nothing is found."""
    return rewards.extract_answer(rewards.answer_region(text), last_number=True)


def _texts(samples: RequestOutput | Iterable[CompletionOutput | str]) -> list[str]:
    items = samples.outputs if isinstance(samples, RequestOutput) else samples
    return [s if isinstance(s, str) else (s.content if s.content is not None else s.text) for s in items]


def majority_vote(samples: RequestOutput | Iterable[CompletionOutput | str],
                  extract: Callable[[str], Any] = extract_answer) -> tuple[Any, int]:
    """(most frequent extracted answer, its count) over the samples; samples without an answer do not vote.
    Ties go to the answer seen first. (None, 0) when no sample has an answer."""
    answers = [a for a in (extract(t) for t in _texts(samples)) if a is not None]
    if not answers:
        return None, 0
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best), best


def best_of_n(samples: RequestOutput | Iterable[CompletionOutput | str],
              score: Callable[[str], float]) -> tuple[str, float]:
    """(the sample text with the highest score, its score); ties go to the first."""
    texts = _texts(samples)
    if not texts:
        raise ValueError("best_of_n: no samples")
    scores = [score(t) for t in texts]
    i = max(range(len(texts)), key=lambda j: scores[j])
    return texts[i], scores[i]
