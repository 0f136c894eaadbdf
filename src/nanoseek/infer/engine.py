"""LLMEngine: the incremental core (add_request, step, abort_request), safe to drive from a background thread.

One `step()` = schedule (scheduler.py) -> one forward of the main model over every scheduled token (runner.py)
-> logits only where a token is produced -> sample or verify drafts (sampling.py, spec.py) -> append tokens with
stop checks and detokenization (stopping.py, detok.py) -> with speculative decoding, one MTP pass that fills the
MTP cache and drafts the next step's tokens -> register full blocks in the prefix cache and, for n > 1, fork the
finished prompt into n samples sharing its blocks (sharing.py). Requests and sequences are in sequence.py.
A failure in the per-sequence work of a step (sampling, logprobs, stop checks, detokenization, outputs) ends only
the request it came from, with finish_reason "error" and RequestOutput.error; a failure of the forward itself
still fails the step.
`add_request` / `abort_request` may be called from other threads: they only touch a locked inbox that `step`
drains first. Everything else runs on the thread that calls `step`.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..files import parse_size
from .detok import Detokenizer
from .outputs import OutputState, RequestMetrics, RequestOutput, build_output
from .paged_cache import PagedLatentCache, bytes_per_token
from .runner import ModelRunner, Segment, build_meta
from .sampling import Sampler, SamplingParams, apply_penalties, child_seed, top_logprobs
from .scheduler import Scheduler
from .sequence import Request, Scheduled, Sequence
from .sharing import fork_prompt, register_full_blocks
from .spec import MTPDrafter, parse_speculative, verify_greedy, verify_sampled
from .stopping import append_tokens

DEFAULT_CACHE_BYTES = 1 << 30
log = logging.getLogger("nanoseek.infer")


class LLMEngine:
    def __init__(self, model: nn.Module, tokenizer: Any = None, *, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 2048, cache_budget: int | str | None = None, block_size: int = 16,
                 max_model_len: int | None = None, speculative: Any = None,
                 prefill_attention: str = "decompressed", kv_cache_dtype: torch.dtype | None = None, seed: int = 0,
                 enable_prefix_caching: bool = True):
        cfg = model.config
        self.model = model  # not switched to eval(): the model has no dropout, and a trainer may own its mode
        self.cfg = cfg
        self.tokenizer = tokenizer
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        for name, v in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer (got {v!r})")
        k = parse_speculative(speculative)
        if k and len(getattr(model, "mtp", ())) == 0:
            warnings.warn("speculative decoding needs the model's MTP module and this model has none: switched off",
                          stacklevel=3)
            k = 0
        self.num_spec = k
        n_layers = cfg.num_hidden_layers + (1 if k else 0)  # MTP module 0 has its own cached layer
        kv_dtype = kv_cache_dtype or self.dtype
        lookahead = k  # provisional MTP rows beyond the fed tokens
        want_len = min(cfg.max_position_embeddings, max_model_len or cfg.max_position_embeddings)
        if cache_budget is None:
            need = max_num_seqs * min(want_len, 4096) * bytes_per_token(cfg, n_layers, kv_dtype)
            budget = min(need, DEFAULT_CACHE_BYTES)
        else:
            budget = parse_size(cache_budget, "cache_budget")  # '512MiB', '2GB', or bytes
        self.cache = PagedLatentCache.from_budget(cfg, budget, block_size, n_layers, kv_dtype, self.device)
        capacity = self.cache.capacity_tokens - lookahead - 1
        if max_model_len is not None:
            if max_model_len > cfg.max_position_embeddings:
                raise ValueError(f"max_model_len: {max_model_len} exceeds the model's max_position_embeddings "
                                 f"{cfg.max_position_embeddings}")
            if max_model_len > capacity:
                raise ValueError(f"max_model_len: {max_model_len} tokens do not fit in the KV cache "
                                 f"({self.cache.capacity_tokens} tokens in {self.cache.num_blocks} blocks of "
                                 f"{block_size}); raise cache_budget")
        self.max_model_len = min(want_len, capacity)
        if self.max_model_len < 2:
            raise ValueError(f"cache_budget: {budget} bytes hold {self.cache.capacity_tokens} tokens, too few")
        self.prefix_caching = enable_prefix_caching
        self._weights_seen = self._weights_version()
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_num_batched_tokens, lookahead,
                                   prefix_caching=enable_prefix_caching, need_hidden=bool(k))
        self.runner = ModelRunner(model, self.cache, prefill_attention)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.vocab_limit = cfg.vocab_size
        self.eos_ids: set[int] = set()
        eos = cfg.eos_token_id
        self.eos_ids.update(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        self.think_ids: tuple[int | None, int | None] = (None, None)
        if tokenizer is not None:
            n = len(tokenizer) if hasattr(tokenizer, "__len__") else None
            if n is not None and n < cfg.vocab_size:
                self.vocab_limit = n  # padded embedding rows are never sampled
            if getattr(tokenizer, "eos_token_id", None) is not None:
                self.eos_ids.add(tokenizer.eos_token_id)
            if hasattr(tokenizer, "token_to_id"):
                self.think_ids = (tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>"))
        self.sampler = Sampler(self.vocab_limit, self.generator)
        self.drafter = MTPDrafter(self.runner, k, self.sampler, self.max_model_len) if k else None
        self.requests: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._inbox: list[Request] = []
        self._aborts: list[str] = []
        self._ids = itertools.count()
        self.stats = {"steps": 0, "tokens_scheduled": 0, "spec_draft_tokens": 0, "spec_accepted_tokens": 0}

    # ------------------------------------------------------------------ public, thread-safe
    def encode_prompt(self, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            prompt = prompt.get("prompt")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: a text prompt needs a tokenizer; pass token ids, or LLM(..., tokenizer=...)")
            return prompt, self._check_ids(self.tokenizer.encode(prompt))
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(list(prompt))
        raise ValueError(f"prompt: expected a string, a list of token ids or a dict (got {type(prompt).__name__})")

    def _check_ids(self, ids: list[Any]) -> list[int]:
        if not ids:
            raise ValueError("prompt: empty (needs at least one token)")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("prompt: token ids must be integers")
        bad = [i for i in ids if not 0 <= i < self.cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt: token id {bad[0]} outside the model's vocabulary [0, {self.cfg.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"This model's maximum context length is {self.max_model_len} tokens. However, the "
                             f"prompt has {len(ids)} tokens (at least one more is needed for the completion).")
        return [int(i) for i in ids]

    def add_request(self, prompt: Any, params: SamplingParams | None = None, request_id: str | None = None,
                    arrival_time: float | None = None) -> str:
        """Queue a prompt (text, token ids, or {"prompt_token_ids": ...}); returns its request id. Errors in the
        request raise ValueError here, in the caller's thread."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: expected SamplingParams (got {type(params).__name__})")
        text, ids = self.encode_prompt(prompt)
        if params.stop_list and self.tokenizer is None:
            raise ValueError("SamplingParams.stop: stop strings need a tokenizer (use stop_token_ids with token ids)")
        if params.max_thinking_tokens is not None and self.think_ids[1] is None:
            raise ValueError("SamplingParams.max_thinking_tokens: the tokenizer has no `</think>` token")
        if params.n > self.scheduler.max_num_seqs:
            raise ValueError(f"SamplingParams.n: {params.n} exceeds max_num_seqs={self.scheduler.max_num_seqs}")
        if params.logprobs is not None and params.logprobs > self.cfg.vocab_size:
            raise ValueError(f"SamplingParams.logprobs: {params.logprobs} exceeds the vocabulary")
        params.validate()  # fields may have been changed after construction
        self.sampler.admit(params, self.device)
        with self._lock:
            rid = request_id if request_id is not None else str(next(self._ids))
            if rid in self.requests or any(r.request_id == rid for r in self._inbox):
                raise ValueError(f"request_id: {rid!r} is already in use")
            req = self._new_request(rid, text, ids, params, arrival_time)
            self._inbox.append(req)
        return rid

    def abort_request(self, request_id: str | list[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        with self._lock:
            self._aborts.extend(ids)

    def has_unfinished_requests(self) -> bool:
        with self._lock:
            return bool(self._inbox or self.requests)

    def get_num_unfinished_requests(self) -> int:
        with self._lock:
            return len(self._inbox) + len(self.requests)

    # ------------------------------------------------------------------ requests and sequences
    def _new_request(self, rid: str, text: str | None, ids: list[int], params: SamplingParams,
                     arrival_time: float | None) -> Request:
        think_start, think_end = self.think_ids
        thinking = False
        if think_start is not None and think_start in ids:  # the prompt pre-fills `<think>` (R1 template)
            last_start = len(ids) - 1 - ids[::-1].index(think_start)
            thinking = think_end not in ids[last_start:]
        outs = []
        for _ in range(params.n):
            o = OutputState(Detokenizer(self.tokenizer, params.skip_special_tokens, params.stop_list,
                                    params.include_stop_str_in_output),
                        logprobs=[] if params.logprobs is not None else None, thinking=thinking)
            outs.append(o)
        metrics = RequestMetrics(arrival_time=arrival_time if arrival_time is not None else time.time())
        req = Request(rid, text, ids, params, next(self._ids), metrics, outs)
        leader = self._new_seq(req, 0, list(ids))
        leader.pending_fork = params.n > 1
        req.seqs.append(leader)
        return req

    def _new_seq(self, req: Request, index: int, tokens: list[int]) -> Sequence:
        gen = None
        if req.params.seed is not None:
            gen = torch.Generator(self.device).manual_seed(child_seed(req.params.seed, index))
        seq = Sequence(self.scheduler.new_seq_id(), req, index, tokens, len(req.prompt_token_ids), gen)
        seq.state = req.outputs[index]
        return seq

    def _drain_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            for req in inbox:
                self.requests[req.request_id] = req
                self.scheduler.add(req.seqs[0])
            for rid in aborts:
                req = self.requests.get(rid)
                if req is not None:
                    for seq in req.abort():
                        self.scheduler.remove(seq)

    # ------------------------------------------------------------------ one step
    def _weights_version(self) -> tuple[int, int]:
        """Changes whenever a parameter is modified in place (optimizer steps bump torch's version counters) or
        replaced: cached latents computed with other weights must not be reused."""
        ps = list(self.model.parameters())
        return sum(p._version for p in ps), sum(id(p) for p in ps)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (running sequences keep their blocks)."""
        self.cache.pool.reset_prefix_cache()

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step: schedule, run the model, postprocess; returns the outputs of requests that made
        progress (per their output_kind)."""
        if self.prefix_caching:
            v = self._weights_version()
            if v != self._weights_seen:  # e.g. RL training updated the live model between rollouts
                self._weights_seen = v
                self.reset_prefix_cache()
        self._drain_inbox()
        sched = self.scheduler.schedule()
        for seq in sched.preempted:
            seq.request.metrics.num_preemptions += 1
        if sched.entries:
            segs, hidden = self._run(sched.entries)
            self._postprocess(sched.entries, segs, hidden)
        return self._collect()

    @torch.inference_mode()
    def _run(self, entries: list[Scheduled]) -> tuple[list[Segment], torch.Tensor]:
        """One forward of the main model over every scheduled token; returns each entry's rows and the hidden states."""
        now = time.time()
        self.stats["steps"] += 1
        ids, pos, segs, row = [], [], [], 0
        for e in entries:
            s = e.seq
            if s.request.metrics.first_scheduled_time is None:
                s.request.metrics.first_scheduled_time = now
            ids += s.tokens[s.num_computed:s.num_computed + e.num_real] + e.drafts
            pos += range(s.num_computed, s.num_computed + e.num_tokens)
            segs.append(Segment(row, e.num_tokens, s.num_computed, s.blocks, decode=e.completes and e.num_real == 1))
            row += e.num_tokens
        self.stats["tokens_scheduled"] += row
        dev = self.device
        meta = build_meta(segs, self.cache.block_size, dev)
        return segs, self.runner.forward(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), meta)

    @torch.inference_mode()
    def _postprocess(self, entries: list[Scheduled], segs: list[Segment], hidden: torch.Tensor) -> None:
        """New tokens where chunks complete, then the step's bookkeeping: MTP drafts, prefix-cache registrations,
        n > 1 forks, freeing finished sequences. A failure in one request's own work ends that request alone."""
        old = {id(e.seq): e.seq.num_computed for e in entries}
        old_hidden = {id(e.seq): e.seq.last_hidden for e in entries}
        failed: dict[Request, Exception] = {}  # requests ended by an error of their own in this step
        children = self._append_new_tokens(entries, segs, hidden, failed)
        for e in entries:
            if not e.completes:
                e.seq.num_computed += e.num_real
        if self.drafter is not None:
            self._draft_guarded(entries, segs, hidden, old, old_hidden)
        if self.prefix_caching:
            # not the failed requests' blocks: their tokens may lag behind num_computed, so a hash could be wrong
            for e, seg in zip(entries, segs):
                if e.seq.request not in failed:
                    self._guarded(failed, e.seq.request, register_full_blocks, e.seq, seg, hidden, old[id(e.seq)],
                                  self.cache, self.num_spec > 0)
        for e in entries:
            if e.seq.pending_fork and e.completes and e.seq.request not in failed:
                self._guarded(failed, e.seq.request, self._fork, e.seq,
                              [c for c in children if c.request is e.seq.request])
        for e in entries:
            if e.seq.finished:
                self.scheduler.remove(e.seq)
        for req in failed:  # its other samples, not scheduled in this step, free their blocks too
            for seq in req.seqs:
                self.scheduler.remove(seq)

    def _append_new_tokens(self, entries: list[Scheduled], segs: list[Segment], hidden: torch.Tensor,
                           failed: dict[Request, Exception]) -> list[Sequence]:
        """Sample (or verify drafts) from the logits of completing chunks and append the tokens; requests whose own
        work raises end and go into `failed`. Returns the new samples of n > 1 requests, to be forked."""
        # logits only where tokens are produced: the last real token and every draft of a completing chunk
        done = [(e, seg) for e, seg in zip(entries, segs) if e.completes]
        if not done:
            return []
        rows = [r for e, seg in done for r in range(seg.row + e.num_real - 1, seg.row + seg.n)]
        results = self._sample_guarded(done, self.runner.logits(hidden[rows]), failed)
        children: list[Sequence] = []
        for e, seq, toks, accepted, lps in results:
            if seq.request in failed:
                continue
            try:
                if seq is e.seq:
                    self._advance(e, toks, accepted, lps)
                else:  # a new sample of an n > 1 request, forked below
                    children.append(seq)
                    self._emit(seq, toks, lps)
                    seq.num_computed = len(seq.tokens) - 1
            except Exception as err:  # its stop check, detokenization or logprobs: this request alone ends
                failed.setdefault(seq.request, err)
        for req, err in failed.items():
            self._fail_request(req, err)
        return children

    def _guarded(self, failed: dict[Request, Exception], req: Request, fn: Callable[..., None], *args: Any) -> None:
        """fn(*args), the bookkeeping of one request's sequences: if it raises, that request alone ends."""
        try:
            fn(*args)
        except Exception as err:
            failed[req] = err
            self._fail_request(req, err)

    def _draft_guarded(self, entries: list[Scheduled], segs: list[Segment], hidden: torch.Tensor,
                       old: dict[int, int], old_hidden: dict[int, torch.Tensor | None]) -> None:
        """MTP drafting is an optimisation: if it raises, speculative decoding is switched off for the rest of the
        engine's life (logged once) and every request goes on with plain decoding: greedy output is the same token
        for token, sampled output has the same distribution. No request fails because its drafts could not be made."""
        try:
            self.drafter.run(entries, segs, hidden, old, old_hidden)  # type: ignore[union-attr]
        except Exception as err:
            log.error("MTP drafting failed; speculative decoding is off from now on", exc_info=err)
            self.drafter, self.num_spec = None, 0
            self.scheduler.stop_speculation()
            self.stats["spec_disabled"] = 1
            for e in entries:
                e.seq.clear_drafts()

    def _fail_request(self, req: Request, err: Exception) -> None:
        """End one request because of an error raised by its own work: every sample that has not finished gets
        finish_reason "error" and the message goes to RequestOutput.error. The caller frees the blocks."""
        log.warning("request %r failed and was ended alone", req.request_id, exc_info=err)  # the traceback
        req.fail(f"{type(err).__name__}: {err}")

    # ------------------------------------------------------------------ sampling
    def _sample_guarded(self, done: list[tuple[Scheduled, Segment]], logits: torch.Tensor,
                        failed: dict[Request, Exception]
                        ) -> list[tuple[Scheduled, Sequence, list[int], int, list[Any]]]:
        """`_sample` over the whole batch; if that raises, each entry alone, so that only the request(s) whose own
        rows fail end (recorded in `failed`) and every other sequence gets the tokens the batch would have given.
        Seeded generators are rewound first: the failed attempt may have drawn from them."""
        gens = [(e.seq.generator, e.seq.generator.get_state()) for e, _ in done
                if e.seq.generator is not None and not e.seq.request.params.greedy]
        try:
            return self._sample(done, logits)
        except Exception:
            for g, state in gens:
                g.set_state(state)
        results, r = [], 0
        for e, seg in done:
            n = 1 + len(e.drafts)  # this entry's logits rows, as `_execute` laid them out
            if e.seq.request not in failed:
                try:
                    results += self._sample([(e, seg)], logits[r:r + n])
                except Exception as err:
                    failed.setdefault(e.seq.request, err)
            r += n
        return [res for res in results if res[1].request not in failed]

    def _sample(self, done: list[tuple[Scheduled, Segment]], logits: torch.Tensor
                ) -> list[tuple[Scheduled, Sequence, list[int], int, list[Any]]]:
        """Returns per produced sample: (entry, sequence, tokens emitted, drafts accepted, logprob entries)."""
        # one row group per sequence; an n > 1 leader finishing its prompt also samples for its n − 1 children
        groups: list[tuple[Sequence, int, int, list[int], Scheduled]] = []  # (seq, 1st logits row, rows, drafts)
        r = 0
        for e, seg in done:
            n = 1 + len(e.drafts)
            groups.append((e.seq, r, n, e.drafts, e))
            if e.seq.pending_fork:
                req = e.seq.request
                for i in range(1, req.params.n):
                    groups.append((self._new_seq(req, i, list(e.seq.tokens)), r, 1, [], e))
            r += n
        row_of = [g[1] + j for g in groups for j in range(g[2])]
        x = self.sampler.mask_vocab(logits[row_of].clone())
        i = 0
        for seq, _, n, _, _ in groups:  # penalties and min_tokens (stop tokens banned until then)
            p = seq.request.params
            if p.has_penalties:
                out = torch.tensor(seq.tokens[seq.num_prompt:], dtype=torch.long, device=x.device)
                counts = torch.bincount(out, minlength=x.shape[-1])[:x.shape[-1]]
                x[i:i + n] = apply_penalties(x[i:i + n], counts, p.presence_penalty, p.frequency_penalty)
            if p.min_tokens:
                ban = [t for t in self._stop_ids(p) if t < x.shape[-1]]
                for j in range(n):
                    if seq.num_output + j < p.min_tokens and ban:
                        x[i + j, ban] = float("-inf")
            i += n
        tok_list, logp = self.sampler.sample(x, [g[0].request.params for g in groups for _ in range(g[2])],
                                             [g[0].generator for g in groups for _ in range(g[2])])
        results = []
        i = 0
        for seq, start, n, drafts, e in groups:
            if not drafts:
                accepted, nxt = 0, tok_list[i]
            elif seq.request.params.greedy:
                accepted, nxt = verify_greedy(drafts, tok_list[i:i + n])
            else:
                accepted, nxt = verify_sampled(drafts, seq.draft_logp, logp[i:i + n], tok_list[i + n - 1],
                                               seq.generator, self.generator)
            emitted = drafts[:accepted] + [nxt]
            lps: list[Any] = []
            k = seq.request.params.logprobs
            if k is not None:
                em = torch.tensor(emitted, device=logits.device)
                chosen, rank, vals, top = top_logprobs(logits[[start + j for j in range(len(emitted))]], em, k)
                lps = list(zip(chosen.tolist(), rank.tolist(), vals.tolist(), top.tolist()))
            results.append((e, seq, emitted, accepted, lps))
            i += n
        return results

    def _stop_ids(self, p: SamplingParams) -> set[int]:
        return set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_ids)

    # ------------------------------------------------------------------ appending tokens
    def _advance(self, e: Scheduled, toks: list[int], accepted: int, lps: list[Any]) -> None:
        seq = e.seq
        m = seq.request.metrics
        m.spec_num_draft_tokens += len(e.drafts)
        m.spec_num_accepted_tokens += accepted
        self.stats["spec_draft_tokens"] += len(e.drafts)
        self.stats["spec_accepted_tokens"] += accepted
        seq.num_computed += e.num_real + accepted
        self._emit(seq, toks, lps)
        seq.num_computed = min(seq.num_computed, len(seq.tokens) - 1)  # a forced token is not computed yet

    def _emit(self, seq: Sequence, toks: list[int], lps: list[Any]) -> None:
        append_tokens(seq, toks, lps, self._stop_ids(seq.request.params), self.think_ids, self.max_model_len,
                      self.tokenizer)

    # ------------------------------------------------------------------ n > 1: share the prompt's blocks
    def _fork(self, leader: Sequence, children: list[Sequence]) -> None:
        """The leader's prefilled prompt, shared with the request's other samples (sharing.fork_prompt)."""
        fork_prompt(leader, children, self.cache, self.scheduler)

    # ------------------------------------------------------------------ outputs
    def _collect(self) -> list[RequestOutput]:
        outs = []
        for rid in list(self.requests):
            req = self.requests[rid]
            if not req.dirty:
                continue
            req.dirty = False
            try:
                out = build_output(req)
            except Exception as err:  # its text could not be built: this request alone ends
                self._fail_request(req, err)
                for seq in req.seqs:
                    self.scheduler.remove(seq)
                out = build_output(req)  # an error output touches no detokenizer
            if req.finished:
                del self.requests[rid]
            if out is not None:
                outs.append(out)
        return outs
