"""Deterministic training windows over token arrays, independent of the number of processes.

Sequence g of optimizer step s is a random window whose offset comes from a generator seeded with (seed, s): every
rank draws the same global batch and keeps its own slice, so 1 process and N processes see the same data, and a
resumed run sees exactly what the uninterrupted run would have.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


class TokenWindows:
    def __init__(self, arrays: Sequence[np.ndarray], seq_len: int, name: str = "data"):
        self.arrays = [a for a in arrays if len(a) > seq_len + 1]
        self.seq_len = seq_len
        if not self.arrays:
            total = sum(len(a) for a in arrays)
            raise ValueError(f"{name}: too little data for seq_len {seq_len}: {total} tokens "
                             f"(need a shard of more than {seq_len + 1})")
        # a window starts anywhere in the concatenation of per-shard valid starts
        self.starts = np.cumsum([0] + [len(a) - seq_len - 1 for a in self.arrays])

    @property
    def num_windows(self) -> int:
        return int(self.starts[-1])

    def window(self, idx: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, idx, side="right") - 1)
        off = idx - int(self.starts[shard])
        return np.asarray(self.arrays[shard][off:off + self.seq_len + 1], dtype=np.int64)

    def _batch(self, idxs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.stack([self.window(int(i)) for i in idxs]))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def step_batch(self, seed: int, step: int, global_batch: int, start: int, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences [start, start + count) of step `step`'s global batch of `global_batch` random windows."""
        offsets = np.random.default_rng([seed, step]).integers(0, self.num_windows, size=global_batch)
        return self._batch(offsets[start:start + count])

    def eval_batches(self, n_batches: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of evenly spaced windows, the same at every evaluation."""
        total = min(n_batches * batch_size, self.num_windows)
        idxs = np.linspace(0, self.num_windows - 1, total).astype(np.int64)
        for i in range(0, total, batch_size):
            yield self._batch(idxs[i:i + batch_size])


def unigram_entropy(arrays: Sequence[np.ndarray], vocab_size: int, max_tokens: int = 20_000_000) -> float:
    """Entropy (nats/token) of the token frequencies: the loss of the best model that ignores context."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    left = max_tokens
    for a in arrays:
        part = np.asarray(a[:left])
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
        left -= len(part)
        if left <= 0:
            break
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
