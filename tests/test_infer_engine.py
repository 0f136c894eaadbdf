"""Inference engine on token ids: greedy equals full recomputation, batching/chunking/preemption/n>1 do not change
results, the paged cache's accounting, prefill paths agree, abort frees blocks."""
from __future__ import annotations

import threading

import pytest
import torch

from nanoseek import ModelConfig, Transformer
from nanoseek.infer import LLM, PagedLatentCache, SamplingParams
from nanoseek.infer.paged_cache import BlockPool

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, 1024, (n,), generator=g).tolist() for n in (5, 21, 40)]


def reference_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Plain loop: the whole sequence through model(ids) at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def expected(model, prompts) -> list[list[int]]:
    return [reference_greedy(model, p, GREEDY.max_tokens) for p in prompts]


def tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def test_cache_bytes_per_token_is_the_latent_formula():
    cfg = ModelConfig.preset("deepseek-v3")
    cache = PagedLatentCache(ModelConfig.preset("tiny"), num_blocks=3, block_size=16, dtype=torch.bfloat16)
    tiny = ModelConfig.preset("tiny")
    assert cache.bytes_per_token == tiny.num_hidden_layers * (tiny.kv_lora_rank + tiny.qk_rope_head_dim) * 2
    assert cache.kv.nbytes == 3 * 16 * cache.bytes_per_token
    # DeepSeek-V3 shapes: 61 layers x 576 values x 2 bytes = 70,272 B/token (serving.md 1.2), 71x below per-head K/V
    from nanoseek.infer.paged_cache import bytes_per_token
    assert bytes_per_token(cfg, cfg.num_hidden_layers, torch.bfloat16) == 70_272
    naive = cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * 2
    assert naive / 70_272 > 71


def test_engine_cache_counts_mtp_layer_only_when_speculating(model):
    cfg = model.config
    per_layer = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
    plain = LLM(model, cache_budget="1MiB").engine.cache
    spec = LLM(model, cache_budget="1MiB", speculative=1).engine.cache
    assert plain.bytes_per_token == cfg.num_hidden_layers * per_layer
    assert spec.bytes_per_token == (cfg.num_hidden_layers + 1) * per_layer
    assert plain.kv.nbytes == plain.num_blocks * plain.block_size * plain.bytes_per_token <= 1 << 20
    assert plain.num_blocks == (1 << 20) // (16 * plain.bytes_per_token)
    half = LLM(model, cache_budget="1MiB", kv_cache_dtype="bf16").engine.cache
    assert half.bytes_per_token * 2 == plain.bytes_per_token and half.kv.dtype == torch.bfloat16


def test_block_pool_refcounts():
    pool = BlockPool(4)
    a = pool.allocate(3)
    assert pool.num_free == 1 and len(set(a)) == 3
    pool.share(a[:2])
    pool.release(a)
    assert pool.num_free == 2  # the two shared blocks are still held
    pool.release(a[:2])
    assert pool.num_free == 4
    with pytest.raises(RuntimeError):
        pool.allocate(5)


def test_greedy_equals_full_recomputation_batched_and_alone(model, prompts, expected):
    llm = LLM(model)
    assert tokens(llm.generate(prompts, GREEDY)) == expected
    for p, e in zip(prompts, expected):
        out = llm.generate([p], GREEDY)[0]
        assert out.outputs[0].token_ids == e
        assert out.outputs[0].finish_reason == "length" and out.prompt_token_ids == p
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks  # every block back


def test_chunked_prefill_and_small_blocks_match(model, prompts, expected):
    llm = LLM(model, max_num_batched_tokens=7, block_size=4)
    assert tokens(llm.generate(prompts, GREEDY)) == expected
    assert llm.engine.stats["steps"] > len(prompts) + GREEDY.max_tokens  # the long prompts took several steps


def test_prefill_paths_agree(model, prompts, expected):
    absorbed = LLM(model, prefill_attention="absorbed", max_num_batched_tokens=16)
    decomp = LLM(model, prefill_attention="decompressed", max_num_batched_tokens=16)
    assert tokens(absorbed.generate(prompts, GREEDY)) == expected
    assert tokens(decomp.generate(prompts, GREEDY)) == expected
    # and the latents they leave in the cache are the same
    for llm in (absorbed, decomp):
        llm.add_request(prompts[2], SamplingParams(temperature=0, max_tokens=2))
        llm.step()
    a, d = absorbed.engine.cache.kv, decomp.engine.cache.kv
    torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-5)


