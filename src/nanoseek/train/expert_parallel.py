"""Expert parallelism (EP), applied to an unchanged model from outside it, as DeepSeek-V3 trains (64-way EP).

The world of W processes is split into W / N expert-parallel groups of N consecutive ranks. In every MoE layer,
rank r of a group keeps only routed experts [r·E/N, (r+1)·E/N) of the stacked weights (w13, w2); the gate, the
shared experts and everything else stay whole on every rank and are data-parallel (DDP or FSDP2), so every rank
also works on its own slice of the batch. A routed expert's forward becomes:

    sort this rank's (token, expert) pairs by expert        -> rows grouped by destination rank
    all_to_all(counts per expert)                           -> how many rows each rank sends me, per local expert
    all_to_all_single(rows)                                 -> dispatch: every row to the rank holding its expert
    grouped SwiGLU of each local expert on its rows
    all_to_all_single(outputs)                              -> combine: every row back to the rank of its token
    y = Σ_k w_k · row_k  (index_add into the tokens)

Both all-to-alls are torch's differentiable all_to_all_single_autograd, so the backward sends gradients the
reverse way. Gradients: the data-parallel wrapper ignores the expert shards; their gradient on a rank is the sum over
its group's losses, so `finish_grads` sums it over the ranks holding the same shard in the other groups and
divides by W: exactly the data-parallel mean a single process computes on the global batch. Gradient clipping
adds the shards' squared norms over the group (`clip_grad_norm_`).

Checkpoints hold whole experts (`gather_state` / `shard_state`), so a run resumes with another world size or EP
size; `unshard` puts whole experts back into the model for the Hugging Face export.
"""
from __future__ import annotations

import types
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from ..model.moe import MoE, expert_swiglu
from .distributed import DistEnv

EXPERT_PARAMS = ("experts.w13", "experts.w2")


class ExpertParallel:
    def __init__(self, model: nn.Module, env: DistEnv, size: int):
        W = env.world_size
        if size < 1 or W % size:
            raise ValueError(f"expert_parallel: {size} does not divide the {W} process(es) (launch with torchrun "
                             f"--nproc-per-node a multiple of {size})")
        self.moes = [m for m in model.modules() if isinstance(m, MoE)]
        if not self.moes:
            raise ValueError("expert_parallel: the model has no MoE layers (a dense model has no experts to split)")
        for moe in self.moes:
            if moe.n_experts % size:
                raise ValueError(f"expert_parallel: n_routed_experts {moe.n_experts} is not divisible by {size}")
        self.size, self.world = size, W
        self.rank = env.rank % size
        self.sent_bytes = 0  # rows this rank sent to other ranks (dispatch + combine, forward and backward)
        self.group: Any = None
        self.replicas: Any = None
        for g in range(W // size):  # every rank creates every group, in the same order
            ranks = list(range(g * size, (g + 1) * size))
            pg = dist.new_group(ranks)
            if env.rank in ranks:
                self.group = pg
        if W > size:
            for i in range(size):
                ranks = list(range(i, W, size))
                pg = dist.new_group(ranks)
                if env.rank in ranks:
                    self.replicas = pg
        for moe in self.moes:
            E = moe.n_experts
            n = E // size
            ex = moe.experts
            lo = self.rank * n
            ex.w13 = nn.Parameter(ex.w13.detach()[lo:lo + n].clone())
            ex.w2 = nn.Parameter(ex.w2.detach()[lo:lo + n].clone())
            ex.n_total, ex.first = E, lo
            ex.forward = types.MethodType(_make_forward(self), ex)

    # ------------------------------------------------------------------ parameters
    def params(self) -> list[nn.Parameter]:
        return [p for m in self.moes for p in (m.experts.w13, m.experts.w2)]

    def param_names(self, module: nn.Module) -> list[str]:
        ids = {id(p) for p in self.params()}
        return [n for n, p in module.named_parameters() if id(p) in ids]

    @torch.no_grad()
    def finish_grads(self) -> None:
        """After the last backward of a step: Σ over the replicas of each shard, / W (the data-parallel mean)."""
        for p in self.params():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self.replicas is not None:
                dist.all_reduce(p.grad, group=self.replicas)
            p.grad /= self.world

    @torch.no_grad()
    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """clip_grad_norm_ over whole experts: the replicated gradients' squared norm (the same on every rank) plus
        the shards' summed over the expert-parallel group."""
        mine = {id(p) for p in self.params()}
        rest = [p.grad for p in params if p.grad is not None and id(p) not in mine]
        shards = [p.grad for p in self.params()]  # finish_grads gave every shard a gradient
        ex = _local_sq(shards)
        dist.all_reduce(ex, group=self.group)
        total = (_local_sq(rest).to(ex.device) + ex).sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch's clip_grad_norm_
        for g in [*rest, *shards]:
            g.mul_(coef.to(g.device, g.dtype))
        return total

    # ------------------------------------------------------------------ checkpoints and export
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts)

    def gather_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, Any],
                     optim_sd: dict[str, Any]) -> None:
        """Whole expert stacks (weights and AdamW moments) into the state dicts `get_state_dict(module, optimizer)`
        returned, in place. Collective: every rank gathers from its live shards (a full state dict offloaded to the
        CPU is filled on rank 0 only)."""
        names = {id(p): n for n, p in module.named_parameters()}
        for p in self.params():  # the same order on every rank
            name = names[id(p)]
            full = self._gather(p.detach())
            if name in model_sd:
                model_sd[name] = full.to(model_sd[name].device)
            st = optimizer.state.get(p, {})
            for k in sorted(st):
                if torch.is_tensor(st[k]) and st[k].dim() > 0:
                    full = self._gather(st[k])
                    if name in optim_sd.get("state", {}):
                        optim_sd["state"][name][k] = full.to(optim_sd["state"][name][k].device)

    def shard_state(self, model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> None:
        """Whole expert stacks from a checkpoint (every rank reads it) cut to this rank's shards, in place."""
        def cut(t: torch.Tensor) -> torch.Tensor:
            n = t.shape[0] // self.size
            return t[self.rank * n:(self.rank + 1) * n].clone()
        for k in sorted(model_sd):
            if k.endswith(EXPERT_PARAMS):
                model_sd[k] = cut(model_sd[k])
        for k, st in optim_sd.get("state", {}).items():
            if k.endswith(EXPERT_PARAMS):
                for name in list(st):
                    if torch.is_tensor(st[name]) and st[name].dim() > 0:
                        st[name] = cut(st[name])

    @torch.no_grad()
    def unshard(self) -> None:
        """Whole experts back in the model (collective), the plain forward restored: for the export."""
        for moe in self.moes:
            ex = moe.experts
            ex.w13 = nn.Parameter(self._gather(ex.w13.detach()))
            ex.w2 = nn.Parameter(self._gather(ex.w2.detach()))
            del ex.forward
        self.moes = []


def _local_sq(grads: list[torch.Tensor]) -> torch.Tensor:
    """Σ g² of gradients that may be FSDP2 DTensors (sharded: each rank's part summed over the world)."""
    plain, sharded = [], []
    for g in grads:
        (sharded if hasattr(g, "to_local") else plain).append(g)
    sq = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else None)
    for g in plain:
        sq = sq + g.detach().float().pow(2).sum()
    if sharded:
        part = torch.zeros((), dtype=torch.float32, device=sq.device)
        for g in sharded:
            part = part + g.to_local().detach().float().pow(2).sum()
        dist.all_reduce(part)
        sq = sq + part
    return sq


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
    """Rows of x, in_splits[j] of them to rank j; returns the rows received, out_splits[i] from rank i. Its backward
    is the reverse all-to-all of the gradients."""
    return funcol.wait_tensor(funcol.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group))


