"""ModelConfig: the Hugging Face `config.json` of DeepSeek-V3 / V2, as a validated dataclass.

Field names are exactly those of the official `config.json` files (model_type `deepseek_v3` and
`deepseek_v2`), so a config round-trips through transformers, vLLM and SGLang unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

MODEL_TYPES = ("deepseek_v3", "deepseek_v2")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")
SCORING_FUNCS = ("sigmoid", "softmax")

# YaRN defaults of the official code (ModelArgs) and of HF's _compute_yarn_parameters.
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}


# Upper bounds of the sizes in a config (DeepSeek-V3: vocab 129,280, hidden 7,168, 61 layers, 128 heads, 256
# experts, intermediate 18,432, 163,840 positions), far above any real model and far below a runaway allocation.
SIZE_LIMITS = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 20, "moe_intermediate_size": 1 << 18,
    "num_hidden_layers": 1024, "num_attention_heads": 1024, "num_key_value_heads": 1024, "q_lora_rank": 1 << 16,
    "kv_lora_rank": 1 << 16, "qk_nope_head_dim": 4096, "qk_rope_head_dim": 4096, "v_head_dim": 4096,
    "n_routed_experts": 1 << 16, "n_shared_experts": 1024, "num_experts_per_tok": 1024, "n_group": 1 << 16,
    "topk_group": 1 << 16, "first_k_dense_replace": 1024, "moe_layer_freq": 1024, "num_nextn_predict_layers": 64,
    "max_position_embeddings": 1 << 24,
}


@dataclass
class ModelConfig:
    model_type: str = "deepseek_v3"
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # meaningless for MLA; kept for HF compatibility
    q_lora_rank: int | None = 1536  # None: a full q_proj (V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int | None = 256  # None or 0: every layer is dense
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    num_nextn_predict_layers: int = 1
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 163840
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    initializer_range: float = 0.02  # std of the normal init; DeepSeek-V3 pretraining used 0.006
    torch_dtype: str | None = None
    # Keys we do not model but must carry through a load/save round trip (e.g. quantization_config).
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not self.n_routed_experts:
            self.n_routed_experts = 0
        if self.rope_scaling is not None:
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        self.validate()

    # ------------------------------------------------------------------ derived quantities
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.is_moe and layer_id >= self.first_k_dense_replace and layer_id % self.moe_layer_freq == 0

    @property
    def yarn(self) -> dict[str, float] | None:
        """YaRN parameters (factor, original_max_position_embeddings, beta_fast, beta_slow, mscale,
        mscale_all_dim), or None when RoPE is unscaled."""
        rs = self.rope_scaling
        if not rs or rs.get("rope_type", rs.get("type")) not in ("yarn",):
            return None
        out = dict(_YARN_DEFAULTS)
        out.update({k: rs[k] for k in _YARN_DEFAULTS if rs.get(k) is not None})
        out["original_max_position_embeddings"] = rs.get("original_max_position_embeddings", 4096)
        # HF derives a missing factor from max_position_embeddings / original_max_position_embeddings.
        out["factor"] = rs.get("factor") or self.max_position_embeddings / out["original_max_position_embeddings"]
        return out

    @property
    def softmax_scale(self) -> float:
        """(d_n + d_r)^-1/2 · mscale², mscale = 0.1 · mscale_all_dim · ln(factor) + 1 (YaRN attention temperature)."""
        scale = self.qk_head_dim ** -0.5
        y = self.yarn
        if y and y["mscale_all_dim"] and y["factor"] > 1:
            m = 0.1 * y["mscale_all_dim"] * math.log(y["factor"]) + 1.0
            scale *= m * m
        return scale

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"ModelConfig.{name}: {msg} (got {getattr(self, name)!r})")

        if self.model_type not in MODEL_TYPES:
            raise bad("model_type", f"unsupported model_type, expected one of {MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                     "qk_rope_head_dim", "v_head_dim", "max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        # sane upper bounds (DeepSeek-V3 sits far inside every one): a config.json with num_hidden_layers 1,000,000
        # once built modules until the machine ran out of memory
        for name, top in SIZE_LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool) and v > top:
                raise bad(name, f"is larger than any model nanoseek can build (at most {top:,})")
        if not isinstance(self.qk_nope_head_dim, int) or self.qk_nope_head_dim < 0:
            raise bad("qk_nope_head_dim", "must be a non-negative integer")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even (RoPE rotates pairs)")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank < 0):
            raise bad("q_lora_rank", "must be null or a non-negative integer")
        if self.q_lora_rank == 0:
            self.q_lora_rank = None  # the official configs spell "no q compression" as 0
        if self.rms_norm_eps <= 0:
            raise bad("rms_norm_eps", "must be positive")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "only 'silu' (SwiGLU) is supported")
        if self.num_nextn_predict_layers < 0:
            raise bad("num_nextn_predict_layers", "must be >= 0")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise bad("first_k_dense_replace", "must lie in [0, num_hidden_layers]")
        if self.moe_layer_freq < 1:
            raise bad("moe_layer_freq", "must be >= 1")
        if self.first_k_dense_replace > 0 or not self.is_moe:
            if not isinstance(self.intermediate_size, int) or self.intermediate_size <= 0:
                raise bad("intermediate_size", "must be a positive integer (dense layers exist)")
        if self.is_moe:
            if self.moe_intermediate_size <= 0:
                raise bad("moe_intermediate_size", "must be a positive integer")
            if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
                raise bad("num_experts_per_tok", f"must lie in [1, n_routed_experts={self.n_routed_experts}]")
            if self.n_shared_experts < 0:
                raise bad("n_shared_experts", "must be >= 0")
            if self.n_group < 1 or self.n_routed_experts % self.n_group:
                raise bad("n_routed_experts", f"must be divisible by n_group={self.n_group}")
            if not 1 <= self.topk_group <= self.n_group:
                raise bad("topk_group", f"must lie in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            if self.num_experts_per_tok > self.topk_group * per_group:
                raise bad("num_experts_per_tok", "exceeds the experts in the topk_group selected groups")
            if self.topk_method not in TOPK_METHODS:
                raise bad("topk_method", f"expected one of {TOPK_METHODS}")
            if self.scoring_func not in SCORING_FUNCS:
                raise bad("scoring_func", f"expected one of {SCORING_FUNCS}")
            if self.topk_method == "noaux_tc" and per_group < 2 and self.n_group > 1:
                raise bad("n_group", "noaux_tc scores a group by its top-2 experts: need >= 2 experts per group")
        y = self.yarn
        if self.rope_scaling is not None and y is None:
            raise bad("rope_scaling", "only YaRN ('type': 'yarn') scaling is supported")
        if y is not None and y["factor"] <= 0:
            raise bad("rope_scaling", "YaRN factor must be positive")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if "model_type" not in d:
            raise ValueError("ModelConfig.model_type: missing from the config")
        if d["model_type"] not in MODEL_TYPES:
            raise ValueError(f"ModelConfig.model_type: unsupported model_type {d['model_type']!r}, "
                             f"expected one of {MODEL_TYPES}")
        # transformers 5 writes `rope_parameters` (with rope_theta inside) instead of rope_scaling.
        rp = d.pop("rope_parameters", None)
        if rp and "rope_scaling" not in d:
            rp = dict(rp)
            if "rope_theta" in rp:
                d.setdefault("rope_theta", rp.pop("rope_theta"))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d["rope_scaling"] = rp
        if "dtype" in d and "torch_dtype" not in d:  # transformers 5 writes `dtype`
            d["torch_dtype"] = d.pop("dtype")
        if d.get("num_nextn_predict_layers") is None:
            d["num_nextn_predict_layers"] = d.get("num_mtp_layers") or 0
        d.pop("num_mtp_layers", None)
        if d.get("model_type") == "deepseek_v2":
            for k in ("n_group", "topk_group"):  # transformers writes null for ungrouped V2 routing
                if d.get(k) is None:
                    d[k] = 1
            d.setdefault("topk_method", "greedy")
            d.setdefault("scoring_func", "softmax")
            d.setdefault("norm_topk_prob", False)
            d.setdefault("num_nextn_predict_layers", 0)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        for k in ("n_group", "topk_group", "first_k_dense_replace", "num_experts_per_tok"):
            if k in known and known[k] is None:
                known.pop(k)  # HF writes null for "not set": fall back to our defaults
        try:
            cfg = cls(**known)
        except TypeError as e:  # wrong types in the JSON
            raise ValueError(f"ModelConfig: {e}") from None
        cfg.extra = extra
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {**self.extra, **d}
        d["architectures"] = ["DeepseekV3ForCausalLM" if self.model_type == "deepseek_v3" else "DeepseekV2ForCausalLM"]
        if d["torch_dtype"] is None:
            d.pop("torch_dtype")
        return d

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ModelConfig":
        p = os.path.join(path, "config.json") if os.path.isdir(path) else str(path)
        if not os.path.exists(p):
            raise FileNotFoundError(f"no config.json at {p}")
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def replace(self, **changes: Any) -> "ModelConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.extra = dict(self.extra)
        return cfg

    @classmethod
    def from_name_or_path(cls, name_or_path: str | os.PathLike) -> "ModelConfig":
        """A preset name, a model directory, or a config.json path."""
        from .presets import PRESETS
        if str(name_or_path) in PRESETS:
            return cls.preset(str(name_or_path))
        if os.path.exists(name_or_path):
            return cls.from_pretrained(name_or_path)
        raise ValueError(f"{str(name_or_path)!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         f"nor a model directory")

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        from .presets import PRESETS
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])


def _normalise_rope_scaling(rs: dict[str, Any]) -> dict[str, Any]:
    """Accept both spellings: `type` (official configs) and `rope_type` (transformers)."""
    rs = dict(rs)
    kind = rs.get("rope_type", rs.get("type"))
    if kind is not None:
        rs["type"] = rs["rope_type"] = kind
    rs.pop("rope_theta", None)
    return rs
