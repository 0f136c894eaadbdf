"""Sequences sharing KV blocks: the prefix cache's registrations and the fork of an n > 1 request's prompt.

Both run after a step's forward, on the thread that calls `LLMEngine.step`: a block that became full and computed is
registered under its prefix hash (so later prompts with that prefix share it), and the prefilled prompt of an n > 1
request is shared with its other samples instead of being computed n times.
"""
from __future__ import annotations

import torch

from .paged_cache import PagedLatentCache
from .runner import Segment
from .scheduler import Scheduler
from .sequence import Sequence


def register_full_blocks(seq: Sequence, seg: Segment, hidden: torch.Tensor, computed_before: int,
                         cache: PagedLatentCache, with_mtp: bool) -> None:
    """Put every block of `seq` that became full and computed (main and, with MTP, MTP rows) into the prefix cache;
    with MTP each keeps the hidden state of its last position, which the MTP row after it needs. `seg` is the
    sequence's rows in this step's `hidden`, which started at position `computed_before`."""
    bs = cache.block_size
    upto = min(seq.num_computed, seq.mtp_len if with_mtp else seq.num_computed) // bs
    if upto <= seq.num_registered:
        return
    seq.ensure_hashes(upto, bs)
    for i in range(seq.num_registered, upto):
        extra = None
        last = (i + 1) * bs - 1
        if with_mtp and computed_before <= last < computed_before + seg.n:
            extra = hidden[seg.row + last - computed_before].clone()
        cache.pool.register(seq.blocks[i], seq.hashes[i], extra)
    seq.num_registered = upto


def fork_prompt(leader: Sequence, children: list[Sequence], cache: PagedLatentCache, scheduler: Scheduler) -> None:
    """The other samples of the leader's request share its full prompt blocks (ref-counted) and get a copy of its
    partial last block, then run; one that finds no free block for that copy is queued to compute its prompt."""
    leader.pending_fork = False
    pool, n_prompt = cache.pool, leader.num_prompt
    full = n_prompt // cache.block_size
    partial = n_prompt % cache.block_size != 0
    for child in children:
        child.request.seqs.append(child)
        if child.finished:
            continue
        child.request.metrics.num_cached_tokens += n_prompt
        if partial and pool.num_free < 1 or len(leader.blocks) < full + partial:
            child.reset_for_recompute()
            child.request.metrics.num_cached_tokens -= n_prompt
            scheduler.requeue_front(child)
            continue
        shared = leader.blocks[:full]
        pool.share(shared)
        child.blocks = list(shared)  # its own from here: freed with it if what follows raises
        if partial:
            child.blocks += pool.allocate(1)
            cache.copy_block(leader.blocks[full], child.blocks[-1])
        child.adopt_prompt(leader, cache.block_size)
        scheduler.add_running(child)
