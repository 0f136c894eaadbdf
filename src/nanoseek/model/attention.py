"""Multi-head Latent Attention (MLA), DeepSeek-V2/V3.

Einsum subscripts, as in DeepSeek's inference/model.py: b batch, s query position, t key position, h head,
d head dim, c latent (kv_lora_rank), r rope dim.

    q        = W_qb · RMSNorm(W_qa · x)            (or W_q · x without q-LoRA), split into q_nope, q_pe per head
    [c; k_pe] = W_kva · x                           c: the latent, k_pe: ONE rope key shared by all heads
    c        = RMSNorm(c)
    [k_nope; v] = W_kvb · c                        per head: k_nope = W_UK(h) c, v = W_UV(h) c
    score    = (q_nope·k_nope + rope(q_pe)·rope(k_pe)) · softmax_scale

Two paths compute the same function:
- decompressed (training, prefill): materialise per-head K and V and call scaled_dot_product_attention;
- absorbed (decoding over a latent cache): fold W_UK into the query, attend over the cached (c, k_pe) directly,
  apply W_UV after attention. Only kv_lora_rank + qk_rope_head_dim values per token are ever cached.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import RMSNorm
from .rope import apply_rope


class LatentCacheLike(Protocol):
    """What the absorbed path needs from a cache: store this step's latents, return the whole context's."""

    def update(self, layer_id: int, c: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.num_attention_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_lora_rank = cfg.kv_lora_rank
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.softmax_scale = cfg.softmax_scale
        dim, bias, H = cfg.hidden_size, cfg.attention_bias, cfg.num_attention_heads
        self._build_query(cfg)
        self.wkv_a = nn.Linear(dim, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_norm = RMSNorm(self.kv_lora_rank, cfg.rms_norm_eps)
        self.wkv_b = nn.Linear(self.kv_lora_rank, H * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.wo = nn.Linear(H * self.v_head_dim, dim, bias=bias)

    def _build_query(self, cfg: ModelConfig) -> None:
        """The query projections: wq, or with q-LoRA wq_a, q_norm, wq_b (shared with the MHA baseline)."""
        dim, H = cfg.hidden_size, cfg.num_attention_heads
        if self.q_lora_rank is None:
            self.wq = nn.Linear(dim, H * cfg.qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(dim, self.q_lora_rank, bias=cfg.attention_bias)
            self.q_norm = RMSNorm(self.q_lora_rank, cfg.rms_norm_eps)
            self.wq_b = nn.Linear(self.q_lora_rank, H * cfg.qk_head_dim, bias=False)

    def query(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_nope (b,s,h,d) and rotated q_pe (b,s,h,r)."""
        q = self.wq(x) if self.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.unflatten(-1, (self.n_heads, -1))
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        return q_nope, apply_rope(q_pe, cos[:, :, None], sin[:, :, None])

    def latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache holds per token: the normalised latent c (b,s,c) and the rotated shared key k_pe (b,s,r)."""
        c, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_norm(c), apply_rope(k_pe, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None) -> torch.Tensor:
        """x (b,s,dim); cos/sin (b,s,r/2). mask: bool, True = may attend, (b,s,t) or None for causal over x alone.
        With a cache the absorbed path attends over everything the cache returns."""
        q_nope, q_pe = self.query(x, cos, sin)
        c, k_pe = self.latent(x, cos, sin)
        if cache is not None:
            c, k_pe = cache.update(self.layer_id, c, k_pe)
            return self.wo(self.absorbed(q_nope, q_pe, c, k_pe, mask).flatten(2))
        return self.wo(self.decompressed(q_nope, q_pe, c, k_pe, mask).flatten(2))

    def decompressed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
        """Per-head K, V from the latent, then SDPA. Returns (b,s,h,d_v)."""
        kv = self.wkv_b(c).unflatten(-1, (self.n_heads, -1))
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1)
        # The fused (flash) SDPA kernels need V as wide as Q and K: zero-pad V, slice the output back.
        pad = q.shape[-1] - self.v_head_dim
        if pad > 0:
            v = F.pad(v, (0, pad))
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=None if mask is None else mask[:, None], is_causal=mask is None, scale=self.softmax_scale)
        return o.transpose(1, 2)[..., :self.v_head_dim]

    def absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """Attention over latents (b,t,c) and rope keys (b,t,r) without materialising K or V. Returns (b,s,h,d_v).
        mask None means causal with the queries aligned to the last positions of the context."""
        wkv_b = self.wkv_b.weight.view(self.n_heads, -1, self.kv_lora_rank)
        w_uk, w_uv = wkv_b[:, :self.qk_nope_head_dim], wkv_b[:, self.qk_nope_head_dim:]
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)  # W_UK absorbed into the query
        scores = (torch.einsum("bshc,btc->bsht", q_lat, c) + torch.einsum("bshr,btr->bsht", q_pe, k_pe)).float()
        scores = scores * self.softmax_scale
        if mask is None:
            s, t = scores.shape[1], scores.shape[-1]
            mask = torch.ones(s, t, dtype=torch.bool, device=scores.device).tril(t - s)[None]
        scores = scores.masked_fill(~mask[:, :, None, :], float("-inf"))
        p = scores.softmax(dim=-1).to(c.dtype)
        o_lat = torch.einsum("bsht,btc->bshc", p, c)
        return torch.einsum("bshc,hdc->bshd", o_lat, w_uv)  # W_UV applied after attention
