"""Paged latent KV cache: fixed-size blocks of latent rows from one pool, a free list and per-sequence block tables.

Per token and cached layer the pool holds one row [c ; k_pe] of kv_lora_rank + qk_rope_head_dim values: the
normalised latent and the rotated shared rope key (vLLM's MLA layout, (blocks, block_size, 576) for V3). So
    bytes per token = n_cached_layers · (kv_lora_rank + qk_rope_head_dim) · element size
where n_cached_layers = num_hidden_layers, plus the MTP layers when speculative decoding caches them.
Token at position p of a sequence lives in slot  block_table[p // block_size] · block_size + p % block_size.
Blocks are reference-counted so the n samples of one prompt share its full blocks (copy-on-write: the last,
partial block is copied at the fork, full blocks are never written again), and so are prompts that share a
prefix (prefix caching by block hashing, see BlockPool).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Any

import torch

from ..config import ModelConfig


def bytes_per_token(cfg: ModelConfig, n_layers: int, dtype: torch.dtype) -> int:
    return n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * torch.empty(0, dtype=dtype).element_size()


class BlockPool:
    """Block ids 0..num_blocks-1 with reference counts and a free list in LRU order.

    Prefix caching: a full block whose rows are computed can be registered under the hash of the tokens up to its
    end (`block_hash`); while registered, another sequence with the same prefix shares it instead of recomputing.
    A released block keeps its registration until it is handed out again; blocks are handed out least recently
    released first, so cached prefixes live as long as the pool allows."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"BlockPool: need at least one block (got {num_blocks})")
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}
        self.extra: dict[int, Any] = {}  # data the engine keeps with a cached block (MTP: the last hidden state)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"BlockPool: asked for {n} blocks, {len(self.free)} free")
        out = []
        for _ in range(n):
            b, _ = self.free.popitem(last=False)
            self._forget(b)
            self.ref[b] = 1
            out.append(b)
        return out

    def share(self, blocks: list[int]) -> None:
        for b in blocks:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1

    def is_free(self, block: int) -> bool:
        """No sequence holds it (it may still be in the prefix cache)."""
        return self.ref[block] == 0

    def release(self, blocks: list[int]) -> None:
        # last blocks first, so that a sequence's tail is evicted before its prefix
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
            elif self.ref[b] < 0:
                raise RuntimeError(f"BlockPool: block {b} released more often than allocated")

    # ------------------------------------------------------------------ prefix caching
    def register(self, block: int, h: bytes, extra: Any = None) -> None:
        if h in self.by_hash or block in self.hash_of:
            return
        self.by_hash[h] = block
        self.hash_of[block] = h
        if extra is not None:
            self.extra[block] = extra

    def lookup(self, h: bytes) -> int | None:
        return self.by_hash.get(h)

    def extra_of(self, block: int) -> Any:
        """What was registered with a cached block (MTP: its last hidden state), or None."""
        return self.extra.get(block)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (blocks held by sequences stay theirs)."""
        self.by_hash.clear()
        self.hash_of.clear()
        self.extra.clear()

    def _forget(self, block: int) -> None:
        h = self.hash_of.pop(block, None)
        if h is not None:
            del self.by_hash[h]
        self.extra.pop(block, None)


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """Hash of a block's tokens chained to its predecessor's: equal hashes mean equal prefixes."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class PagedLatentCache:
    """The pool tensor `kv` (n_layers, num_blocks · block_size, kv_lora_rank + qk_rope_head_dim) and its blocks.

    Layer index i < num_hidden_layers is the main model's layer i; num_hidden_layers + k is MTP module k."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int = 16, n_layers: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1 (got {block_size})")
        self.cfg = cfg
        self.block_size = block_size
        self.n_layers = cfg.num_hidden_layers if n_layers is None else n_layers
        self.c_dim = cfg.kv_lora_rank
        self.dtype = dtype
        self.pool = BlockPool(num_blocks)
        self.kv = torch.zeros(self.n_layers, num_blocks * block_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                              dtype=dtype, device=device)

    @classmethod
    def from_budget(cls, cfg: ModelConfig, budget_bytes: int, block_size: int = 16, n_layers: int | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "PagedLatentCache":
        n = cfg.num_hidden_layers if n_layers is None else n_layers
        per_block = block_size * bytes_per_token(cfg, n, dtype)
        num_blocks = budget_bytes // per_block
        if num_blocks < 1:
            raise ValueError(f"cache_budget: {budget_bytes} bytes is less than one block of {block_size} tokens "
                             f"({per_block} bytes)")
        return cls(cfg, num_blocks, block_size, n, dtype, device)

    # ------------------------------------------------------------------ accounting
    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self.cfg, self.n_layers, self.dtype)

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # ------------------------------------------------------------------ data movement
    def write(self, layer: int, slots: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor) -> None:
        """Store rows [c ; k_pe] (n, C), (n, R) at flat slots (n,)."""
        self.kv[layer].index_copy_(0, slots, torch.cat([c, k_pe], dim=-1).to(self.dtype))

    def gather_rows(self, layer: int, table: torch.Tensor) -> torch.Tensor:
        """Whole blocks, table (B, nb) -> rows [c ; k_pe] (B, nb · block_size, C + R): positions
        0 .. nb · block_size − 1 of each sequence (past its length: whatever the block holds; mask it).
        One index_select of contiguous blocks: much faster than gathering token rows."""
        B, nb = table.shape
        pool = self.kv[layer].view(self.num_blocks, self.block_size, -1)
        return pool.index_select(0, table.reshape(-1)).view(B, nb * self.block_size, -1)

    def gather_blocks(self, layer: int, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gather_rows split into c (B, T, C) and k_pe (B, T, R)."""
        rows = self.gather_rows(layer, table)
        return rows[..., :self.c_dim], rows[..., self.c_dim:]

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows at slots (any shape S) -> c (S, C), k_pe (S, R) as views of one gathered tensor."""
        rows = self.kv[layer][slots]
        return rows[..., :self.c_dim], rows[..., self.c_dim:]

    def copy_block(self, src: int, dst: int) -> None:
        bs = self.block_size
        self.kv[:, dst * bs:(dst + 1) * bs] = self.kv[:, src * bs:(src + 1) * bs]
