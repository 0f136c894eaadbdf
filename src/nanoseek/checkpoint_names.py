"""The official DeepSeek-V3/R1/V2 tensor names and where each tensor lives in nanoseek's state_dict.

Names, official checkpoint -> nanoseek (per layer N < num_hidden_layers):
    model.embed_tokens / model.norm / lm_head                       -> embed / norm / head
    model.layers.N.{input,post_attention}_layernorm                 -> layers.N.{attn,ffn}_norm
    self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}          -> attn.{wq | wq_a, q_norm, wq_b}
    self_attn.{kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj} -> attn.{wkv_a, kv_norm, wkv_b, wo}
    mlp.{gate,down,up}_proj (dense)                                 -> ffn.{w1,w2,w3}
    mlp.gate.weight, mlp.gate.e_score_correction_bias               -> ffn.gate.weight, ffn.gate.bias (fp32)
    mlp.shared_experts.{gate,down,up}_proj                          -> ffn.shared_experts.{w1,w2,w3}
    mlp.experts.E.{gate,up}_proj                                    -> ffn.experts.w13[E, :I], w13[E, I:]
    mlp.experts.E.down_proj                                         -> ffn.experts.w2[E]
    (transformers' fused mlp.experts.gate_up_proj (E,2I,d), mlp.experts.down_proj (E,d,I) are read as well)
MTP module k lives at model.layers.{L+k}: enorm, hnorm, eh_proj, shared_head.norm (-> mtp.k.norm) and the block's
tensors under the usual layer names (-> mtp.k.block.*); its embed_tokens and shared_head.head are copies of the
main embedding and head: shape-checked and skipped on load, written on save (vLLM's deepseek_mtp reads them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import ModelConfig

# The linear weights the official FP8 checkpoints store in float8_e4m3fn: every one inside the decoder layers (the
# MTP block's included); never the router, norms, embeddings, heads or eh_proj.
FP8_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                        r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight")


@dataclass(frozen=True)
class Slot:
    param: str  # nanoseek state_dict key
    index: tuple = ()  # where in that tensor: () whole, (e,) one expert, (e, rows) part of one expert


@dataclass
class Names:
    slots: dict[str, Slot]  # canonical checkpoint name -> place in the model
    fused: dict[str, tuple[Slot, list[str]]]  # transformers' fused expert name -> (place, canonical names covered)
    copies: dict[str, str]  # MTP copies of the embedding/head -> the nanoseek tensor they copy


def tensor_names(cfg: ModelConfig, n_mtp: int) -> Names:
    names = Names({}, {}, {})
    add = lambda hf, ns, index=(): names.slots.__setitem__(hf, Slot(ns, index))  # noqa: E731
    add("model.embed_tokens.weight", "embed.weight")
    for i in range(cfg.num_hidden_layers):
        _block_names(cfg, names, f"model.layers.{i}.", f"layers.{i}.", cfg.is_moe_layer(i))
    add("model.norm.weight", "norm.weight")
    if not cfg.tie_word_embeddings:
        add("lm_head.weight", "head.weight")
    for k in range(n_mtp):
        hf, ns = f"model.layers.{cfg.num_hidden_layers + k}.", f"mtp.{k}."
        for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            add(hf + part, ns + part)
        _block_names(cfg, names, hf, ns + "block.", cfg.is_moe)
        add(hf + "shared_head.norm.weight", ns + "norm.weight")
        names.copies[hf + "embed_tokens.weight"] = "embed.weight"
        names.copies[hf + "shared_head.head.weight"] = "head.weight"
    return names


def _block_names(cfg: ModelConfig, names: Names, hf: str, ns: str, moe: bool) -> None:
    add = lambda h, n, index=(): names.slots.__setitem__(hf + h, Slot(ns + n, index))  # noqa: E731
    add("input_layernorm.weight", "attn_norm.weight")
    linears = [("q_proj", "wq", False)] if cfg.q_lora_rank is None else [("q_a_proj", "wq_a", True),
                                                                         ("q_b_proj", "wq_b", False)]
    linears += [("kv_a_proj_with_mqa", "wkv_a", True), ("kv_b_proj", "wkv_b", False), ("o_proj", "wo", True)]
    for h, n, has_bias in linears:
        add(f"self_attn.{h}.weight", f"attn.{n}.weight")
        if has_bias and cfg.attention_bias:
            add(f"self_attn.{h}.bias", f"attn.{n}.bias")
    if cfg.q_lora_rank is not None:
        add("self_attn.q_a_layernorm.weight", "attn.q_norm.weight")
    add("self_attn.kv_a_layernorm.weight", "attn.kv_norm.weight")
    add("post_attention_layernorm.weight", "ffn_norm.weight")
    mlp = [("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")]
    if not moe:
        for h, n in mlp:
            add(f"mlp.{h}.weight", f"ffn.{n}.weight")
        return
    add("mlp.gate.weight", "ffn.gate.weight")
    if cfg.topk_method == "noaux_tc":
        add("mlp.gate.e_score_correction_bias", "ffn.gate.bias")
    if cfg.n_shared_experts:
        for h, n in mlp:
            add(f"mlp.shared_experts.{h}.weight", f"ffn.shared_experts.{n}.weight")
    inter, w13, w2 = cfg.moe_intermediate_size, ns + "ffn.experts.w13", ns + "ffn.experts.w2"
    gate_up, down = [], []
    for e in range(cfg.n_routed_experts):
        p = f"mlp.experts.{e}."
        add(p + "gate_proj.weight", "ffn.experts.w13", (e, slice(0, inter)))  # w13 = [w1; w3] rows per expert
        add(p + "up_proj.weight", "ffn.experts.w13", (e, slice(inter, 2 * inter)))
        add(p + "down_proj.weight", "ffn.experts.w2", (e,))
        gate_up += [hf + p + "gate_proj.weight", hf + p + "up_proj.weight"]
        down.append(hf + p + "down_proj.weight")
    names.fused[hf + "mlp.experts.gate_up_proj"] = (Slot(w13), gate_up)  # transformers 5: [gate; up] rows
    names.fused[hf + "mlp.experts.down_proj"] = (Slot(w2), down)


def rope_row_perm(cfg: ModelConfig, name: str, rows: int) -> torch.Tensor | None:
    """Rows permutation from the rotate-half layout (transformers' rope_interleave=false: pairs (j, j + r/2)) to the
    interleaved layout of the released weights (pairs (2j, 2j+1)): W_inter[o + 2j] = W_half[o + j],
    W_inter[o + 2j + 1] = W_half[o + j + r/2], applied to the rope rows o.. of each head's query and of k_pe."""
    r = cfg.qk_rope_head_dim
    pair = torch.arange(r).view(2, r // 2).t().flatten()
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
        perm = torch.arange(rows).view(cfg.num_attention_heads, cfg.qk_head_dim)
        perm[:, cfg.qk_nope_head_dim:] = perm[:, cfg.qk_nope_head_dim:][:, pair]
        return perm.flatten()
    if name.endswith(("self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_a_proj_with_mqa.bias")):
        perm = torch.arange(rows)
        perm[cfg.kv_lora_rank:] = cfg.kv_lora_rank + pair
        return perm
    return None



def check_names_cover(names: Names, meta: dict[str, torch.Tensor]) -> None:
    """The name map must place something in every tensor of the model (guards against model changes)."""
    targets = {s.param for s in names.slots.values()}
    left = [k for k in meta if k not in targets and not (k == "head.weight" and "lm_head.weight" not in names.slots)]
    unknown = sorted(targets - set(meta))
    if left or unknown:
        raise RuntimeError(f"nanoseek checkpoint name map out of date: model tensors {left[:3]} unmapped, "
                           f"mapped names {unknown[:3]} not in the model")

