"""The language-model trainer of pretraining and SFT (on the loop skeleton of `loop.py`).

One optimizer step = gradient accumulation over micro-batches until the global batch is reached (across all
processes), clipping, AdamW, then the auxiliary-loss-free bias update. Checkpoints are atomic and resumable exactly.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import ModelConfig
from ..memory import check_memory
from ..model import Transformer
from . import distributed
from .balance import LoadBalancer
from .config import TrainConfig
from .loop import TrainingError, TrainingLoop
from .loss import TrainingObjective
from .optim import build_optimizer, lr_at
from .perf import matmul_peak_flops
from .settings import RunConfig

__all__ = ["Batch", "Data", "Trainer", "TrainingError", "autocast_dtype", "dense_baseline"]

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


def autocast_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class Trainer(TrainingLoop):
    cfg: TrainConfig

    def __init__(self, cfg: TrainConfig, data: Data, env: distributed.DistEnv,
                 model: Transformer | None = None, log: Callable[[str], None] = print):
        self.data, self.env = data, env
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
        super().__init__(cfg, model.to(env.device), log, env.is_main)
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
        from ..info import train_flops_per_token
        mtp_depth = len(self.model.mtp) if cfg.mtp_lambda > 0 else 0
        self.flops_per_token = train_flops_per_token(self.mcfg, cfg.seq_len, mtp_depth, cfg.attention)
        self.peak = matmul_peak_flops(env.device, self.amp or torch.float32) * env.world_size
        self.val_loss: float | None = None
        self._batches: Iterator[Batch] = iter(())
        self._timer = (time.perf_counter(), 0)  # (when throughput was last measured, steps since)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.objective, self.optimizer, options=opts)
        if self.ep is not None:  # whole experts in the checkpoint: it resumes with any world or EP size
            self.ep.gather_state(self.objective, self.optimizer, model_sd, optim_sd)
        return {"model": model_sd, "optimizer": optim_sd, "config": self.cfg.to_dict(),
                "model_config": self.mcfg.to_dict()}

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        if self.ep is not None:
            self.ep.shard_state(ckpt["model"], ckpt["optimizer"])
        set_state_dict(self.objective, self.optimizer, model_state_dict=ckpt["model"],
                       optim_state_dict=ckpt["optimizer"], options=StateDictOptions(full_state_dict=True))

    def barrier(self) -> None:
        distributed.barrier(self.env)

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

    # ------------------------------------------------------------------ the loop's hooks
    def begin(self) -> None:
        self.objective.train()
        self.val_loss = None
        self._batches = self.data.train_batches(self.step)
        self._timer = (time.perf_counter(), 0)

    def run_step(self) -> dict[str, Any]:
        m = self.train_step(next(self._batches))
        row: dict[str, Any] = {"step": self.step, **m}
        t_last, steps = self._timer[0], self._timer[1] + 1
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
            tps = self.global_batch * self.cfg.seq_len * steps / (time.perf_counter() - t_last)
            row.update(tokens_per_s=tps, mfu=tps * self.flops_per_token / self.peak)
            t_last, steps = time.perf_counter(), 0
        self._timer = (t_last, steps)
        return row

    def evaluation(self) -> dict[str, Any]:
        self.val_loss = self.evaluate()
        return {"val_loss": self.val_loss}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        post = {"loss": f"{row['loss']:.3f}"}
        if "tokens_per_s" in row:
            post.update(tok_s=f"{row['tokens_per_s']:.0f}", mfu=f"{100 * row['mfu']:.1f}%")
        if self.val_loss is not None:
            post["val"] = f"{self.val_loss:.3f}"
        return post

    def export(self, out_dir: str | None = None, tokenizer: Any = None, fp8: bool | None = None) -> str:
        """An FP8-trained model is exported in the official FP8 layout (e4m3 weights + weight_scale_inv)."""
        return super().export(out_dir, tokenizer, self.cfg.fp8 if fp8 is None else fp8)

    def summary(self) -> dict[str, Any]:
        if self.val_loss is None and self.step > 0:  # resumed at the end (e.g. killed during export): measure again
            self.val_loss = self.evaluate()
        return {"step": self.step, "val_loss": self.val_loss, "unigram_entropy": self.data.unigram_entropy}
