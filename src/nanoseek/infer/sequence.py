"""Requests and their sequences: the state the engine, scheduler, cache and speculative decoder share.

A leaf of the engine's modules (it imports none of engine, scheduler, spec, stopping), so that each of them can use
these types without import cycles. The state transitions other modules need are methods here, so that the fields
of a sequence change in one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .outputs import OutputState, RequestMetrics
from .paged_cache import block_hash
from .sampling import SamplingParams


@dataclass(eq=False)
class Request:
    """One prompt and its n samples (`seqs`, `outputs`), as the engine tracks it from add_request to its end."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_index: int
    metrics: RequestMetrics
    outputs: list[OutputState]
    seqs: list[Sequence] = field(default_factory=list)
    dirty: bool = False  # has something to report after this step
    error: str | None = None  # why the engine ended this request alone (its unfinished outputs say "error")

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)

    def abort(self) -> list[Sequence]:
        """End every unfinished sample with finish_reason "abort"; returns the sequences whose blocks to free."""
        live = [seq for seq in self.seqs if not seq.finished]
        for seq in live:
            seq.stop()
        self._end_outputs("abort")
        return live

    def fail(self, message: str) -> None:
        """End the request because its own work raised: unfinished samples say "error", `error` says why."""
        self.error = message
        for seq in self.seqs:
            seq.stop()
        self._end_outputs("error")
        if self.metrics.finished_time is None:
            self.metrics.finished_time = time.time()

    def _end_outputs(self, reason: str) -> None:
        for o in self.outputs:
            if o.finish_reason is None:
                o.finish_reason = reason
        self.dirty = True


@dataclass(eq=False)
class Sequence:
    """One sample being generated: its tokens, how far the cache holds them, its blocks and its MTP drafts."""
    seq_id: int
    request: Request
    index: int  # which of the request's n samples
    tokens: list[int]
    num_prompt: int
    generator: torch.Generator | None = None
    num_computed: int = 0  # positions [0, num_computed) of the main layers are in the cache
    mtp_len: int = 1  # MTP rows [1, mtp_len) are in the cache (row p combines h_{p-1} and token p)
    blocks: list[int] = field(default_factory=list)
    last_hidden: torch.Tensor | None = None  # main model's hidden state at position num_computed − 1
    drafts: list[int] = field(default_factory=list)
    draft_logp: torch.Tensor | None = None  # (len(drafts), V) draft distributions (None when greedy)
    finished: bool = False
    pending_fork: bool = False  # leader of an n > 1 request whose prompt is not yet prefilled
    state: OutputState | None = None  # the engine's per-output state (detokenizer, logprobs, finish reason)
    hashes: list[bytes] = field(default_factory=list)  # prefix hashes of the full blocks of `tokens`
    num_registered: int = 0  # blocks[:num_registered] are in the prefix cache

    @property
    def priority(self) -> tuple[int, int]:
        return self.request.arrival_index, self.index

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    def ensure_hashes(self, n_blocks: int, block_size: int) -> None:
        while len(self.hashes) < n_blocks:
            i = len(self.hashes)
            parent = self.hashes[-1] if i else b""
            self.hashes.append(block_hash(parent, self.tokens[i * block_size:(i + 1) * block_size]))

    # ------------------------------------------------------------------ cache state
    def reset_for_recompute(self) -> None:
        """Nothing of it is cached any more (preempted, or a fork that found no room): recompute from the start."""
        self.num_computed = 0
        self.num_registered = 0
        self.mtp_len = 1
        self.last_hidden = None
        self.clear_drafts()

    def start_from_prefix(self, blocks: list[int], num_tokens: int, last_hidden: torch.Tensor | None) -> None:
        """Admitted on a prefix-cache hit: `blocks` (already shared) hold its first num_tokens positions."""
        self.blocks = list(blocks)
        self.num_computed = num_tokens
        self.num_registered = len(blocks)
        self.mtp_len = num_tokens
        self.last_hidden = last_hidden

    def adopt_prompt(self, leader: Sequence, block_size: int) -> None:
        """A new sample of an n > 1 request takes over its leader's computed prompt, whose rows its blocks now hold
        (the leader's full blocks, shared, then its own copy of the partial last one)."""
        n_prompt = leader.num_prompt
        self.num_computed = n_prompt
        self.num_registered = min(n_prompt // block_size, leader.num_registered)
        self.last_hidden = leader.last_hidden
        self.mtp_len = n_prompt  # the row at n_prompt used the leader's token: recompute it

    def keep_hidden(self, hidden: torch.Tensor) -> None:
        """The main model's hidden state at position num_computed − 1, which the next MTP row needs."""
        self.last_hidden = hidden

    def advance_mtp(self, mtp_len: int) -> None:
        """MTP rows [1, mtp_len) are now in the cache."""
        self.mtp_len = mtp_len

    # ------------------------------------------------------------------ drafts
    def clear_drafts(self) -> None:
        self.drafts = []
        self.draft_logp = None

    def add_draft(self, token: int, logp: torch.Tensor | None) -> None:
        """One more MTP draft token, with its (1, V) draft distribution when the request samples."""
        self.drafts.append(token)
        if logp is not None:
            self.draft_logp = logp if self.draft_logp is None else torch.cat([self.draft_logp, logp])

    # ------------------------------------------------------------------ output
    def append_token(self, token: int) -> None:
        """A generated token, into the sequence and its output; the request has something to report."""
        self.tokens.append(token)
        self.state.token_ids.append(token)  # type: ignore[union-attr]
        self.request.dirty = True

    def finish(self, reason: str, stop_reason: int | str | None) -> None:
        """This sample is done ("stop" or "length"); the request's finish time is set when it was the last one."""
        self.finished = True
        self.state.finish_reason = reason  # type: ignore[union-attr]
        self.state.stop_reason = stop_reason  # type: ignore[union-attr]
        self.clear_drafts()
        if self.request.finished:
            self.request.metrics.finished_time = time.time()

    def stop(self) -> None:
        """Ended from outside (abort, or a failure of its request): no fork, no drafts; its output is not touched."""
        self.finished = True
        self.pending_fork = False
        self.clear_drafts()


@dataclass
class Scheduled:
    """One sequence's share of a step: a chunk of its known tokens, then its drafts."""
    seq: Sequence
    num_real: int  # tokens[num_computed : num_computed + num_real] are fed
    drafts: list[int]  # then these draft tokens
    completes: bool = False  # the chunk reaches the end of the known tokens: its last logits give a new token

    def __post_init__(self) -> None:
        self.completes = self.seq.num_computed + self.num_real == len(self.seq.tokens)

    @property
    def num_tokens(self) -> int:
        return self.num_real + len(self.drafts)
