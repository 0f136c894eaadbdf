"""Parity with transformers (the numerical oracle), both ways, in fp32.

transformers -> nanoseek: random tiny DeepseekV3/V2 models saved by transformers' save_pretrained load with
nanoseek.load_pretrained and give the same logits (decompressed and absorbed attention paths).
nanoseek -> transformers: a random nanoseek model saved by nanoseek.save_pretrained loads in
AutoModelForCausalLM.from_pretrained with no missing key and gives the same logits; its MTP module gives the
same logits as transformers' MtpModel.

Configs stay where both implementations define the same function: YaRN with factor = max_position_embeddings /
original_max_position_embeddings and mscale == mscale_all_dim (transformers scales cos/sin by their ratio, the
official code does not); V2 with norm_topk_prob false (transformers' V2 router ignores the field).
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (AutoModelForCausalLM, DeepseekV2Config, DeepseekV2ForCausalLM,  # noqa: E402
                          DeepseekV3Config, DeepseekV3ForCausalLM)

from nanoseek import LatentCache, ModelConfig, Transformer, load_pretrained, save_pretrained  # noqa: E402
from conftest import mtp_logits  # noqa: E402

SHAPES = dict(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
              kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, initializer_range=0.1)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}

# name -> (transformers config class, its arguments)
HF_CONFIGS = {
    # V3 gate with 4 groups (top-2-sum group score), YaRN, a dense first layer, no q-LoRA
    "v3-yarn-groups": (DeepseekV3Config, dict(
        num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=None, n_routed_experts=16, n_group=4,
        topk_group=2, num_experts_per_tok=4, n_shared_experts=1, routed_scaling_factor=2.5,
        max_position_embeddings=256, rope_parameters={**YARN, "rope_theta": 10000.0})),
    # q-LoRA, two dense layers, plain RoPE, no renormalisation of the top-k weights, 2 shared experts
    "v3-qlora-dense2": (DeepseekV3Config, dict(
        num_hidden_layers=3, first_k_dense_replace=2, q_lora_rank=48, n_routed_experts=8, n_group=2, topk_group=1,
        num_experts_per_tok=3, n_shared_experts=2, norm_topk_prob=False, routed_scaling_factor=1.5,
        max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    # V2-Lite style: softmax greedy, no q-LoRA, YaRN with the V2 mscale 0.707
    "v2-greedy": (DeepseekV2Config, dict(
        num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=None, n_routed_experts=8, num_experts_per_tok=3,
        n_shared_experts=2, topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
        max_position_embeddings=256,
        rope_parameters={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707, "rope_theta": 10000.0})),
    # V2-236B style: softmax group-limited greedy (group score = max), q-LoRA; top_k > topk_group, or the group
    # limit could never bind
    "v2-group-limited": (DeepseekV2Config, dict(
        num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=32, n_routed_experts=16, n_group=4, topk_group=2,
        num_experts_per_tok=4, n_shared_experts=1, topk_method="group_limited_greedy", norm_topk_prob=False,
        routed_scaling_factor=16.0, max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def randomise_hf(model: torch.nn.Module, seed: int) -> None:
    """Norm weights away from 1 and a non-zero routing bias, so a swapped or ignored tensor shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.2 * torch.randn(b.shape, generator=g))


def hf_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    cls, kw = HF_CONFIGS[name]
    cfg = cls(**{**SHAPES, **kw, **overrides})
    torch.manual_seed(seed)
    model = (DeepseekV3ForCausalLM if cls is DeepseekV3Config else DeepseekV2ForCausalLM)(cfg).float().eval()
    randomise_hf(model, seed)
    return model


def ids(batch: int = 2, seq: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SHAPES["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- transformers -> us
@pytest.mark.parametrize("name", list(HF_CONFIGS))
@torch.no_grad()
def test_transformers_checkpoint_loads_with_equal_logits(name, tmp_path):
    hf = hf_model(name)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path, dtype=torch.float32)
    assert model.head.weight.dtype == torch.float32 and len(model.mtp) == 0  # transformers saves no MTP weights
    x = ids()
    ref = hf(x).logits
    assert rel_err(model(x), ref) < 1e-4
    # the absorbed path over a latent cache computes the same function
    cache = LatentCache(model.config, x.shape[0], x.shape[1])
    assert rel_err(model(x, cache=cache), ref) < 1e-4
    # positions far from 0 (the YaRN-blended frequencies at large angles)
    pos = torch.arange(150, 150 + x.shape[1])[None].expand(x.shape)
    assert rel_err(model(x, positions=pos), hf(x, position_ids=pos).logits) < 1e-4


@torch.no_grad()
def test_routing_bias_and_fused_expert_names(tmp_path):
    """transformers' save_pretrained(save_original_format=False) writes the in-memory fused experts
    (mlp.experts.gate_up_proj (E, 2I, d), mlp.experts.down_proj (E, d, I)); they load too. The non-zero routing
    bias is loaded in fp32 and changes the routing (so the parity above depends on it)."""
    hf = hf_model("v3-yarn-groups", seed=3)
    hf.save_pretrained(tmp_path, save_original_format=False)
    assert "model.layers.1.mlp.experts.gate_up_proj" in _tensor_names(tmp_path)
    model = load_pretrained(tmp_path)
    x = ids(seed=4)
    ref = hf(x).logits
    assert rel_err(model(x), ref) < 1e-4
    bias = model.layers[1].ffn.gate.bias
    assert bias.dtype == torch.float32
    torch.testing.assert_close(bias, hf.model.layers[1].mlp.gate.e_score_correction_bias, rtol=0, atol=0)
    for layer in model.layers[1:]:
        layer.ffn.gate.bias.zero_()
    assert rel_err(model(x), ref) > 1e-3


@torch.no_grad()
def test_top1_routing_renormalises(tmp_path):
    """With num_experts_per_tok=1 and norm_topk_prob, the single routing weight is renormalised to 1 (times
    routed_scaling_factor), as in the official code (always for sigmoid), transformers and vLLM."""
    hf = hf_model("v3-yarn-groups", seed=9, num_experts_per_tok=1)
    hf.save_pretrained(tmp_path)
    x = ids(seed=9)
    assert rel_err(load_pretrained(tmp_path)(x), hf(x).logits) < 1e-4


# ---------------------------------------------------------------------------------------------- RoPE pair layout
@torch.no_grad()
def test_rope_pair_layout(tmp_path):
    """The released weights rotate interleaved pairs (2j, 2j+1); transformers' rope_interleave=false checkpoints
    rotate (j, j + r/2) and load with a row permutation. Reading interleaved weights as rotate-half (no or the
    wrong permutation) must break the logits, so this test would fail with a plain rotate_half RoPE."""
    x = ids(seed=5)
    hf = hf_model("v3-yarn-groups", seed=5, rope_interleave=False)
    hf.save_pretrained(tmp_path / "half")
    assert rel_err(load_pretrained(tmp_path / "half")(x), hf(x).logits) < 1e-4

    hf = hf_model("v3-yarn-groups", seed=5)  # rope_interleave=True: the official layout, no permutation
    hf.save_pretrained(tmp_path / "inter")
    ref = hf(x).logits
    assert rel_err(load_pretrained(tmp_path / "inter")(x), ref) < 1e-4
    cfg_file = tmp_path / "inter" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "rope_interleave": False}))
    assert rel_err(load_pretrained(tmp_path / "inter")(x), ref) > 1e-2


