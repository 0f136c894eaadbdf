"""Named configurations: the official checkpoints' config.json values and two trainable sizes."""
from __future__ import annotations

from typing import Any

_YARN_V3 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
_YARN_V2 = {**_YARN_V3, "mscale": 0.707, "mscale_all_dim": 0.707}

# What the trainable sizes share: every feature on (q-LoRA MLA, YaRN, a dense first layer, grouped sigmoid routing
# with a shared expert, one MTP module), 2 routed experts per token; each preset below adds only its sizes.
_TRAINABLE: dict[str, Any] = dict(
    model_type="deepseek_v3", n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
    topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
    first_k_dense_replace=1, num_nextn_predict_layers=1, rms_norm_eps=1e-6, rope_theta=10000,
    tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, initializer_range=0.006)


def _yarn_x4(original: int) -> dict[str, Any]:
    """V3's YaRN settings, stretching a context of `original` positions 4x (the trainable sizes' short contexts)."""
    return {**_YARN_V3, "factor": 4, "original_max_position_embeddings": original}


PRESETS: dict[str, dict[str, Any]] = {
    # deepseek-ai/DeepSeek-V3 config.json (also R1): 671B total, 37B activated.
    "deepseek-v3": dict(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=3, moe_layer_freq=1, num_nextn_predict_layers=1, rms_norm_eps=1e-6,
        rope_theta=10000, rope_scaling=_YARN_V3, max_position_embeddings=163840, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, initializer_range=0.02, torch_dtype="bfloat16"),
    # deepseek-ai/DeepSeek-V2-Lite: 15.7B total, 2.4B activated (without the embedding).
    "deepseek-v2-lite": dict(
        model_type="deepseek_v2", vocab_size=102400, hidden_size=2048, intermediate_size=10944,
        moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
        q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
        topk_method="greedy", scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
        first_k_dense_replace=1, moe_layer_freq=1, num_nextn_predict_layers=0, rms_norm_eps=1e-6,
        rope_theta=10000, rope_scaling=_YARN_V2, max_position_embeddings=163840, tie_word_embeddings=False,
        bos_token_id=100000, eos_token_id=100001, initializer_range=0.02, torch_dtype="bfloat16"),
    # deepseek-ai/DeepSeek-V2: 236B total, 21B activated.
    "deepseek-v2": dict(
        model_type="deepseek_v2", vocab_size=102400, hidden_size=5120, intermediate_size=12288,
        moe_intermediate_size=1536, num_hidden_layers=60, num_attention_heads=128, num_key_value_heads=128,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=160, n_shared_experts=2, num_experts_per_tok=6, n_group=8, topk_group=3,
        topk_method="group_limited_greedy", scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=16.0, first_k_dense_replace=1, moe_layer_freq=1, num_nextn_predict_layers=0,
        rms_norm_eps=1e-6, rope_theta=10000, rope_scaling=_YARN_V2, max_position_embeddings=163840,
        tie_word_embeddings=False, bos_token_id=100000, eos_token_id=100001, initializer_range=0.02,
        torch_dtype="bfloat16"),
    # Trainable in seconds on a laptop CPU.
    "tiny": dict(
        _TRAINABLE, vocab_size=1024, hidden_size=128, intermediate_size=384, moe_intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, rope_scaling=_yarn_x4(256),
        max_position_embeddings=1024),
    # Tens of millions of parameters, 2 of 16 routed experts per token: benchmarks and demos.
    "small": dict(
        _TRAINABLE, vocab_size=8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
        num_hidden_layers=8, num_attention_heads=8, q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64,
        qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=16, rope_scaling=_yarn_x4(1024),
        max_position_embeddings=4096),
}
