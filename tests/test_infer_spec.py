"""MTP speculative decoding: greedy output identical to plain greedy, 100% acceptance with an oracle MTP module,
rejection sampling preserves the target distribution, automatic switch-off without MTP."""
from __future__ import annotations

import warnings

import pytest
import torch

from nanoseek import ModelConfig, Transformer
from nanoseek.infer import LLM, SamplingParams
from nanoseek.infer.spec import verify_greedy, verify_sampled


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(2)
    return [torch.randint(2, 1024, (n,), generator=g).tolist() for n in (3, 19, 30)]


def plain(model, prompts, sp, **kw):
    return [o.outputs[0].token_ids for o in LLM(model, **kw).generate(prompts, sp)]


@pytest.mark.parametrize("k", [1, 2])
def test_speculative_greedy_equals_plain_greedy(model, prompts, k):
    sp = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)
    want = plain(model, prompts, sp)
    llm = LLM(model, speculative=k, max_num_batched_tokens=12, block_size=4)  # chunked prefills too
    outs = llm.generate(prompts, sp)
    assert [o.outputs[0].token_ids for o in outs] == want
    m = outs[0].metrics
    assert m.spec_num_draft_tokens > 0 and m.acceptance_rate is not None
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks


def oracle_model(k_layers: int = 1) -> Transformer:
    """A model whose MTP module predicts exactly what the main model will: attention output switched off (so the
    next token depends on the current token only), embedding rows of RMS 1 (so enorm is the identity), eh_proj
    passing the embedding through, and the MTP block and norm copied from the main model's single layer."""
    cfg = ModelConfig.preset("tiny").replace(n_routed_experts=0, num_hidden_layers=k_layers,
                                             num_nextn_predict_layers=1)
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        e = m.embed.weight
        e /= e.pow(2).mean(-1, keepdim=True).sqrt()
        m.layers[0].attn.wo.weight.zero_()
        mtp = m.mtp[0]
        mtp.block.load_state_dict(m.layers[0].state_dict())
        mtp.norm.load_state_dict(m.norm.state_dict())
        d = cfg.hidden_size
        mtp.eh_proj.weight.zero_()
        mtp.eh_proj.weight[:, :d] = torch.eye(d)
    return m


@pytest.mark.parametrize("k", [1, 3])
def test_oracle_mtp_is_always_accepted(prompts, k):
    m = oracle_model()
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = plain(m, prompts, sp)
    llm = LLM(m, speculative=k)
    outs = llm.generate(prompts, sp)
    assert [o.outputs[0].token_ids for o in outs] == want
    for o in outs:
        assert o.metrics.acceptance_rate == 1.0
        # the first token comes from the prefill; then every step gives k + 1 tokens (the last step fewer)
        assert o.metrics.num_steps == 1 + -(-(sp.max_tokens - 1) // (k + 1))


def test_speculative_sampling_is_reproducible_and_terminates(model, prompts):
    sp = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=10, seed=11, n=2)
    a = LLM(model, speculative=2).generate(prompts, sp)
    b = LLM(model, speculative=2).generate(prompts, sp)
    assert [[c.token_ids for c in o.outputs] for o in a] == [[c.token_ids for c in o.outputs] for o in b]
    assert all(len(c.token_ids) <= 10 for o in a for c in o.outputs)


def test_without_mtp_speculation_switches_off(prompts):
    torch.manual_seed(0)
    m = Transformer(ModelConfig.preset("tiny").replace(num_nextn_predict_layers=0)).eval()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        llm = LLM(m, speculative=1)
    assert llm.engine.num_spec == 0 and any("no MTP" in str(x.message) or "has none" in str(x.message) for x in w)
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, sp)] == plain(m, prompts, sp)


def test_verify_greedy():
    assert verify_greedy([5, 6, 7], [5, 6, 9, 1]) == (2, 9)
    assert verify_greedy([5, 6], [5, 6, 4]) == (2, 4)
    assert verify_greedy([5], [3, 4]) == (0, 3)


def test_rejection_sampling_preserves_the_target_distribution():
    """Two output tokens per trial over a 4-token vocabulary: the empirical joint law must match p0(t1)·p1[t1](t2),
    whatever the draft distribution q."""
    g = torch.Generator().manual_seed(0)
    V, trials = 4, 12000
    p0 = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])  # a poor draft: most mass where the target has little
    p1 = torch.softmax(torch.randn(V, V, generator=g), dim=-1)  # target's next distribution after each token
    counts = torch.zeros(V, V)
    drafts = torch.multinomial(q, trials, replacement=True, generator=g).tolist()
    fresh = torch.multinomial(p1, trials, replacement=True, generator=g).T.tolist()  # (trials, V)
    accepted = 0
    for i, d in enumerate(drafts):
        bonus = fresh[i][d]
        a, t = verify_sampled([d], q.log()[None], torch.stack([p0, p1[d]]).log(), bonus, g)
        t1, t2 = (d, t) if a == 1 else (t, fresh[i][t])
        accepted += a
        counts[t1, t2] += 1
    want = p0[:, None] * p1
    assert (counts / trials - want).abs().max() < 0.015
    assert abs(accepted / trials - torch.minimum(p0, q).sum().item()) < 0.02  # acceptance = Σ min(p, q)
