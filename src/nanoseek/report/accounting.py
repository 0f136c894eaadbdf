"""The efficiency numbers that follow from a config alone (no weights): parameters, KV cache, training FLOPs.

Parameters come from nanoseek.info.count (checked against the module in tests). Two activated counts are shown,
because the seed's "37B" is DeepSeek's convention: the output head counts, the input embedding (a table lookup,
no FLOPs) does not. For DeepSeek-V3 that is 36.6B (reported as 37B, 5.5% of 671B); with the embedding it is 37.6B
(5.6%). See ../../docs/architecture.md and the reference notes.

KV cache per token, all decoder layers, `dtype_bytes` per element (bf16 = 2):
    MLA (latent, what nanoseek caches)   L · (d_c + d_R)                     d_c = kv_lora_rank, d_R = qk_rope_head_dim
    MHA of the same width                L · H · (d_qk + d_v)                d_qk = nope + rope head dim
    GQA, G KV heads, same head dims      L · G · (d_qk + d_v)                G = min(8, H)
so a 128K-token context holds 131,072 times that.

Training FLOPs per token (nanoseek.info.count): 6 per activated matrix parameter + causal attention. The dense
model of the same total size (every expert active) needs 6 per *total* matrix parameter: their ratio is the
compute saving of sparse activation.
"""
from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..info import count
from ..presets import PRESETS

CONTEXT_TOKENS = 128 * 1024
GQA_KV_HEADS = 8

# The seed's / DeepSeek-V3 README's claims, to set beside what the config gives.
PUBLISHED = {
    "deepseek-v3": {"total_params": 671e9, "active_params": 37e9, "active_fraction": 0.055,
                    "source": "DeepSeek-V3 README / technical report: 671B total, 37B activated per token"},
}


def published_name(cfg: ModelConfig) -> str | None:
    """The name of a published model whose architecture `cfg` is (same config as the preset), or None."""
    for name in PUBLISHED:
        ref = ModelConfig.from_dict(PRESETS[name])
        if cfg.replace(torch_dtype=ref.torch_dtype) == ref:
            return name
    return None


def kv_cache(cfg: ModelConfig, dtype_bytes: int = 2, context: int = CONTEXT_TOKENS,
             gqa_kv_heads: int = GQA_KV_HEADS) -> dict[str, Any]:
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    head = cfg.qk_head_dim + cfg.v_head_dim
    g = min(gqa_kv_heads, H)
    per_token = {
        "mla_latent": L * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes,
        f"gqa_{g}": L * g * head * dtype_bytes,
        "mha": L * H * head * dtype_bytes,
    }
    return {
        "dtype_bytes": dtype_bytes, "context_tokens": context, "gqa_kv_heads": g,
        "gqa_capped": g < gqa_kv_heads,
        "elements_per_token_per_layer": {k: v // (L * dtype_bytes) for k, v in per_token.items()},
        "bytes_per_token": per_token,
        "bytes_per_context": {k: v * context for k, v in per_token.items()},
        "mha_over_mla": per_token["mha"] / per_token["mla_latent"],
        "gqa_over_mla": per_token[f"gqa_{g}"] / per_token["mla_latent"],
    }


def accounting(cfg: ModelConfig, seq_len: int = 4096, dtype_bytes: int = 2, context: int = CONTEXT_TOKENS,
               gqa_kv_heads: int = GQA_KV_HEADS) -> dict[str, Any]:
    info = count(cfg, seq_len=seq_len, dtype_bytes=dtype_bytes)
    total, active = info["total_params"], info["active_params"]
    d, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    embed, norms = V * d, d * (2 * L + 1)
    attn = info["flops_per_token"] - 6 * (active - embed - norms)
    dense_flops = 6 * (total - embed - norms) + attn
    params = {
        "total": total, "active": active, "active_no_embedding": info["active_params_no_embedding"],
        "active_fraction": active / total, "active_fraction_no_embedding": info["active_params_no_embedding"] / total,
        "embedding": embed, "mtp": info["mtp_params"], "mtp_active": info["mtp_active_params"],
        "routed_experts": cfg.n_routed_experts, "experts_per_token": cfg.num_experts_per_tok,
        "shared_experts": cfg.n_shared_experts if cfg.is_moe else 0,
    }
    flops = {"per_token": info["flops_per_token"], "seq_len": seq_len, "attention_per_token": attn,
             "dense_equivalent_per_token": dense_flops, "fraction_of_dense": info["flops_per_token"] / dense_flops}
    out = {"model_type": cfg.model_type, "params": params,
           "kv_cache": kv_cache(cfg, dtype_bytes, context, gqa_kv_heads), "flops": flops}
    name = published_name(cfg)
    if name is not None:
        out["published"] = {"name": name, **PUBLISHED[name]}
    return out


def human(n: float, unit: str = "") -> str:
    """1.23B, 45.6M ... (decimal prefixes)."""
    for suffix, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def human_bytes(n: float) -> str:
    """Binary prefixes: 70,272 B -> 68.6 KiB."""
    for suffix, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n:,.0f} B"
