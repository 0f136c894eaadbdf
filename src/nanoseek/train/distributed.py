"""Scale-out as a wrapper around an unchanged model: the same training script runs as one process or under
`torchrun --nproc_per_node N`, with DistributedDataParallel or FSDP2 (`fully_shard`), NCCL on GPUs and gloo on CPU.

Expert parallelism (`expert_parallel.py`) shards the stacked routed experts over groups of ranks; the wrappers
here leave those shards alone (`ignored`), and it reduces their gradients itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto") -> DistEnv:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, local, world, dev)


def wrap(module: nn.Module, env: DistEnv, mode: str = "ddp", ignored: Iterable[nn.Parameter] = ()) -> nn.Module:
    """mode: ddp | fsdp (FSDP2: every decoder block and MTP module sharded, then the root). `ignored` parameters
    (expert-parallel shards) are neither synchronised nor sharded."""
    if not env.distributed:
        return module
    ignored = set(ignored)
    if mode == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        if ignored:
            names = [n for n, p in module.named_parameters() if p in ignored]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        model = module.model if hasattr(module, "model") else module
        for block in [*model.layers, *model.mtp]:
            fully_shard(block, ignored_params={p for p in block.parameters() if p in ignored} or None)
        fully_shard(module, ignored_params=ignored or None)
        return module
    raise ValueError(f"unknown parallel mode {mode!r} (ddp or fsdp)")


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= env.world_size
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
