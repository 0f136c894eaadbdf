"""MTP speculative decoding: verification of draft tokens by the target model.

The MTP module proposes draft tokens d_1..d_k, drawn from its distributions q_1..q_k (after the request's
temperature / top-k / top-p processing; argmax when greedy). One target forward over [t, d_1..d_k] gives the
target distributions p_0..p_k (p_j predicts the token after d_j). Standard speculative sampling:
    for j = 1..k: accept d_j with probability min(1, p_{j-1}(d_j) / q_j(d_j));
                  on rejection emit a token from norm(max(0, p_{j-1} − q_j)) and stop;
    if all k are accepted, emit a bonus token from p_k.
Every emitted token is then distributed exactly as under p (Leviathan et al. 2023, Chen et al. 2023). Greedy is
the limit with one-hot p and q: accept while d_j = argmax p_{j-1}, then emit argmax p_a. So greedy speculative
output equals plain greedy output token for token.

How the MTP cache is kept (positions are sequence positions): MTP row p combines the main model's final hidden
state at p−1 with the embedding of token p (as in training). After a step in which the main layers hold positions
[0, C) and tokens [0, C] are known, rows up to p = C are computed; the row at C predicts the token at C + 1 (the
first draft); further drafts chain the MTP module on its own output (provisional rows, recomputed next step).
Rejected drafts need no explicit rollback: num_computed / mtp_len move back and later writes overwrite the slots.
"""
from __future__ import annotations

from typing import Any

import torch

from .runner import ModelRunner, Segment, build_meta
from .sampling import Sampler, sample_from_logprobs, uniform
from .sequence import Scheduled, Sequence


def parse_speculative(speculative: Any) -> int:
    """None/False/0: off; True or "mtp": 1 draft token; an int k; or vLLM's {"method": "mtp",
    "num_speculative_tokens": k}. Returns k."""
    if speculative is None or speculative is False:
        return 0
    if speculative is True:
        return 1
    if isinstance(speculative, str):
        if speculative.lower() in ("mtp", "deepseek_mtp"):
            return 1
        raise ValueError(f"speculative: unknown method {speculative!r} (only 'mtp')")
    if isinstance(speculative, int):
        if speculative < 0:
            raise ValueError(f"speculative: number of draft tokens must be >= 0 (got {speculative})")
        return speculative
    if isinstance(speculative, dict):
        method = speculative.get("method", "mtp")
        if method not in ("mtp", "deepseek_mtp"):
            raise ValueError(f"speculative.method: only 'mtp' is supported (got {method!r})")
        return parse_speculative(int(speculative.get("num_speculative_tokens", 1)))
    raise ValueError(f"speculative: expected None, bool, int, 'mtp' or a dict (got {speculative!r})")


def verify_greedy(drafts: list[int], target_argmax: list[int]) -> tuple[int, int]:
    """(number of drafts accepted a, the token emitted after them). target_argmax has len(drafts) + 1 entries."""
    a = 0
    while a < len(drafts) and drafts[a] == target_argmax[a]:
        a += 1
    return a, target_argmax[a]


def verify_sampled(drafts: list[int], draft_logp: torch.Tensor, target_logp: torch.Tensor,
                   bonus: int, generator: torch.Generator | None,
                   default: torch.Generator | None = None) -> tuple[int, int]:
    """Rejection sampling. draft_logp (k, V) log q_j; target_logp (k + 1, V) log p_j; bonus: a token already drawn
    from p_k (used if every draft is accepted). Returns (accepted a, emitted token)."""
    k = len(drafts)
    if k == 0:
        return 0, bonus
    g = generator if generator is not None else default
    idx = torch.arange(k, device=target_logp.device)
    d = torch.tensor(drafts, device=target_logp.device)
    p_d = target_logp[idx, d].exp()
    q_d = draft_logp[idx, d].exp()
    u = uniform(k, g, target_logp.device)
    ok = (u * q_d <= p_d).tolist()  # u < p/q, written without dividing
    for j in range(k):
        if not ok[j]:
            residual = (target_logp[j].exp() - draft_logp[j].exp()).clamp(min=0)
            total = residual.sum()
            logp = (residual / total).log() if total > 0 else target_logp[j]
            return j, int(sample_from_logprobs(logp[None], [generator], default)[0])
    return k, bonus