def _make_forward(ep: ExpertParallel):
    def forward(self: nn.Module, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """Experts.forward across the group: x (n, dim) this rank's tokens; counts (E,) per global expert."""
        N, n_local = ep.size, self.n_total // ep.size
        flat = indices.flatten()
        order = flat.argsort(stable=True)  # grouped by expert, hence by destination rank
        token = order // indices.shape[1]
        w_sorted = weights.flatten()[order]
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        xs = x.to(dtype).index_select(0, token)
        send = counts.view(N, n_local)  # rows for rank j's experts
        recv = torch.empty_like(send)  # recv[i, e]: rows rank i sends for my local expert e
        dist.all_to_all_single(recv, send.contiguous(), group=ep.group)
        in_splits, out_splits = send.sum(1).tolist(), recv.sum(1).tolist()
        # bytes leaving this rank: dispatched rows and combined outputs, each sent again as gradients in backward
        others = sum(in_splits) - in_splits[ep.rank] + sum(out_splits) - out_splits[ep.rank]
        ep.sent_bytes += others * xs.shape[1] * xs.element_size() * (2 if torch.is_grad_enabled() else 1)
        rows = _all_to_all(xs, out_splits, in_splits, ep.group)
        # received rows come by source rank, then by local expert: regroup by local expert
        local_expert = torch.arange(n_local, device=x.device).repeat(N).repeat_interleave(recv.flatten())
        perm = local_expert.argsort(stable=True)
        ys = expert_swiglu(rows.index_select(0, perm), self.w13.to(dtype), self.w2.to(dtype), recv.sum(0),
                           self.inter_dim, self.gmm)
        ys = torch.zeros_like(ys).index_copy(0, perm, ys)  # back to the order they arrived in
        back = _all_to_all(ys, in_splits, out_splits, ep.group)
        out = (back * w_sorted[:, None]).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, out)
    return forward
