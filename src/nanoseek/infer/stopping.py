"""Appending sampled tokens to a sequence: stop conditions, the reasoning budget, logprob records.

Order of checks per token (as vLLM): a stop token id (EOS unless ignore_eos, or stop_token_ids) ends the sequence,
the token is kept in token_ids but not in the text; then the text is extended and searched for stop strings; then
max_tokens and the model's maximum length. Stop tokens and strings count only once min_tokens are out.
Reasoning budget (max_thinking_tokens, s1's "budget forcing"): while the output is inside `<think>`, the tokens are
counted; at the budget the next token is replaced by `</think>`, so the answer follows.
"""
from __future__ import annotations

import time
from typing import Any

from .outputs import Logprob, OutputState
from .sequence import Sequence


def append_tokens(seq: Sequence, toks: list[int], lps: list[Any], stop_ids: set[int],
                  think_ids: tuple[int | None, int | None], max_model_len: int, tokenizer: Any) -> None:
    """Append toks one by one; stops at the first that ends the sequence or that was forced."""
    p, o, m = seq.request.params, seq.state, seq.request.metrics
    m.num_steps += 1
    if m.first_token_time is None:
        m.first_token_time = time.time()
    think_start, think_end = think_ids
    for j, sampled in enumerate(toks):
        t = sampled
        forced = (p.max_thinking_tokens is not None and o.thinking
                  and o.thinking_tokens >= p.max_thinking_tokens and t != think_end)
        if forced:
            t = think_end  # reasoning budget spent: close the thought, the answer follows
        if t == think_end:
            o.thinking = False
        elif t == think_start:
            o.thinking = True
        elif o.thinking:
            o.thinking_tokens += 1
        seq.append_token(t)
        m.num_generated_tokens += 1
        if o.logprobs is not None and j < len(lps):
            _add_logprob(o, t, lps[j], not forced, tokenizer)
        n_out = len(o.token_ids)
        if t in stop_ids and n_out >= p.min_tokens:
            seq.finish("stop", t if t in p.stop_token_ids else None)
            if p.include_stop_str_in_output:
                o.detok.add(t)
            return
        stop = o.detok.add(t, check_stop=n_out >= p.min_tokens)
        if stop is not None:
            seq.finish("stop", stop)
            return
        if p.max_tokens is not None and n_out >= p.max_tokens or len(seq.tokens) >= max_model_len:
            seq.finish("length", None)
            return
        if forced:
            return  # the tokens sampled after the forced one no longer follow


def _add_logprob(o: OutputState, t: int, lp: tuple, same: bool, tokenizer: Any) -> None:
    """lp: (sampled token's logprob, its rank, top-k logprobs, top-k ids). A forced token has no sampled logprob."""
    chosen, rank, vals, top = lp
    dec = (lambda i: tokenizer.decode([i], skip_special_tokens=False)) if tokenizer is not None else (lambda i: None)
    entry = {i: Logprob(v, r + 1, dec(i)) for r, (v, i) in enumerate(zip(vals, top))}
    if t not in entry:
        entry[t] = Logprob(chosen if same else float("nan"), rank if same else -1, dec(t))
    o.logprobs.append(entry)
    o.cumulative_logprob += entry[t].logprob