class MTPDrafter:
    """Keeps the MTP layer's cache filled and proposes each decoding sequence's draft tokens for the next step."""

    def __init__(self, runner: ModelRunner, num_spec: int, sampler: Sampler, max_model_len: int):
        self.runner = runner
        self.cache = runner.cache
        self.k = num_spec
        self.sampler = sampler
        self.max_model_len = max_model_len

    def num_drafts(self, s: Sequence) -> int:
        """Drafts worth proposing: none for requests with penalties (their logits depend on the drafts), and never
        more than the tokens the request may still produce minus the bonus token."""
        p = s.request.params
        if p.has_penalties:
            return 0
        left = self.max_model_len - len(s.tokens) - 1
        if p.max_tokens is not None:
            left = min(left, p.max_tokens - s.num_output - 1)
        return max(0, min(self.k, left))

    def run(self, entries: list[Scheduled], segs: list[Segment], hidden: torch.Tensor, old: dict[int, int],
            old_hidden: dict[int, torch.Tensor | None]) -> None:
        """After a main-model step: fill MTP rows [mtp_len, min(C + 1, len(tokens))) of every scheduled sequence
        (row p from the main hidden state at p − 1 and token p) and draft from the row at C."""
        mtp_segs, ids, pos, hid, who, row = [], [], [], [], [], 0
        for e, seg in zip(entries, segs):
            s = e.seq
            c_old, c_new = old[id(s)], s.num_computed
            if c_new > c_old:
                s.keep_hidden(hidden[seg.row + c_new - 1 - c_old].clone())
            s.clear_drafts()
            if s.finished:
                continue
            m_old, m_new = s.mtp_len, min(c_new + 1, len(s.tokens))
            assert m_old >= c_old, "MTP cache fell behind the main cache"
            if m_new <= m_old:
                continue
            for p in range(m_old, m_new):
                if p - 1 < c_old:
                    assert old_hidden[id(s)] is not None, "MTP row needs the previous step's hidden state"
                    hid.append(old_hidden[id(s)])
                else:
                    hid.append(hidden[seg.row + p - 1 - c_old])
            ids += s.tokens[m_old:m_new]
            pos += range(m_old, m_new)
            n = m_new - m_old
            mtp_segs.append(Segment(row, n, m_old, s.blocks, decode=n <= self.k + 1))
            who.append((s, row + n - 1, m_new == c_new + 1))
            s.advance_mtp(m_new)
            row += n
        if not mtp_segs:
            return
        dev, bs = hidden.device, self.cache.block_size
        meta = build_meta(mtp_segs, bs, dev, ctx_start=1)
        g = self.runner.mtp(0, torch.tensor(ids, device=dev), torch.stack(hid), torch.tensor(pos, device=dev), meta)
        # draft from the row at position C (it predicts C + 1) of sequences that are decoding
        drafting = [(s, r) for s, r, last in who
                    if last and len(s.tokens) == s.num_computed + 1 and self.num_drafts(s) > 0]
        if not drafting:
            return
        h = g[[r for _, r in drafting]]
        seqs = [s for s, _ in drafting]
        for depth in range(self.k):
            live = [i for i, s in enumerate(seqs) if self.num_drafts(s) > depth]
            if not live:
                break
            if len(live) < len(seqs):
                seqs, h = [seqs[i] for i in live], h[live]
            logits = self.sampler.mask_vocab(self.runner.logits(h))
            tok, logp = self.sampler.sample(logits, [s.request.params for s in seqs], [s.generator for s in seqs])
            for i, s in enumerate(seqs):
                s.add_draft(tok[i], logp[i:i + 1] if logp is not None and not s.request.params.greedy else None)
            if depth + 1 >= self.k:
                break
            # chain: the module on its own output and the draft, a provisional row overwritten next step
            p = [len(s.tokens) + depth for s in seqs]
            meta2 = build_meta([Segment(i, 1, p[i], s.blocks, decode=True) for i, s in enumerate(seqs)], bs, dev,
                               ctx_start=1)
            h = self.runner.mtp(0, torch.tensor([s.drafts[-1] for s in seqs], device=dev), h,
                                torch.tensor(p, device=dev), meta2)
