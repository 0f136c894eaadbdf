"""Continuous batching at iteration level, in the manner of vLLM V1.

Every sequence has `tokens` (prompt + generated) and `num_computed`, the positions whose latents are cached. Each
step the scheduler gives each sequence `len(tokens) − num_computed` new tokens (1 while decoding, plus its MTP draft
tokens), cut to the per-step budget `max_num_batched_tokens`, so a long prompt is prefilled in chunks over several
steps while running sequences keep decoding. Running sequences go first, in arrival order; waiting ones are admitted
first come, first served while the budget, `max_num_seqs` and free blocks allow. When a running sequence needs a
block and none is free, the latest-arrived running sequence is preempted: its blocks are freed and it goes back to
the front of the queue with num_computed = 0, to be recomputed (prompt + what it had generated) later.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from .paged_cache import PagedLatentCache
from .sequence import Scheduled, Sequence


@dataclass
class SchedulerOutput:
    entries: list[Scheduled]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(e.num_tokens for e in self.entries)


class Scheduler:
    def __init__(self, cache: PagedLatentCache, max_num_seqs: int, max_num_batched_tokens: int, lookahead: int = 0,
                 prefix_caching: bool = True, need_hidden: bool = False):
        """lookahead: extra slots each scheduled sequence must own beyond its fed tokens (the provisional MTP rows
        of speculative drafting). prefix_caching: admitted sequences start after their longest cached prefix of
        full blocks; need_hidden: such a prefix must end in a block holding the hidden state MTP needs."""
        self.cache = cache
        self.prefix_caching = prefix_caching
        self.need_hidden = need_hidden
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.lookahead = lookahead
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._ids = itertools.count()

    def new_seq_id(self) -> int:
        return next(self._ids)

    # ------------------------------------------------------------------ queue management
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def requeue_front(self, seq: Sequence) -> None:
        """Back to the queue, ahead of later arrivals (preemption, failed fork)."""
        i = 0
        while i < len(self.waiting) and self.waiting[i].priority < seq.priority:
            i += 1
        self.waiting.insert(i, seq)

    def free(self, seq: Sequence) -> None:
        self.cache.pool.release(seq.blocks)
        seq.blocks = []

    def add_running(self, seq: Sequence) -> None:
        """A sequence whose blocks are already in place (a forked sample) runs from the next step."""
        self.running.append(seq)

    def stop_speculation(self) -> None:
        """Speculative decoding is off: drop the running sequences' drafts; prefix hits no longer need MTP's hidden
        states."""
        self.need_hidden = False
        for seq in self.running:
            seq.clear_drafts()

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.free(seq)
        seq.reset_for_recompute()
        self.requeue_front(seq)
        self.num_preemptions += 1

    def _blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        need = self.cache.blocks_for(seq.num_computed + num_tokens + self.lookahead)
        return max(0, need - len(seq.blocks))

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        entries: list[Scheduled] = []
        preempted: list[Sequence] = []
        pool = self.cache.pool
        # 1. running sequences, oldest first; preempt from the newest end when blocks run out
        self.running.sort(key=lambda s: s.priority)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_real = min(len(seq.tokens) - seq.num_computed, budget)
            drafts = seq.drafts[:max(0, budget - num_real)] if num_real == len(seq.tokens) - seq.num_computed else []
            n = num_real + len(drafts)
            while self._blocks_needed(seq, n) > pool.num_free:
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq not in self.running:
                break  # it was the newest itself: nothing after it runs either
            seq.blocks.extend(pool.allocate(self._blocks_needed(seq, n)))
            entries.append(Scheduled(seq, num_real, drafts))
            budget -= n
            i += 1
        # 2. admit waiting sequences (not in a step that had to preempt)
        while self.waiting and budget > 0 and not preempted:
            seq = self.waiting[0]
            slots = seq.request.params.n if seq.pending_fork else 1
            if len(self.running) + slots > self.max_num_seqs and self.running:
                break
            hits = self._prefix_hits(seq) if self.prefix_caching and not seq.blocks else []
            start = len(hits) * self.cache.block_size
            num_real = min(len(seq.tokens) - start, budget)
            need = self.cache.blocks_for(start + num_real + self.lookahead) - len(hits)
            if need > pool.num_free - sum(1 for b in hits if pool.is_free(b)):
                break
            self.waiting.popleft()
            if hits:
                pool.share(hits)
                seq.start_from_prefix(hits, start, pool.extra_of(hits[-1]))
                seq.request.metrics.num_cached_tokens += start
            seq.blocks.extend(pool.allocate(need))
            self.running.append(seq)
            entries.append(Scheduled(seq, num_real, []))
            budget -= num_real
        return SchedulerOutput(entries, preempted)

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's longest prefix of full blocks, leaving at least one token to compute."""
        bs = self.cache.block_size
        n_full = (len(seq.tokens) - 1) // bs
        seq.ensure_hashes(n_full, bs)
        pool, hits = self.cache.pool, []
        for h in seq.hashes[:n_full]:
            b = pool.lookup(h)
            if b is None:
                break
            hits.append(b)
        if self.need_hidden:
            while hits and pool.extra_of(hits[-1]) is None:
                hits.pop()
        return hits
