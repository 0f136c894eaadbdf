"""Scheduling: decodes keep moving while a long prompt is prefilled in chunks, max_num_seqs, prefix caching."""
from __future__ import annotations

import pytest
import torch

from nanoseek import ModelConfig, Transformer
from nanoseek.infer import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()


def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(2, 1024, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_decoding_continues_during_a_chunked_prefill(model):
    llm = LLM(model, max_num_batched_tokens=8)
    a = llm.add_request(rand_ids(4, 0), SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    llm.step()  # a's prompt, first token
    b = llm.add_request(rand_ids(40, 1), GREEDY)
    steps_until_b, a_tokens = 0, []
    while True:
        outs = {o.request_id: o for o in llm.step()}
        steps_until_b += 1
        a_tokens.append(len(outs[a].outputs[0].token_ids))
        if b in outs:
            break
    # b's 40-token prompt took several 7-token chunks (the budget minus a's decode token) and a decoded each step
    assert steps_until_b == -(-40 // 7)
    assert a_tokens == list(range(2, 2 + steps_until_b))


def test_max_num_seqs_bounds_the_running_batch(model):
    llm = LLM(model, max_num_seqs=2)
    for i in range(4):
        llm.add_request(rand_ids(5, i), GREEDY)
    peak = 0
    while llm.has_unfinished_requests():
        llm.step()
        peak = max(peak, len(llm.engine.scheduler.running))
    assert peak == 2


def test_prefix_caching_reuses_full_blocks(model):
    prompt = rand_ids(37, 3)
    want = LLM(model, enable_prefix_caching=False).generate([prompt], GREEDY)[0].outputs[0].token_ids
    llm = LLM(model, block_size=8)
    first = llm.generate([prompt], GREEDY)[0]
    assert first.metrics.num_cached_tokens == 0
    before = llm.engine.stats["tokens_scheduled"]
    again = llm.generate([prompt], GREEDY)[0]
    assert again.metrics.num_cached_tokens == 32  # the 4 full blocks (the last token is always computed)
    assert llm.engine.stats["tokens_scheduled"] - before == 37 - 32 + GREEDY.max_tokens - 1
    other = llm.generate([prompt[:20] + rand_ids(10, 4)], GREEDY)[0]
    assert other.metrics.num_cached_tokens == 16  # shares two full blocks
    assert first.outputs[0].token_ids == again.outputs[0].token_ids == want
    # a prompt extending a finished sequence reuses the blocks holding its generated tokens too
    longer = prompt + first.outputs[0].token_ids + rand_ids(3, 5)
    assert llm.generate([longer], GREEDY)[0].metrics.num_cached_tokens == 40


def test_prefix_caching_with_speculation_and_eviction(model):
    prompts = [rand_ids(30, 6), rand_ids(30, 7)]
    want = [o.outputs[0].token_ids for o in LLM(model, enable_prefix_caching=False).generate(prompts, GREEDY)]
    bpt = LLM(model, speculative=1).engine.cache.bytes_per_token
    llm = LLM(model, speculative=1, block_size=4, cache_budget=48 * bpt)  # 12 blocks: prefixes get evicted
    for _ in range(2):
        for p, w in zip(prompts, want):
            assert llm.generate([p], GREEDY)[0].outputs[0].token_ids == w
    out = llm.generate([prompts[1]], GREEDY)[0]
    assert out.outputs[0].token_ids == want[1] and out.metrics.num_cached_tokens == 28
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks


def test_prefix_cache_is_dropped_when_weights_change_in_place():
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset("tiny")).eval()
    llm = LLM(m, block_size=4)  # bound to the live model, as GRPO's rollouts are
    prompt = rand_ids(21, 8)
    llm.generate([prompt], GREEDY)
    with torch.no_grad():  # an optimizer step, in effect
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = llm.generate([prompt], GREEDY)[0]
    assert out.metrics.num_cached_tokens == 0  # stale latents were not reused
    fresh = LLM(m, enable_prefix_caching=False).generate([prompt], GREEDY)[0]
    assert out.outputs[0].token_ids == fresh.outputs[0].token_ids
    assert llm.generate([prompt], GREEDY)[0].metrics.num_cached_tokens == 20  # unchanged weights: reused again
