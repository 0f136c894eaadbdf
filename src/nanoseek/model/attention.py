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

`Attention`, MLA's base, holds the query path and SDPA that the MHA baseline (model/mha.py) shares with it.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import RMSNorm
from .rope import apply_rope


class AttentionCache(Protocol):
    """Attention over a cache of earlier tokens: the one protocol the model calls. MLA computes this step's queries
    and latents; the cache stores the latents (c, k_pe) where it keeps them and attends over its context with
    MLA's absorbed path (`MLA.absorbed`). Two implementations: `LatentCache` (contiguous, model/cache.py) and the
    inference engine's paged cache (`nanoseek.infer.runner.PagedAttention`), which packs many sequences into one
    row and gives each its own context."""

    def attend(self, attn: "MLA", q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """q_nope (b,s,h,d), q_pe (b,s,h,r), this step's c (b,s,c) and k_pe (b,s,r) -> (b,s,h,d_v)."""
        ...


class Attention(nn.Module):
    """What MLA and the MHA baseline (model/mha.py) share: the head dims, the query path
        q = W_qb · RMSNorm(W_qa · x)   (or W_q · x without q-LoRA),   [q_nope; q_pe] per head,  q_pe = rope(q_pe)
    and SDPA over per-head K and V. Subclasses add their KV projections, then wo."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.num_attention_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.softmax_scale = cfg.softmax_scale
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

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q·kᵀ · softmax_scale) · v over q, k (b,s,h,d_qk), v (b,s,h,d_v); mask (b,s,t), True = may attend,
        None = causal. Returns (b,s,h,d_v)."""
        # The fused (flash) SDPA kernels need V as wide as Q and K: zero-pad V, slice the output back.
        pad = q.shape[-1] - self.v_head_dim
        if pad > 0:
            v = F.pad(v, (0, pad))
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=None if mask is None else mask[:, None], is_causal=mask is None, scale=self.softmax_scale)
        return o.transpose(1, 2)[..., :self.v_head_dim]


class MLA(Attention):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        self.kv_lora_rank = cfg.kv_lora_rank
        dim, bias, H = cfg.hidden_size, cfg.attention_bias, cfg.num_attention_heads
        self.wkv_a = nn.Linear(dim, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_norm = RMSNorm(self.kv_lora_rank, cfg.rms_norm_eps)
        self.wkv_b = nn.Linear(self.kv_lora_rank, H * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.wo = nn.Linear(H * self.v_head_dim, dim, bias=bias)

    def latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache holds per token: the normalised latent c (b,s,c) and the rotated shared key k_pe (b,s,r)."""
        c, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_norm(c), apply_rope(k_pe, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        """x (b,s,dim); cos/sin (b,s,r/2). mask: bool, True = may attend, (b,s,t) or None for causal over x alone.
        With a cache, the cache attends (over its context, on the absorbed path)."""
        q_nope, q_pe = self.query(x, cos, sin)
        c, k_pe = self.latent(x, cos, sin)
        if cache is not None:
            o = cache.attend(self, q_nope, q_pe, c, k_pe, mask)
        else:
            o = self.decompressed(q_nope, q_pe, c, k_pe, mask)
        return self.wo(o.flatten(2))

    def decompressed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
        """Per-head K, V from the latent, then SDPA. Returns (b,s,h,d_v)."""
        kv = self.wkv_b(c).unflatten(-1, (self.n_heads, -1))
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)], dim=-1)
        return self.sdpa(q, k, v, mask)

    def absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """Attention over cached rows kv = [c ; k_pe] (b,t,c+r) without materialising K or V:
            q_lat = q_nope · W_UK (per head),   score = [q_lat ; q_pe] · [c ; k_pe] · softmax_scale   (one matmul),
            o = W_UV · (softmax(score) · c).
        mask (b,s,t), True = may attend; None means causal with the queries at the last positions of the context.
        Returns (b,s,h,d_v). Batched matmuls over views of W_kvb: no weight copies, so weights updated in place
        (RL training between rollouts) are always the ones used."""
        B, S, H, dn = q_nope.shape
        C, T = self.kv_lora_rank, kv.shape[1]
        kv = kv.to(q_nope.dtype)
        w = self.wkv_b.weight.view(H, -1, C)  # per head: d_n rows of W_UK, then d_v rows of W_UV
        q_lat = torch.bmm(q_nope.reshape(B * S, H, dn).transpose(0, 1), w[:, :dn])  # (h, b·s, c)
        q = torch.cat([q_lat.transpose(0, 1), q_pe.reshape(B * S, H, -1)], dim=-1).view(B, S * H, -1)
        scores = torch.bmm(q, kv.transpose(1, 2)).float().view(B, S, H, T) * self.softmax_scale
        if mask is None:
            mask = torch.ones(S, T, dtype=torch.bool, device=kv.device).tril(T - S)[None]
        p = scores.masked_fill(~mask[:, :, None], float("-inf")).softmax(dim=-1).to(kv.dtype)
        o_lat = torch.bmm(p.view(B, S * H, T), kv[..., :C])  # (b, s·h, c)
        out = torch.bmm(o_lat.view(B * S, H, C).transpose(0, 1), w[:, dn:].transpose(1, 2))  # (h, b·s, d_v)
        return out.transpose(0, 1).reshape(B, S, H, -1)
