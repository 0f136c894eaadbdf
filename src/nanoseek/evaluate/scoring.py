"""Log-likelihood of continuations under a model: the core of perplexity and of lm-eval's loglikelihood requests.

A request is (context ids, continuation ids). The model reads (context + continuation)[:-1], truncated on the left
to `max_length` tokens, and we sum log p(continuation token | everything before it) over the continuation:

    log p(cont | ctx) = Σ_j log softmax(head(h_{t_j − 1}))[cont_j]

`is_greedy` says whether every continuation token is the argmax (lm-eval's second return value). Rows of a batch
are right-padded: attention is causal and routing is per token, so padding after a row's last real token cannot
change its scores. The output head runs only at the positions that are scored, so the (batch, seq, vocab) logits
of a 129K vocabulary are never materialised.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Request = tuple[Sequence[int], Sequence[int]]


def rolling_requests(ids: Sequence[int], prefix_id: int, max_length: int, stride: int | None = None
                     ) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows that predict every token of `ids` exactly once, conditioned on `prefix_id`
    (BOS, or EOS for tokenizers without one) and on up to `max_length` earlier tokens.

    Targets come in chunks of `stride` tokens (default `max_length`: disjoint windows, as lm-eval's rolling
    loglikelihood); each chunk sees the `max_length − stride` or more tokens before it, so a smaller stride gives
    every prediction more context at proportionally more compute."""
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride: must lie in [1, max_length={max_length}] (got {stride})")
    seq = [prefix_id, *ids]
    out, a = [], 1
    while a < len(seq):
        b = min(a + stride, len(seq))
        lo = max(0, b - 1 - max_length)
        out.append((seq[lo:a], seq[a:b]))
        a = b
    return out


@torch.no_grad()
def continuation_logprobs(model: nn.Module, requests: Sequence[Request], *, max_length: int, batch_size: int = 8,
                          progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, is_greedy) for each request, in order. `progress(n)` is called as requests end."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1 (got {batch_size})")
    device = next(model.parameters()).device
    rows: list[tuple[list[int], int]] = []  # (model input, number of scored positions at its end)
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i}: empty continuation (nothing to score)")
        if not ctx:
            raise ValueError(f"request {i}: empty context (condition on BOS/EOS at least)")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length {max_length}")
        whole = [*ctx, *cont][-(max_length + 1):]
        rows.append((whole, len(cont)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(rows[i][0]) - 1 for i in idx)
            x = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                inp = rows[i][0][:-1]
                x[r, :len(inp)] = torch.tensor(inp)
            hidden = model.forward_hidden(x.to(device))
            # the positions whose next-token distributions are scored, flattened over the batch
            pos_r, pos_t, targets, owner = [], [], [], []
            for r, i in enumerate(idx):
                whole, n = rows[i]
                end = len(whole) - 1
                pos_r += [r] * n
                pos_t += range(end - n, end)
                targets += whole[-n:]
                owner += [r] * n
            logits = model.head(hidden[torch.tensor(pos_r), torch.tensor(pos_t)]).float()
            logp = F.log_softmax(logits, dim=-1)
            tgt = torch.tensor(targets, device=logp.device)
            picked = logp.gather(1, tgt[:, None])[:, 0].cpu()
            greedy = (logits.argmax(-1) == tgt).cpu()
            own = torch.tensor(owner)
            for r, i in enumerate(idx):
                m = own == r
                results[i] = (float(picked[m].double().sum()), bool(greedy[m].all()))
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return results
