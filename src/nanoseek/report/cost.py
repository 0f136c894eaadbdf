"""Training cost: FLOPs -> device-hours -> price, DeepSeek-V3's published arithmetic, and a run's measured cost.

    training FLOPs   C = F_tok · D         F_tok = 6 · activated matrix parameters + causal attention (+ the MTP
                                          module V3 trains with); D = training tokens
    device-hours     h = C / (MFU · peak · 3600)
    price            $ = h · rate

DeepSeek-V3 (technical report, Table 1): 14.8T pre-training tokens; 2.664M H800 GPU-hours of pre-training +
0.119M context extension + 0.005M post-training = 2.788M, at $2 per GPU-hour = $5.576M. Solving the second line
for MFU gives the utilisation those figures imply. An H800 has the compute of an H100 SXM: 989.5 dense BF16 TFLOP/s
and 1979 dense FP8 TFLOP/s (NVIDIA's datasheet, without sparsity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..info import train_flops_per_token

H800 = {"name": "H800 (= H100 SXM compute)", "bf16_flops": 989.5e12, "fp8_flops": 1979e12}
V3_PAPER = {"tokens": 14.8e12, "seq_len": 4096, "pretrain_gpu_hours": 2.664e6, "context_extension_gpu_hours": 0.119e6,
            "post_training_gpu_hours": 0.005e6, "total_gpu_hours": 2.788e6, "price_per_gpu_hour": 2.0,
            "cost_usd": 5.576e6, "source": "DeepSeek-V3 technical report, Table 1 (training costs)"}
DEFAULT_PRICE = 2.0  # $ per device-hour, V3's rental assumption


def cost_at(flops: float, mfu: float, peak: float, price: float) -> dict[str, float]:
    """Device-hours and price of `flops` at utilisation `mfu` of `peak` FLOP/s: h = C / (MFU · peak · 3600)."""
    hours = flops / (mfu * peak * 3600)
    return {"mfu": mfu, "peak_flops": peak, "device_hours": hours, "price_usd": hours * price}


def paper_check(cfg: ModelConfig) -> dict[str, Any]:
    """V3's arithmetic from its config: total pre-training FLOPs, the MFU implied by 2.664M GPU-hours on FP8 and
    BF16 peaks, and 2.788M h × $2 = $5.576M."""
    p = V3_PAPER
    per_token = train_flops_per_token(cfg, p["seq_len"], cfg.num_nextn_predict_layers)
    flops = per_token * p["tokens"]
    seconds = p["pretrain_gpu_hours"] * 3600
    return {**p, "flops_per_token": per_token, "flops_per_token_no_mtp": train_flops_per_token(cfg, p["seq_len"]),
            "pretrain_flops": flops, "achieved_flops_per_gpu": flops / seconds,
            "implied_mfu_fp8_peak": flops / (seconds * H800["fp8_flops"]),
            "implied_mfu_bf16_peak": flops / (seconds * H800["bf16_flops"]),
            "price_check_usd": p["total_gpu_hours"] * p["price_per_gpu_hour"], "device": H800}


def stated_cost(cfg: ModelConfig, tokens: float, seq_len: int, mfu: float, price: float) -> dict[str, Any]:
    """A model trained on `tokens` tokens at a stated MFU, on an H800's BF16 peak and on its FP8 peak: FP8
    doubles the GEMM peak, so at the same MFU the device-hours halve (the upper bound of what FP8 saves)."""
    per_token = train_flops_per_token(cfg, seq_len, cfg.num_nextn_predict_layers)
    flops = per_token * tokens
    return {"tokens": tokens, "seq_len": seq_len, "flops_per_token": per_token, "flops": flops, "price_per_hour": price,
            "bf16": cost_at(flops, mfu, H800["bf16_flops"], price), "fp8": cost_at(flops, mfu, H800["fp8_flops"], price),
            "device": H800["name"]}


def run_cost(run_dir: Path, price: float) -> dict[str, Any] | None:
    """A run's own cost from its logged throughput: tokens trained = steps × global batch × seq_len; device-hours =
    tokens / (tokens/s) / 3600 × processes (1 unless the config says otherwise); FLOPs from the logged MFU's
    FLOPs/token. None when the run logged no throughput."""
    import json
    import statistics
    from ..plot import read_metrics, series
    rows = read_metrics(run_dir)
    _, tps = series(rows, "tokens_per_s")
    _, mfu = series(rows, "mfu")
    cfg_path = run_dir / "train_config.json"
    if not tps or not cfg_path.is_file():
        return None
    tc = json.loads(cfg_path.read_text())
    steps = max(r["step"] for r in rows)
    global_batch = tc.get("global_batch_size") or tc["batch_size"]
    tokens = steps * global_batch * tc["seq_len"]
    rate = statistics.median(tps)
    hours = tokens / rate / 3600
    precision = ("fp8 (" + tc.get("fp8_scaling", "tile") + " scaling)" if tc.get("fp8") else tc.get("dtype", "auto"))
    return {"run": str(run_dir), "precision": precision, "steps": steps, "tokens": tokens, "seq_len": tc["seq_len"], "tokens_per_s": rate,
            "mfu": statistics.median(mfu) if mfu else None, "device_hours": hours, "price_per_hour": price,
            "price_usd": hours * price, "device": tc.get("device", "auto"), "threads": tc.get("threads")}


def cost_section(cfg: ModelConfig | None, run_dir: Path | None, compare: Path | None, tokens: float | None,
                 seq_len: int, mfu: float | None, price: float) -> dict[str, Any]:
    """What the report's training-cost section shows (see markdown._cost)."""
    from .accounting import published_name
    out: dict[str, Any] = {"price_per_hour": price}
    if run_dir is not None:
        out["run"] = run_cost(run_dir, price)
        if out["run"] is not None:  # price the run's own token count at its own sequence length
            tokens = out["run"]["tokens"] if tokens is None else tokens
            seq_len = out["run"]["seq_len"]
    if cfg is not None:
        v3 = published_name(cfg) == "deepseek-v3"
        if v3:
            out["paper"] = paper_check(cfg)
        stated_mfu = mfu if mfu is not None else (out["paper"]["implied_mfu_fp8_peak"] if v3 else 0.4)
        out["stated"] = stated_cost(cfg, tokens if tokens is not None else V3_PAPER["tokens"], seq_len, stated_mfu,
                                    price)
    if compare is not None:
        out["compare"] = run_cost(compare, price)
        if out.get("run") and out["compare"]:
            out["speed_ratio"] = out["run"]["tokens_per_s"] / out["compare"]["tokens_per_s"]
    return out