def test_preemption_under_tiny_cache_completes_everything(model, prompts, expected):
    # room for ~80 tokens: the three sequences (66 prompt + 24 generated tokens) cannot all stay resident
    llm = LLM(model, cache_budget=80 * LLM(model).engine.cache.bytes_per_token, block_size=4)
    assert llm.engine.max_model_len < 80
    outs = llm.generate(prompts, GREEDY)
    assert tokens(outs) == expected
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks


def test_n_samples_share_the_prefill(model, prompts, expected):
    llm = LLM(model, block_size=4)
    out = llm.generate([prompts[1]], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(c.token_ids == expected[1] for c in out.outputs)
    assert out.metrics.num_cached_tokens == 2 * len(prompts[1])  # two samples forked, not recomputed
    assert llm.engine.stats["tokens_scheduled"] == len(prompts[1]) + 3 * 7
    sampled = llm.generate([prompts[1]], SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=3))[0]
    assert len({tuple(c.token_ids) for c in sampled.outputs}) > 1
    again = llm.generate([prompts[1]], SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=3))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in sampled.outputs]
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks


def test_seeded_sampling_does_not_depend_on_the_batch(model, prompts):
    sp = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=8, seed=7, ignore_eos=True)
    llm = LLM(model)
    alone = llm.generate([prompts[0]], sp)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=8)
    batched = llm.generate([prompts[1], prompts[0], prompts[2]], [others, sp, others])[1].outputs[0].token_ids
    assert alone == batched
    other_seed = llm.generate([prompts[0]], sp.clone(seed=8))[0].outputs[0].token_ids
    assert other_seed != alone


def test_stop_token_ids_and_max_tokens(model, prompts, expected):
    llm = LLM(model)
    stop = expected[0][3]
    out = llm.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop]))[0]
    c = out.outputs[0]
    assert c.token_ids == expected[0][:expected[0].index(stop) + 1]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    out = llm.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=3, stop_token_ids=[stop],
                                                    min_tokens=3))[0]
    assert out.outputs[0].token_ids == expected[0][:3] and out.outputs[0].finish_reason == "length"


def test_logprobs_are_the_model_log_softmax(model, prompts, expected):
    llm = LLM(model)
    c = llm.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=3, logprobs=2, ignore_eos=True)
                     )[0].outputs[0]
    with torch.no_grad():
        ref = model(torch.tensor([prompts[0] + expected[0][:2]]))[0, -3:].log_softmax(-1)
    assert len(c.logprobs) == 3
    for j, (tok, entry) in enumerate(zip(c.token_ids, c.logprobs)):
        assert entry[tok].rank == 1  # greedy picks the most likely token
        top = ref[j].topk(2)
        assert set(entry) == set(top.indices.tolist())
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            assert entry[i].logprob == pytest.approx(v, abs=1e-4)
    assert c.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs)))


def test_incremental_core_abort_and_threads(model, prompts):
    llm = LLM(model)
    eng = llm.engine
    free = eng.cache.pool.num_free
    a = llm.add_request(prompts[0], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    errors: list[BaseException] = []

    def add_from_thread():
        try:
            llm.add_request(prompts[1], SamplingParams(temperature=0, max_tokens=2), request_id="t")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
    th = threading.Thread(target=add_from_thread)
    th.start()
    th.join()
    assert not errors
    outs = llm.step()
    assert {o.request_id for o in outs} == {a, "t"}
    llm.abort_request(a)
    finished = {}
    while llm.has_unfinished_requests():
        for o in llm.step():
            if o.finished:
                finished[o.request_id] = o
    assert finished[a].outputs[0].finish_reason == "abort"
    assert finished["t"].outputs[0].finish_reason == "length"
    assert eng.cache.pool.num_free == free
    with pytest.raises(ValueError, match="already in use"):
        llm.add_request(prompts[0], request_id="x")
        llm.add_request(prompts[0], request_id="x")


def test_bad_requests_raise_clear_errors(model):
    llm = LLM(model, max_model_len=64)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        llm.generate("hello")
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        llm.generate([[1, 2, 5000]])
    with pytest.raises(ValueError, match="maximum context length is 64"):
        llm.generate([[3] * 64])
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]])
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        llm.generate([[3, 4]], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="do not fit in the KV cache"):
        LLM(model, cache_budget="64KiB", max_model_len=1000)
    with pytest.raises(ValueError, match="speculative"):
        LLM(model, speculative="medusa")
    assert not llm.has_unfinished_requests()


