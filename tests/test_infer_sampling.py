"""Sampling parameters and kernels: validation, top-k / top-p / min-p filtering, the exponential race samples the
right distribution, per-request generators, penalties, majority vote."""
from __future__ import annotations

import pytest
import torch

from nanoseek.infer import SamplingParams, best_of_n, extract_answer, majority_vote
from nanoseek.infer.sampling import apply_penalties, filtered_logprobs, sample_from_logprobs


pytestmark = pytest.mark.usefixtures("one_thread")


def filt(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    n = logits.shape[0]
    return filtered_logprobs(logits, torch.full((n,), temperature), torch.full((n,), top_k),
                             torch.full((n,), top_p), torch.full((n,), min_p))


def test_validation_errors_name_the_field():
    for kw, field in [({"n": 0}, "n"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                      ({"top_k": -2}, "top_k"), ({"max_tokens": 0}, "max_tokens"), ({"stop": [""]}, "stop"),
                      ({"logprobs": -1}, "logprobs"), ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
                      ({"presence_penalty": 3}, "presence_penalty"), ({"output_kind": "x"}, "output_kind")]:
        with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
            SamplingParams(**kw)
    # out of range for the int64 / float tensors of a batched step: refused at construction (issue 17 item 1)
    for kw, field in [({"top_k": 2**63}, "top_k"), ({"max_tokens": 2**70}, "max_tokens"),
                      ({"min_tokens": 2**40}, "min_tokens"), ({"stop_token_ids": [2**63]}, "stop_token_ids"),
                      ({"seed": 2**64}, "seed"), ({"logprobs": 2**63}, "logprobs"), ({"n": True}, "n"),
                      ({"max_thinking_tokens": 2**33}, "max_thinking_tokens"), ({"top_p": float("nan")}, "top_p"),
                      ({"temperature": "1"}, "temperature"), ({"min_p": float("inf")}, "min_p")]:
        with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
            SamplingParams(**kw)
    sp = SamplingParams(stop="###", top_k=-1)
    assert sp.stop_list == ["###"] and sp.top_k == 0 and sp.clone(seed=3).seed == 3


def test_filters():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    p = filt(logits, top_k=2).exp()[0]
    torch.testing.assert_close(p, torch.tensor([4 / 7, 3 / 7, 0, 0]))
    p = filt(logits, top_p=0.6).exp()[0]  # 0.4 < 0.6, 0.4 + 0.3 >= 0.6: keep two
    torch.testing.assert_close(p, torch.tensor([4 / 7, 3 / 7, 0, 0]))
    p = filt(logits, top_p=0.4).exp()[0]
    torch.testing.assert_close(p, torch.tensor([1.0, 0, 0, 0]))
    p = filt(logits, min_p=0.5).exp()[0]  # keep p >= 0.2
    torch.testing.assert_close(p, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0]))
    p = filt(logits, temperature=0.5).exp()[0]
    torch.testing.assert_close(p, torch.tensor([16, 9, 4, 1]) / 30.0)


def test_exponential_race_samples_the_distribution():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    n = 40000
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logprobs(logp.expand(n, 4), [None] * n, g)
    freq = torch.bincount(draws, minlength=4) / n
    assert (freq - logp.exp()).abs().max() < 0.01


def test_own_generators_make_rows_independent_of_the_batch():
    logp = torch.randn(3, 50).log_softmax(-1)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    alone = sample_from_logprobs(logp[1:2].repeat(1, 1), [ga], None)
    mixed = sample_from_logprobs(logp[[0, 1, 2]], [None, gb, None], torch.Generator().manual_seed(1))
    assert mixed[1] == alone[0]


def test_penalties():
    logits = torch.zeros(1, 4)
    counts = torch.tensor([0, 1, 3, 0])
    out = apply_penalties(logits, counts, presence=0.5, frequency=0.25)
    torch.testing.assert_close(out, torch.tensor([[0.0, -0.75, -1.25, 0.0]]))


def test_majority_vote_and_best_of_n():
    texts = ["so \\boxed{12}", "<think>maybe 7</think> The answer is 12.", "I get 7", "\\boxed{\\frac{1}{2}}"]
    assert [extract_answer(t) for t in texts] == ["12", "12", "7", "\\frac{1}{2}"]
    assert majority_vote(texts) == ("12", 2)
    assert majority_vote(["no answer here"]) == (None, 0)
    assert best_of_n(texts, score=len) == (texts[1], len(texts[1]))
