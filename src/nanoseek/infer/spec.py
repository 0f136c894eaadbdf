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

import torch

from .sampling import sample_from_logprobs, uniform


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