def test_a_request_with_bad_sampling_values_never_reaches_a_shared_step(model, prompts, expected):
    """Issue 17 item 1: a value set after construction (top_k 2**63 once failed torch.tensor inside the batched step,
    failing every request in it) is refused at admission; the requests in flight finish unharmed, and an extreme
    but valid top_k samples (clamped to the vocabulary)."""
    engine = LLM(model, max_model_len=64).engine
    good = [engine.add_request(p, GREEDY) for p in prompts]
    engine.step()
    sp = SamplingParams(max_tokens=4, seed=1)
    sp.top_k = 2**63
    with pytest.raises(ValueError, match="SamplingParams.top_k"):
        engine.add_request([3, 4, 5], sp)
    huge = engine.add_request([3, 4, 5], SamplingParams(max_tokens=4, seed=1, top_k=2**31 - 1, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    assert [list(done[r]) for r in good] == expected and len(done[huge]) == 4


def test_n_samples_under_a_tiny_cache_and_early_stream_close(model, prompts, expected):
    bpt = LLM(model).engine.cache.bytes_per_token
    llm = LLM(model, cache_budget=64 * bpt, block_size=4, enable_prefix_caching=False)
    outs = llm.generate(prompts[:2], SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[e] * 3 for e in expected[:2]]
    assert llm.engine.scheduler.num_preemptions > 0
    stream = llm.stream(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    next(stream)
    stream.close()  # the consumer went away: its requests are aborted and their blocks freed
    llm.step()
    assert not llm.has_unfinished_requests()
    assert llm.engine.cache.pool.num_free == llm.engine.cache.num_blocks


def test_fork_without_a_free_block_recomputes_the_sample(model, prompts):
    bpt = LLM(model).engine.cache.bytes_per_token
    llm = LLM(model, cache_budget=8 * bpt, block_size=4, enable_prefix_caching=False)  # two blocks in all
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    want = llm.generate([prompts[0]], sp)[0].outputs[0].token_ids
    out = llm.generate([prompts[0]], sp.clone(n=2))[0]
    assert [c.token_ids for c in out.outputs] == [want, want]
    assert out.metrics.num_cached_tokens == 0  # the second sample could not share the prompt: recomputed


# ---------------------------------------------------------------------------------------------------- issue 17 item 1
def run_to_end(engine) -> dict:
    """Step until every request is finished; the final RequestOutput of each."""
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def test_a_failure_in_one_requests_sampling_ends_it_alone(model, prompts, expected, monkeypatch):
    """Issue 17 item 1: the logprobs of one request raise inside the batched sampling, after the seeded rows drew
    their noise. That request alone ends with finish_reason "error" and the message; the greedy requests give the
    tokens of a clean run, the seeded one the tokens it gives alone (its generator rewound), every block comes back
    and the engine keeps serving."""
    import nanoseek.infer.engine as engine_mod
    seeded = SamplingParams(temperature=0.8, top_k=50, max_tokens=8, seed=7, ignore_eos=True)
    alone = LLM(model).generate([prompts[0]], seeded)[0].outputs[0].token_ids
    real = engine_mod.top_logprobs

    def top_logprobs(logits, tokens, k):
        if k == 3:  # only the bad request asks for 3
            raise RuntimeError("injected logprobs fault")
        return real(logits, tokens, k)
    monkeypatch.setattr(engine_mod, "top_logprobs", top_logprobs)
    engine = LLM(model).engine
    good = [engine.add_request(p, GREEDY) for p in prompts]
    lucky = engine.add_request(prompts[0], seeded)
    bad = engine.add_request(prompts[1], GREEDY.clone(logprobs=3))
    done = run_to_end(engine)
    assert done[bad].finished and done[bad].outputs[0].finish_reason == "error"
    assert "RuntimeError: injected logprobs fault" in done[bad].error
    assert [done[r].outputs[0].token_ids for r in good] == expected
    assert all(done[r].error is None and done[r].outputs[0].finish_reason == "length" for r in good)
    assert done[lucky].outputs[0].token_ids == alone
    assert engine.cache.pool.num_free == engine.cache.num_blocks and not engine.requests
    assert not engine.scheduler.running and not engine.scheduler.waiting
    monkeypatch.setattr(engine_mod, "top_logprobs", real)
    again = engine.add_request(prompts[1], GREEDY.clone(logprobs=3))
    assert run_to_end(engine)[again].outputs[0].token_ids == expected[1]


@pytest.mark.parametrize("speculative", [0, 1])
@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_failing_stop_check_of_one_sample_ends_its_request_alone(model, prompts, expected, speculative, fail_at):
    """The stop-string check of the second sample of an n=2 request raises at its first token (in the step that
    forks it from the leader's prompt blocks) or its third: the request ends with "error" (both samples, the blocks
    they shared freed) while the others finish as in a clean run, with MTP drafts too. The prompt blocks it had put in the
    prefix cache stay correct: the same prompt again gives the clean tokens."""
    llm = LLM(model, block_size=4, speculative=speculative)
    engine = llm.engine
    good = [engine.add_request(p, GREEDY) for p in prompts]
    bad = engine.add_request(prompts[2], SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True))
    detok = engine._inbox[-1].outputs[1].detok
    real_add, calls = detok.add, [0]

    def add(token, check_stop=True):
        calls[0] += 1
        if calls[0] == fail_at:
            raise ValueError("injected stop-string fault")
        return real_add(token, check_stop)
    detok.add = add
    done = run_to_end(engine)
    assert [c.finish_reason for c in done[bad].outputs] == ["error", "error"]
    assert done[bad].error == "ValueError: injected stop-string fault"
    assert [done[r].outputs[0].token_ids for r in good] == expected
    assert engine.cache.pool.num_free == engine.cache.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting
    out = llm.generate([prompts[2]], SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert [c.token_ids for c in out.outputs] == [expected[2]] * 2 and out.metrics.num_cached_tokens > 0


def test_a_failure_building_one_requests_output_ends_it_alone(model, prompts, expected):
    """Its text raises when the step's outputs are built (after the tokens were appended): it alone ends, reported
    once with the error; the others stream on unchanged."""
    engine = LLM(model).engine
    good = [engine.add_request(p, GREEDY.clone(output_kind="delta")) for p in prompts]
    bad = engine.add_request(prompts[0], GREEDY.clone(output_kind="delta"))
    detok = engine._inbox[-1].outputs[0].detok
    real_delta, calls = detok.delta, [0]

    def delta(final):
        calls[0] += 1
        if calls[0] == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return real_delta(final)
    detok.delta = delta
    got = {r: [] for r in good + [bad]}
    errors = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id] += out.outputs[0].token_ids if out.outputs else []
            if out.error is not None:
                errors.append((out.request_id, out.finished, out.outputs[0].finish_reason))
    assert errors == [(bad, True, "error")]
    assert [got[r] for r in good] == expected and len(got[bad]) == 1
    assert engine.cache.pool.num_free == engine.cache.num_blocks


def test_a_failure_in_mtp_drafting_switches_speculation_off_and_fails_nobody(model, prompts, expected):
    """Issue 17 item 1: drafting is an optimisation. When the MTP drafter raises (here in its third step), the
    engine logs it, switches speculative decoding off and every request finishes with the tokens of plain greedy
    decoding; no request gets an error and every block comes back."""
    llm = LLM(model, speculative=2, block_size=4)
    engine = llm.engine
    real_run, calls = engine.drafter.run, [0]

    def run(*args):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected drafting fault")
        return real_run(*args)
    engine.drafter.run = run
    ids = [engine.add_request(p, GREEDY) for p in prompts]
    done = run_to_end(engine)
    assert [done[r].outputs[0].token_ids for r in ids] == expected
    assert all(done[r].error is None and done[r].outputs[0].finish_reason == "length" for r in ids)
    assert engine.drafter is None and engine.stats["spec_disabled"] == 1 and calls[0] == 3
    assert engine.cache.pool.num_free == engine.cache.num_blocks
    again = llm.generate(prompts, GREEDY)  # and it keeps serving, with its prefix cache
    assert [o.outputs[0].token_ids for o in again] == expected


def test_a_failure_forking_one_request_ends_it_alone(model, prompts, expected):
    """Sharing an n = 2 request's prompt blocks with its second sample raises: that request ends with "error",
    the others finish as in a clean run and every block (the shared ones too) comes back."""
    llm = LLM(model, block_size=4)
    engine = llm.engine
    good = [engine.add_request(p, GREEDY) for p in prompts]
    bad = engine.add_request(prompts[2], SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True))
    real_fork = engine._fork

    def fork(leader, children):
        if leader.request.request_id == bad:
            real_fork(leader, children[:0])  # part of the work done, then the fault
            raise MemoryError("injected fork fault")
        return real_fork(leader, children)
    engine._fork = fork
    done = run_to_end(engine)
    assert done[bad].error == "MemoryError: injected fork fault"
    assert [done[r].outputs[0].token_ids for r in good] == expected
    assert engine.cache.pool.num_free == engine.cache.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting
