"""Batches from prepared shards, memory-mapped (nothing is read until a batch needs it).

Pretraining: `TokenDataset.sample_batches` draws random fixed-length windows. The batch of step s depends only on
(seed, s), so a run resumed at step s sees exactly the batches it would have seen, and `rank`/`world_size` slice
one global batch so that N processes together see the batch one process would.

SFT: whole conversations are packed into rows of `seq_len + 1` tokens (`pack_sft`); labels are -100 except on
assistant tokens (which also masks the boundaries between packed conversations and the padding).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .corpora import DataError
from .encode import Example
from .prepare import SPLITS, read_manifest

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def _labels(window: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """labels[t] = window[t + 1], or -100 where that next token is not a training target."""
    labels = window[1:].astype(np.int64)
    if mask is not None:
        labels[mask[1:] == 0] = IGNORE_INDEX
    return labels


def _stack(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack([r[0] for r in rows])), torch.from_numpy(np.stack([r[1] for r in rows]))


class TokenDataset:
    """One split of a prepared directory. Shards are opened as read-only memory maps on first use."""

    def __init__(self, path: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest["complete"]:
            raise DataError(f"{self.path}: preparation did not finish; rerun `nanoseek data prepare` to resume it")
        self.split = split
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.shards: list[dict[str, Any]] = self.manifest["splits"][split]["shards"]
        if not self.shards:
            raise DataError(f"{self.path}: the {split} split is empty (val_fraction="
                            f"{self.manifest['val_fraction']})")
        self.shard_tokens = np.array([s["tokens"] for s in self.shards], dtype=np.int64)
        self.doc_starts = np.cumsum([0] + [s["documents"] for s in self.shards])  # global document index
        self._maps: dict[tuple[int, str], np.memmap] = {}

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.path)!r}, split={self.split!r}: {self.num_tokens:,} tokens, "
                f"{self.num_documents:,} documents, {len(self.shards)} shards)")

    @property
    def num_tokens(self) -> int:
        return int(self.shard_tokens.sum())

    @property
    def num_documents(self) -> int:
        return int(self.doc_starts[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def _map(self, i: int, kind: str) -> np.memmap | None:
        """kind: '' (tokens), 'idx' (document offsets) or 'mask'; None for a missing mask (all targets)."""
        if (i, kind) not in self._maps:
            name = self.shards[i]["name"] + (f".{kind}.bin" if kind else ".bin")
            if name not in self.shards[i]["files"]:
                return None
            dtype = {"": self.dtype, "idx": np.dtype("<u8"), "mask": np.dtype(np.uint8)}[kind]
            self._maps[i, kind] = np.memmap(self.path / name, dtype=dtype, mode="r")
        return self._maps[i, kind]

    def tokens(self, shard: int) -> np.memmap:
        return self._map(shard, "")

    # ------------------------------------------------------------------------------------------- pretraining
    def window(self, shard: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of `length` tokens from `start`, as int64 arrays."""
        w = np.asarray(self.tokens(shard)[start: start + length + 1])
        mask = self._map(shard, "mask")
        return w[:-1].astype(np.int64), _labels(w, None if mask is None else mask[start: start + length + 1])

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows [rank*batch_size, (rank+1)*batch_size) of step `step`'s global batch of random windows."""
        starts = np.maximum(self.shard_tokens - seq_len, 0)  # valid window starts per shard: n - (seq_len+1) + 1
        total = int(starts.sum())
        if total == 0:
            raise DataError(f"{self.path}: no {self.split} shard holds {seq_len + 1} tokens (seq_len + 1); "
                            f"largest has {int(self.shard_tokens.max())}; lower seq_len or add data")
        rng = np.random.default_rng([seed, step])
        picks = rng.integers(0, total, size=batch_size * world_size)[rank * batch_size: (rank + 1) * batch_size]
        bounds = np.cumsum(starts)
        shard = np.searchsorted(bounds, picks, side="right")
        offset = picks - (bounds[shard] - starts[shard])
        rows = [self.window(int(s), int(o), seq_len) for s, o in zip(shard, offset)]
        return _stack(rows)

    def sample_batches(self, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0, rank: int = 0,
                       world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (input_ids, labels) int64 tensors of shape (batch_size, seq_len), from step `start_step` on."""
        step = start_step
        while True:
            yield self.batch(step, batch_size, seq_len, seed, rank, world_size)
            step += 1

    def sequential_batches(self, batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every token once, in order, as non-overlapping windows (for an exact validation loss); the last batch
        may be smaller, and each shard's tail shorter than a window is left out."""
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        for i, n in enumerate(self.shard_tokens):
            for start in range(0, int(n) - seq_len, seq_len):
                rows.append(self.window(i, start, seq_len))
                if len(rows) == batch_size:
                    yield _stack(rows)
                    rows = []
        if rows:
            yield _stack(rows)

    # ---------------------------------------------------------------------------------------------------- SFT
    def document(self, index: int) -> Example:
        """Document `index` of the split (global over shards) with its loss mask (None: all targets)."""
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} out of range ({self.num_documents} documents)")
        shard = int(np.searchsorted(self.doc_starts, index, side="right")) - 1
        local = index - int(self.doc_starts[shard])
        idx = self._map(shard, "idx")
        a, b = int(idx[local]), int(idx[local + 1])
        mask = self._map(shard, "mask")
        return Example(np.asarray(self.tokens(shard)[a:b]).astype(np.int64).tolist(),
                       None if mask is None else np.asarray(mask[a:b]).tolist())

    def sft_batches(self, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0,
                    pad_token_id: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless packed SFT batches: each epoch shuffles the documents (by seed and epoch), packs them in that
        order into rows (`pack_sft`), and yields `batch_size` rows at a time; a partial last batch of an epoch is
        dropped. Deterministic: starting at `start_step` yields what the uninterrupted run yields from there."""
        pad = self.manifest["tokenizer"]["eos_token_id"] if pad_token_id is None else pad_token_id
        step, epoch = 0, 0
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(self.num_documents)
            rows = iter_packed((self.document(int(i)) for i in order), seq_len, pad)
            produced = False
            while True:
                chunk = [r for _, r in zip(range(batch_size), rows)]
                if len(chunk) < batch_size:
                    break
                produced = True
                if step >= start_step:
                    yield _stack(chunk)
                step += 1
            if not produced:
                raise DataError(f"{self.path}: the {self.split} split packs into fewer than {batch_size} rows of "
                                f"{seq_len} tokens; lower batch_size or seq_len")
            epoch += 1


# ---------------------------------------------------------------------------------------------------- packing
def _as_example(ex: Example | Sequence[Any] | dict[str, Any]) -> Example:
    if isinstance(ex, Example):
        return ex
    if isinstance(ex, dict):
        return Example(list(ex["input_ids"]), ex.get("loss_mask"))
    ids, mask = ex
    return Example(list(ids), None if mask is None else list(mask))


def iter_packed(examples: Iterable[Example | Sequence[Any] | dict[str, Any]], seq_len: int, pad_token_id: int = 0
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Greedy in-order packing: conversations are appended to a row of seq_len + 1 tokens until the next one does
    not fit; the row is then padded and a new one starts. A conversation longer than a row is cut to it."""
    width = seq_len + 1
    ids: list[int] = []
    mask: list[int] = []

    def row() -> tuple[np.ndarray, np.ndarray]:
        w = np.full(width, pad_token_id, dtype=np.int64)
        m = np.zeros(width, dtype=np.int64)
        w[: len(ids)], m[: len(mask)] = ids, mask
        return w[:-1].copy(), _labels(w, m)

    for ex in map(_as_example, examples):
        ex_mask = ex.loss_mask if ex.loss_mask is not None else [1] * len(ex.input_ids)
        if ids and len(ids) + len(ex.input_ids) > width:
            yield row()
            ids, mask = [], []
        ids += ex.input_ids[:width]
        mask += ex_mask[:width]
    if ids:
        yield row()


def pack_sft(examples: Iterable[Example | Sequence[Any] | dict[str, Any]], seq_len: int, pad_token_id: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack tokenized conversations (`Example`s, `(input_ids, loss_mask)` pairs or dicts with those keys) into
    (input_ids, labels) int64 tensors of shape (rows, seq_len). labels[r, t] is the token after input_ids[r, t]
    when that token is an assistant token (loss_mask 1), else -100 (prompts, padding, the next conversation's
    start)."""
    rows = list(iter_packed(examples, seq_len, pad_token_id))
    if not rows:
        return torch.empty(0, seq_len, dtype=torch.long), torch.empty(0, seq_len, dtype=torch.long)
    return _stack(rows)
