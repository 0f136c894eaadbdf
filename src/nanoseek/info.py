"""Model accounting from the config alone (no weights allocated): parameters, activated parameters, KV-cache bytes
and training FLOPs per token. Formulas: ../docs/architecture.md; checked against the module in tests."""
from __future__ import annotations

from typing import Any

from .config import ModelConfig


def attention_params(cfg: ModelConfig) -> int:
    d, H = cfg.hidden_size, cfg.num_attention_heads
    b = d if cfg.attention_bias else 0  # wo bias
    if cfg.q_lora_rank is None:
        q = d * H * cfg.qk_head_dim
    else:
        q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * cfg.qk_head_dim
        q += cfg.q_lora_rank if cfg.attention_bias else 0
    kv_a = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.attention_bias
    kv = kv_a + cfg.kv_lora_rank + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    return q + kv + H * cfg.v_head_dim * d + b


def moe_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, inactive routed) parameters of one MoE layer."""
    d, E, K, I = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    gate = E * d + (E if cfg.topk_method == "noaux_tc" else 0)
    shared = 3 * d * cfg.n_shared_experts * I
    return gate + shared + E * 3 * d * I, (E - K) * 3 * d * I


def block_params(cfg: ModelConfig, moe: bool) -> tuple[int, int]:
    """(total, inactive) parameters of one decoder layer (two norms, MLA, dense MLP or MoE)."""
    base = 2 * cfg.hidden_size + attention_params(cfg)
    if moe:
        total, inactive = moe_params(cfg)
        return base + total, inactive
    return base + 3 * cfg.hidden_size * cfg.intermediate_size, 0


def count(cfg: ModelConfig, seq_len: int = 4096, dtype_bytes: int = 2) -> dict[str, Any]:
    d, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    embed = V * d
    head = 0 if cfg.tie_word_embeddings else V * d
    blocks = [block_params(cfg, cfg.is_moe_layer(i)) for i in range(L)]
    total = embed + head + d + sum(t for t, _ in blocks)
    inactive = sum(i for _, i in blocks)
    active = total - inactive
    mtp_block, mtp_inactive = block_params(cfg, cfg.is_moe)
    mtp_one = 3 * d + 2 * d * d + mtp_block  # enorm, hnorm, shared_head.norm, eh_proj, one decoder layer
    mtp = cfg.num_nextn_predict_layers * mtp_one
    # Training FLOPs per token: 6 per activated matrix parameter (forward 2, backward 4; the embedding lookup
    # costs none) plus causal attention, 6 · H · (d_qk + d_v) · seq/2 per layer (QKᵀ and PV, forward + backward).
    matmul_active = active - embed - d * (2 * L + 1)
    attn_flops = 6 * L * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len // 2
    lat = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    mha = cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    return {
        "model_type": cfg.model_type,
        "total_params": total,
        "active_params": active,
        "active_params_no_embedding": active - embed,
        "active_fraction": active / total,
        "mtp_params": mtp,
        "mtp_active_params": mtp - cfg.num_nextn_predict_layers * mtp_inactive,
        "kv_cache_bytes_per_token": L * lat * dtype_bytes,
        "mha_kv_cache_bytes_per_token": L * mha * dtype_bytes,
        "kv_cache_compression": mha / lat,
        "flops_per_token": 6 * matmul_active + attn_flops,
        "flops_seq_len": seq_len,
    }


def train_flops_per_token(cfg: ModelConfig, seq_len: int, mtp_depth: int = 0, attention: str = "mla") -> int:
    """Training FLOPs per token of a whole step: count()'s main model, plus `mtp_depth` trained MTP modules
    (eh_proj, one decoder layer and the shared output head run again), plus, for the MHA baseline of the ablation
    (nanoseek.model.mha), its per-head K/V projections in place of MLA's W_kva and W_kvb."""
    d, V, H = cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads
    flops = count(cfg, seq_len=seq_len)["flops_per_token"]
    layer_attn = 6 * H * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len // 2
    if mtp_depth:
        block, inactive = block_params(cfg, cfg.is_moe)
        norms = 2 * d + (cfg.q_lora_rank or 0) + cfg.kv_lora_rank  # the block's norms are not matmuls
        matmul = 2 * d * d + (block - inactive - norms) + V * d
        flops += mtp_depth * (6 * matmul + layer_attn)
    if attention == "mha":
        mla_kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim
                                                                                       + cfg.v_head_dim)
        mha_kv = d * H * (cfg.qk_head_dim + cfg.v_head_dim)
        flops += 6 * (cfg.num_hidden_layers + mtp_depth) * (mha_kv - mla_kv)
    elif attention != "mla":
        raise ValueError(f"attention must be mla or mha, got {attention!r}")
    return flops


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_info(name: str, info: dict[str, Any]) -> str:
    rows = [
        ("model", f"{name} ({info['model_type']})"),
        ("total parameters", f"{info['total_params']:,} ({_human(info['total_params'])})"),
        ("activated per token", f"{info['active_params']:,} ({_human(info['active_params'])}, "
                                f"{100 * info['active_fraction']:.1f}%)"),
        ("activated w/o input embedding", f"{info['active_params_no_embedding']:,} "
                                          f"({_human(info['active_params_no_embedding'])})"),
        ("MTP parameters", f"{info['mtp_params']:,} ({_human(info['mtp_params'])})"),
        ("KV cache / token (latent, bf16)", f"{info['kv_cache_bytes_per_token']:,} B"),
        ("KV cache / token (MHA, bf16)", f"{info['mha_kv_cache_bytes_per_token']:,} B "
                                         f"({info['kv_cache_compression']:.1f}x larger)"),
        ("training FLOPs / token", f"{info['flops_per_token']:.4g} (seq {info['flops_seq_len']})"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