# ---------------------------------------------------------------------------------------------- us -> transformers
NS_CONFIGS = {
    "v3-yarn-mtp": dict(model_type="deepseek_v3", num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=None,
                        n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, n_shared_experts=1,
                        topk_method="noaux_tc", scoring_func="sigmoid", num_nextn_predict_layers=1,
                        max_position_embeddings=256, rope_scaling={"type": "yarn", **YARN}),
    "v3-qlora": dict(model_type="deepseek_v3", num_hidden_layers=3, first_k_dense_replace=2, q_lora_rank=40,
                     n_routed_experts=8, n_group=2, topk_group=2, num_experts_per_tok=2, n_shared_experts=1,
                     num_nextn_predict_layers=0, rope_theta=5000.0, max_position_embeddings=128),
    "v2-group-limited": dict(model_type="deepseek_v2", num_hidden_layers=2, first_k_dense_replace=1,
                             q_lora_rank=None, n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
                             n_shared_experts=2, topk_method="group_limited_greedy", scoring_func="softmax",
                             norm_topk_prob=False, routed_scaling_factor=1.0, num_nextn_predict_layers=0,
                             max_position_embeddings=256,
                             rope_scaling={"type": "yarn", **YARN, "mscale": 0.707, "mscale_all_dim": 0.707}),
}


@torch.no_grad()
def ns_model(name: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**SHAPES, **NS_CONFIGS[name]})).eval()
    for pname, p in model.named_parameters():
        if "norm" in pname:
            p.copy_(1 + 0.3 * torch.randn_like(p))
    for bname, b in model.named_buffers():
        if bname.endswith("gate.bias"):
            b.copy_(0.2 * torch.randn_like(b))
    return model


def load_hf(path, n_layers: int):
    hf, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # transformers skips the MTP layer only at index 61 (DeepSeek-V3's); a tiny model's MTP layer is reported
    assert all(k.startswith(f"model.layers.{n_layers}.") for k in info["unexpected_keys"])
    return hf.eval()


@pytest.mark.parametrize("name", list(NS_CONFIGS))
@torch.no_grad()
def test_saved_checkpoint_loads_in_transformers_with_equal_logits(name, tmp_path):
    model = ns_model(name)
    save_pretrained(model, tmp_path)
    hf = load_hf(tmp_path, model.config.num_hidden_layers)
    x = ids(seed=6)
    assert rel_err(hf(x).logits, model(x)) < 1e-4


@torch.no_grad()
def test_mtp_logits_equal_transformers_mtp_model(tmp_path):
    from transformers.modeling_layers import MtpModel
    model = ns_model("v3-yarn-mtp", seed=7)
    save_pretrained(model, tmp_path, max_shard_size="40KB")  # sharded, with the index
    assert (tmp_path / "model.safetensors.index.json").exists()
    L = model.config.num_hidden_layers
    hf = load_hf(tmp_path, L)
    hf._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L}.*"]  # where MtpModel looks for the MTP layer
    mtp = MtpModel.from_pretrained(hf).eval()
    x = ids(seed=8)
    h = model.forward_hidden(x)
    h_hf = hf.model(x).last_hidden_state
    assert rel_err(h, h_hf) < 1e-4
    # depth 1: position i combines the hidden state at i with the embedding of token i+1, predicting token i+2
    pos = torch.arange(1, x.shape[1])[None]
    ref = mtp._project_to_logits(mtp.forward_layer(0, h_hf[:, :-1], pos, None, input_ids=x[:, 1:]))
    assert rel_err(mtp_logits(model, x, h)[0], ref) < 1e-4
    # and nanoseek reads its own MTP module back
    back = load_pretrained(tmp_path)
    assert len(back.mtp) == 1
    assert rel_err(mtp_logits(back, x, back.forward_hidden(x))[0], ref) < 1e-4


def _tensor_names(path) -> set[str]:
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())
