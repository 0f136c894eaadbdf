"""A contiguous latent KV cache: per layer, only the normalised latent c and the rotated rope key k_pe.

Bytes per token = n_layers · (kv_lora_rank + qk_rope_head_dim) · element size (70,272 for DeepSeek-V3 in bf16,
against 4,997,120 for per-head keys and values). The inference engine pages the same content in blocks; this one
is the simplest correct form, used for single-batch generation and tests.
"""
from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig


class LatentCache:
    """Implements the model's `AttentionCache`: rows [c ; k_pe] per layer, batch row and position."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, n_layers: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        n_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers if n_layers is None else n_layers
        self.kv = torch.zeros(n_layers, batch_size, max_len, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                              device=device, dtype=dtype)
        self.length = 0  # tokens already cached (the same for every sequence of the batch)
        self._pending = 0

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
        elem = torch.empty(0, dtype=dtype).element_size()
        return cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * elem

    def attend(self, attn: Any, q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Append this step's rows after the cached ones, then attend over all of them (absorbed path)."""
        s = c.shape[1]
        end = self.length + s
        if end > self.kv.shape[2]:
            raise ValueError(f"LatentCache is full: {end} tokens > max_len {self.kv.shape[2]}")
        self.kv[attn.layer_id, :, self.length:end] = torch.cat([c, k_pe], dim=-1)
        self._pending = s
        return attn.absorbed(q_nope, q_pe, self.kv[attn.layer_id, :, :end], mask)

    def advance(self) -> None:
        """Commit the tokens written by the last forward (call once per forward, after it)."""
        self.length += self._pending
        self._pending = 0
