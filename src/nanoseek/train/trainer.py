"""The training loop shared by pretraining and SFT.

One optimizer step = gradient accumulation over micro-batches until the global batch is reached (across all
processes), clipping, AdamW, then the auxiliary-loss-free bias update. Checkpoints are atomic and resumable exactly.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import ModelConfig
from ..memory import check_memory
from ..model import Transformer
from . import distributed, state
from .balance import LoadBalancer
from .config import TrainConfig
from .loss import TrainingObjective
from .optim import build_optimizer, lr_at
from .perf import matmul_peak_flops


class TrainingError(RuntimeError):
    """A run that cannot continue (NaN loss...): reported in one line, the last good checkpoint kept."""


Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Data:
    """Where batches come from. train_batches(start_step) yields each optimizer step's *global* batch (every rank
    draws the same one and keeps its slice, so any number of processes sees the same data, and a resumed run sees
    what the uninterrupted run would have); val_batches() yields a fixed validation set."""
    train_batches: Callable[[int], Iterator[Batch]]
    val_batches: Callable[[], Iterator[Batch]]
    vocab_size: int  # ids the tokenizer can produce
    unigram_entropy: float  # nats/token of the training data: the loss of the best context-free model
    tokenizer_dir: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def dense_baseline(cfg: ModelConfig) -> ModelConfig:
    """The same model with every MoE replaced by one dense SwiGLU of the same activated width."""
    if not cfg.is_moe:
        return cfg
    width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
    return cfg.replace(n_routed_experts=0, intermediate_size=width, first_k_dense_replace=0)


def build_model_config(cfg: TrainConfig, vocab_size: int | None) -> ModelConfig:
    mcfg = ModelConfig.from_name_or_path(cfg.model)
    known = set(mcfg.to_dict())
    for k in cfg.model_overrides:
        if k not in known:
            raise ValueError(f"train config: model.{k}: not a ModelConfig field")
    d = {**mcfg.to_dict(), **cfg.model_overrides}
    if cfg.init_std is not None:
        d["initializer_range"] = cfg.init_std
    mcfg = ModelConfig.from_dict(d)
    if cfg.dense:
        mcfg = dense_baseline(mcfg)
    if vocab_size is not None and vocab_size > mcfg.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the model's vocab_size is {mcfg.vocab_size}: "
                         f"retrain the tokenizer smaller or pass --model.vocab_size {vocab_size}")
    return mcfg


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class Trainer:
    def __init__(self, cfg: TrainConfig, data: Data, env: distributed.DistEnv,
                 model: Transformer | None = None, log: Callable[[str], None] = print):
        self.cfg, self.data, self.env, self.log = cfg, data, env, log
        torch.manual_seed(cfg.seed)
        if model is None:
            mcfg = build_model_config(cfg, data.vocab_size)
            # refused before allocating: built on the CPU in fp32, then moved to the device it trains on
            check_memory(mcfg, "cpu", torch.float32)
            check_memory(mcfg, env.device, torch.float32, training=True,
                         shards=env.world_size if cfg.parallel == "fsdp" and env.world_size > 1 else 1)
            model = Transformer(mcfg)
            if cfg.attention == "mha":
                from ..model.mha import use_mha
                use_mha(model)
        self.model = model.to(env.device)
        self.mcfg = model.config
        self.ep = None  # expert parallelism: each rank keeps a shard of every MoE's routed experts
        if cfg.expert_parallel > 1:
            from .expert_parallel import ExpertParallel
            self.ep = ExpertParallel(self.model, env, cfg.expert_parallel)
        if cfg.fp8:  # before wrapping: DDP/FSDP/compile then see the FP8 modules (parameters are unchanged)
            from .fp8_train import apply_fp8
            apply_fp8(self.model, cfg.fp8_scaling)
        self.objective = TrainingObjective(self.model, cfg.mtp_lambda)
        self.balancer = LoadBalancer(self.model, cfg.bias_update_speed, cfg.seq_aux_alpha)
        self.wrapped = distributed.wrap(self.objective, env, cfg.parallel,
                                        ignored=self.ep.params() if self.ep is not None else ())
        if cfg.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                         env.device.type)
        self.amp = autocast_dtype(cfg, env.device)
        self.global_batch = cfg.global_batch(env.world_size)
        self.accum = self.global_batch // (cfg.batch_size * env.world_size)
        self.step = 0
        self.ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
        self.metrics_path = os.path.join(cfg.run_dir, "metrics.jsonl")
        from ..info import train_flops_per_token
        mtp_depth = len(self.model.mtp) if cfg.mtp_lambda > 0 else 0
        self.flops_per_token = train_flops_per_token(self.mcfg, cfg.seq_len, mtp_depth, cfg.attention)
        self.peak = matmul_peak_flops(env.device, self.amp or torch.float32) * env.world_size

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.objective, self.optimizer, options=opts)
        if self.ep is not None:  # whole experts in the checkpoint: it resumes with any world or EP size
            self.ep.gather_state(self.objective, self.optimizer, model_sd, optim_sd)
        return {"model": model_sd, "optimizer": optim_sd, "config": self.cfg.to_dict(),
                "model_config": self.mcfg.to_dict()}

    def save_checkpoint(self) -> str | None:
        sd = self._state()  # collective under FSDP: every rank takes part
        path = None
        if self.env.is_main:
            path = state.save(self.ckpt_dir, self.step, sd, self.cfg.keep_checkpoints)
        distributed.barrier(self.env)
        return path

    def resume(self) -> bool:
        ckpt = state.load_latest(self.ckpt_dir, self.log)
        if ckpt is None:
            return False
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        if self.ep is not None:
            self.ep.shard_state(ckpt["model"], ckpt["optimizer"])
        set_state_dict(self.objective, self.optimizer, model_state_dict=ckpt["model"],
                       optim_state_dict=ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))
        state.set_rng_state(ckpt["rng"])
        self.step = ckpt["step"]
        if self.env.is_main:
            state.truncate_log(self.metrics_path, self.step)
        self.log(f"resumed from {ckpt['_path']} at step {self.step}")
        return True

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on this step's global batch (input_ids, labels), each (global_batch, seq)."""
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg.max_steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_frac)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        per_rank = self.global_batch // env.world_size
        totals: dict[str, float] = {}
        if self.ep is not None:
            self.ep.sent_bytes = 0  # this step's traffic only (not the last evaluation's)
        for micro in range(self.accum):
            first = env.rank * per_rank + micro * cfg.batch_size
            x, y = (t[first:first + cfg.batch_size].to(env.device) for t in batch)
            self.balancer.begin_forward(x.shape[0])
            sync = contextlib.nullcontext()
            if micro < self.accum - 1 and isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
                sync = self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    loss, parts = self.wrapped(x, y)
                    aux = self.balancer.aux_loss()
                    if aux is not None:
                        loss = loss + aux
                        parts["aux"] = aux.detach()
                (loss / self.accum).backward()
            for k, v in {"loss": loss.detach(), **parts}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.accum
        if self.ep is not None:
            self.ep.finish_grads()
            grad_norm = self.ep.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        metrics = {k: float(distributed.all_reduce_mean(torch.tensor(v), env)) for k, v in totals.items()}
        if not math.isfinite(metrics["loss"]) or not torch.isfinite(grad_norm):
            raise TrainingError(f"non-finite loss ({metrics['loss']}) or gradient norm at step {self.step}: "
                                f"stopping; the last good checkpoint in {self.ckpt_dir} is intact "
                                f"(lower --lr or raise --warmup_steps)")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        load = self.balancer.step()
        self.step += 1
        metrics.update(lr=lr, grad_norm=float(grad_norm))
        if self.ep is not None:  # this rank's all-to-all traffic in the step (MB sent to other ranks)
            metrics["all_to_all_mb"] = self.ep.sent_bytes / 1e6
            self.ep.sent_bytes = 0
        if load:
            metrics["load_max_over_mean"] = max(v["max_over_mean"] for v in load.values())
            metrics["load"] = {k: round(v["max_over_mean"], 4) for k, v in load.items()}
        return metrics

    @torch.no_grad()
    def evaluate(self) -> float:
        self.objective.eval()
        total, n = 0.0, 0
        for x, y in self.data.val_batches():
            with self._autocast():
                loss, parts = self.wrapped(x.to(self.env.device), y.to(self.env.device))
            targets = int((y != -100).sum())
            total += float(parts["ce"]) * targets
            n += targets
        self.objective.train()
        return total / max(n, 1)

    # ------------------------------------------------------------------ the loop
    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to max_steps (or stop after `stop_after` steps in this call, for tests of interruption)."""
        cfg, env = self.cfg, self.env
        os.makedirs(cfg.run_dir, exist_ok=True)
        if cfg.resume:
            self.resume()
        elif env.is_main and os.path.exists(self.metrics_path):
            os.remove(self.metrics_path)  # a fresh run starts a fresh log
        self.objective.train()
        tokens_per_step = self.global_batch * cfg.seq_len
        bar = None
        if env.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        val_loss = None
        done = 0
        t_last, steps_since = time.perf_counter(), 0
        batches = self.data.train_batches(self.step)
        while self.step < cfg.max_steps and (stop_after is None or done < stop_after):
            m = self.train_step(next(batches))
            done += 1
            steps_since += 1
            row: dict[str, Any] = {"step": self.step, **m}
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                dt = time.perf_counter() - t_last
                tps = tokens_per_step * steps_since / dt
                row.update(tokens_per_s=tps, mfu=tps * self.flops_per_token / self.peak)
                t_last, steps_since = time.perf_counter(), 0
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                val_loss = self.evaluate()
                row["val_loss"] = val_loss
            self._write_metrics(row)
            if bar is not None:
                post = {"loss": f"{m['loss']:.3f}"}
                if "tokens_per_s" in row:
                    post.update(tok_s=f"{row['tokens_per_s']:.0f}", mfu=f"{100 * row['mfu']:.1f}%")
                if val_loss is not None:
                    post["val"] = f"{val_loss:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if val_loss is None and self.step > 0:  # resumed at the end (e.g. killed during export): measure it again
            val_loss = self.evaluate()
        return {"step": self.step, "val_loss": val_loss, "unigram_entropy": self.data.unigram_entropy}
