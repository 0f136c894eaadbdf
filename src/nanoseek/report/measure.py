"""Short measurements on this machine: training tokens/s and MFU, decode tokens/s, MTP speculative acceptance and
the expert load, each a few steps long (seconds on the `tiny`/`small` presets, not a benchmark: bench/ has those).

* training: forward + cross-entropy (+ the MTP loss) + backward + AdamW step on a (batch, seq) batch, fp32;
  tokens/s is the median over the timed steps, MFU = tokens/s · FLOPs/token / peak, the peak being this machine's
  best n×n matmul (nanoseek.train.perf), FLOPs/token from nanoseek.info at this sequence length (the main model
  only, as the trainer's logged MFU: the MTP module's work is not counted, so MFU is slightly understated).
* decode: the inference engine, greedy, EOS ignored; decode tokens/s = batch · (new − 1) / (time − time to first
  token), as bench/decode.py measures it.
* speculative: the same with one MTP draft per step; acceptance = accepted drafts / drafts. With untrained
  weights the MTP head predicts nothing, so its acceptance is reported but flagged.
* expert load: tokens per routed expert during the training steps (nanoseek.train.balance.LoadBalancer, with no
  bias update), max/mean per MoE layer; 1.0 is perfect balance.

Inputs are real text when a tokenizer is given (the built-in pydoc corpus), else seeded random tokens.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

TRAIN_BYTES_PER_PARAM = 16  # fp32 weights 4 + gradients 4 + AdamW moments 8


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def skip_reason(total_params: int, max_memory_fraction: float = 0.25) -> str | None:
    """Why a model cannot be measured here (None if it can): training it needs ~16 bytes per parameter."""
    need = total_params * TRAIN_BYTES_PER_PARAM
    mem = physical_memory()
    if mem is None:
        return None
    if need > max_memory_fraction * mem:
        return (f"skipped: training needs ~{need / 2**30:,.0f} GiB (16 B/parameter for fp32 weights, gradients and "
                f"AdamW state) and this machine has {mem / 2**30:,.0f} GiB of memory; the numbers above come from "
                f"the config alone")
    return None


def input_tokens(tokenizer: Any, vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """n token ids: the built-in pydoc text encoded (repeated if short), or random ids without a tokenizer."""
    if tokenizer is not None:
        from ..data import pydoc_documents
        ids: list[int] = []
        for doc in pydoc_documents():
            ids += [i for i in tokenizer.encode(doc, add_special_tokens=False) if i < vocab_size]
            if len(ids) >= n:
                return ids[:n]
        if ids:
            return (ids * (n // len(ids) + 1))[:n]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (n,), generator=g).tolist()


def measure_training(model: nn.Module, tokenizer: Any = None, batch: int = 4, seq: int = 128, steps: int = 3,
                     warmup: int = 1) -> dict[str, Any]:
    from ..info import count
    from ..train.balance import LoadBalancer
    from ..train.loss import TrainingObjective
    from ..train.optim import build_optimizer
    from ..train.perf import matmul_peak_flops
    cfg = model.config
    device = next(model.parameters()).device
    ids = torch.tensor(input_tokens(tokenizer, cfg.vocab_size, batch * (seq + 1), seed=1)).view(batch, seq + 1)
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)
    objective = TrainingObjective(model, mtp_lambda=0.3 if len(model.mtp) else 0.0)
    opt = build_optimizer(model, 1e-5, 0.1, (0.9, 0.95), device.type)
    balancer = LoadBalancer(model, gamma=0.0)
    model.train()
    times, loads = [], []
    try:
        for i in range(warmup + steps):
            t = time.perf_counter()
            balancer.begin_forward(batch)
            loss, _ = objective(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t
            stats = balancer.step()
            if i >= warmup:
                times.append(dt)
                loads.append(stats)
    finally:
        balancer.remove()
        model.eval()
    step_s = statistics.median(times)
    tps = batch * seq / step_s
    flops = count(cfg, seq_len=seq)["flops_per_token"]
    peak = matmul_peak_flops(device, torch.float32)
    load = {name: statistics.mean(s[name]["max_over_mean"] for s in loads if name in s) for name in loads[-1]}
    return {"batch": batch, "seq_len": seq, "steps": steps, "step_s": step_s, "tokens_per_s": tps,
            "flops_per_token": flops, "peak_flops": peak, "mfu": tps * flops / peak, "dtype": "float32",
            "expert_load_max_over_mean": load}


def measure_decode(model: nn.Module, tokenizer: Any = None, batch: int = 1, prompt_len: int = 32,
                   new_tokens: int = 32, speculative: int = 0) -> dict[str, Any]:
    from ..infer import LLM, SamplingParams
    cfg = model.config
    text = input_tokens(tokenizer, cfg.vocab_size, batch * prompt_len, seed=2)
    prompts = [text[i * prompt_len:(i + 1) * prompt_len] for i in range(batch)]
    llm = LLM(model, tokenizer, max_num_seqs=batch, speculative=speculative or None)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompts[:1], params.clone(max_tokens=2))  # warm-up
    before = dict(llm.engine.stats)
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    total = time.perf_counter() - t
    ttft = max(o.metrics.first_token_time for o in outs) - min(o.metrics.arrival_time for o in outs)
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    out = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "speculative": speculative,
           "time_to_first_token_s": ttft, "total_s": total,
           "decode_tokens_per_s": batch * (new_tokens - 1) / max(total - ttft, 1e-9),
           "tokens_per_s": generated / total,
           "kv_cache_bytes_per_token": llm.engine.cache.bytes_per_token}
    if speculative:
        drafts = llm.engine.stats["spec_draft_tokens"] - before["spec_draft_tokens"]
        accepted = llm.engine.stats["spec_accepted_tokens"] - before["spec_accepted_tokens"]
        steps = sum(o.metrics.num_steps for o in outs)
        out.update(draft_tokens=drafts, accepted_tokens=accepted, acceptance_rate=accepted / drafts if drafts else None,
                   tokens_per_step=generated / steps if steps else None)
    return out


def measure(model: nn.Module, tokenizer: Any = None, *, trained: bool, batch: int = 4, seq: int = 128,
            steps: int = 3, decode_batch: int = 8, new_tokens: int = 32) -> dict[str, Any]:
    """Decode (batch 1 and `decode_batch`), speculative decode when the model has MTP, then training (which
    changes the weights, so it runs last)."""
    torch.manual_seed(0)
    out: dict[str, Any] = {"device": str(next(model.parameters()).device), "threads": torch.get_num_threads(),
                           "trained_weights": trained}
    out["decode"] = [measure_decode(model, tokenizer, b, new_tokens=new_tokens) for b in sorted({1, decode_batch})]
    if len(getattr(model, "mtp", ())):
        out["speculative"] = measure_decode(model, tokenizer, 1, new_tokens=new_tokens, speculative=1)
    out["training"] = measure_training(model, tokenizer, batch, seq, steps)
    return out
