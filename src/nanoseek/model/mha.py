"""Standard multi-head attention with the same heads as MLA: the baseline of the MLA-vs-MHA ablation.

The query path is MLA's (q-LoRA or a full projection, RoPE on the rope part), so the only difference is the KV path:

    MLA:  [c; k_pe] = W_kva · x,  [k_nope; v] = W_kvb · RMSNorm(c)   cache per token and layer: c + r values
    MHA:  [k_nope; k_pe] = W_k · x (per head),  v = W_v · x          cache per token and layer: H · (d_qk + d_v)

with RoPE on each head's own k_pe; the query path and SDPA are MLA's own (their shared base, `Attention` in
model/attention.py). Swapped into a built Transformer by `use_mha` (the model code is unchanged).
It is a training baseline only: it has no absorbed path, no cache, and no Hugging Face checkpoint format.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import MLA, Attention
from .layers import init_parameters
from .rope import apply_rope


class MHA(Attention):
    """MLA's query path and SDPA (the `Attention` base), with per-head K and V projected from x."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        dim, bias, H = cfg.hidden_size, cfg.attention_bias, cfg.num_attention_heads
        self.wk = nn.Linear(dim, H * cfg.qk_head_dim, bias=False)
        self.wv = nn.Linear(dim, H * self.v_head_dim, bias=False)
        self.wo = nn.Linear(H * self.v_head_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: object | None = None) -> torch.Tensor:
        if cache is not None:
            raise NotImplementedError("the MHA baseline is for training ablations: it has no KV cache")
        q_nope, q_pe = self.query(x, cos, sin)
        k = self.wk(x).unflatten(-1, (self.n_heads, -1))
        k_nope, k_pe = k.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        k = torch.cat([k_nope, apply_rope(k_pe, cos[:, :, None], sin[:, :, None])], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        v = self.wv(x).unflatten(-1, (self.n_heads, -1))
        return self.wo(self.sdpa(q, k, v, mask).flatten(2))


def mha_kv_params(cfg: ModelConfig) -> int:
    """Parameters of MHA's K and V projections (its query and output projections are MLA's)."""
    return cfg.hidden_size * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)


def use_mha(model: nn.Module, std: float | None = None) -> nn.Module:
    """Replace every MLA of a Transformer (main layers and MTP blocks) by a freshly initialised MHA, in place."""
    cfg = model.config
    std = cfg.initializer_range if std is None else std
    for name, module in list(model.named_modules()):
        if isinstance(module, MLA):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            mha = MHA(cfg, module.layer_id).to(device=module.wo.weight.device, dtype=module.wo.weight.dtype)
            init_parameters(mha, std)
            parent.attn = mha
    return model
