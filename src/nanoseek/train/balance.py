"""DeepSeek-V3 load balancing, applied to an unchanged model through forward hooks.

Auxiliary-loss-free balancing: after each optimizer step every routed expert's selection bias moves against its load,
    b_i ← b_i − γ · sign(load_i − mean load)
(overloaded experts are chosen less, underloaded more), outside autograd.

Complementary sequence-wise balance loss (small α), per sequence of T tokens with K_r experts chosen per token:
    f_i = E / (K_r·T) · Σ_t 1[expert i chosen for token t],   P_i = 1/T · Σ_t s_{i,t} / Σ_j s_{j,t},
    L_bal = α · Σ_i f_i · P_i
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..model.moe import Gate, MoE


class LoadBalancer:
    def __init__(self, model: nn.Module, gamma: float = 1e-3, seq_aux_alpha: float = 0.0):
        self.gamma = gamma
        self.alpha = seq_aux_alpha
        self.moes: dict[str, MoE] = {n: m for n, m in model.named_modules() if isinstance(m, MoE)}
        self.load = {n: torch.zeros(m.n_experts, dtype=torch.float64) for n, m in self.moes.items()}
        self.batch_size = 1
        self.token_mask: torch.Tensor | None = None  # (batch, seq) True for the tokens whose routing counts
        self._aux: list[torch.Tensor] = []
        self._hooks = [m.register_forward_hook(self._count_hook(n)) for n, m in self.moes.items()]
        self._hooks += [m.gate.register_forward_hook(self._masked_count_hook(n)) for n, m in self.moes.items()]
        if seq_aux_alpha > 0:
            self._hooks += [m.gate.register_forward_hook(self._aux_hook) for m in self.moes.values()]

    def _count_hook(self, name: str):
        def hook(module: MoE, inputs, output) -> None:
            if module.training and self.token_mask is None:
                self.load[name] += module.tokens_per_expert.detach().to("cpu", torch.float64)
        return hook

    def _masked_count_hook(self, name: str):
        """With a token mask (e.g. right-padding of packed RL batches), only the real tokens' choices count."""
        def hook(gate: Gate, inputs, output) -> None:
            if not gate.training or self.token_mask is None:
                return
            indices = output[1]  # (tokens, k)
            keep = self.token_mask.reshape(-1).to(indices.device)
            chosen = indices[keep].flatten()
            counts = torch.zeros(self.load[name].shape[0], dtype=torch.float64, device=indices.device)
            counts.index_add_(0, chosen, torch.ones_like(chosen, dtype=torch.float64))
            self.load[name] += counts.cpu()
        return hook

    def _aux_hook(self, gate: Gate, inputs, output) -> None:
        if not gate.training:
            return
        x, (_, indices) = inputs[0], output
        logits = F.linear(x.float(), gate.weight.float())
        scores = logits.sigmoid() if gate.score_func == "sigmoid" else logits.softmax(-1)
        E, B = scores.shape[-1], self.batch_size
        scores = scores.view(B, -1, E)
        T, K = scores.shape[1], indices.shape[-1]
        chosen = torch.zeros_like(scores).scatter_(-1, indices.view(B, T, K), 1.0)
        f = chosen.sum(1) * E / (K * T)
        p = (scores / scores.sum(-1, keepdim=True)).mean(1)
        self._aux.append(self.alpha * (f * p).sum(-1).mean())

    def begin_forward(self, batch_size: int, token_mask: torch.Tensor | None = None) -> None:
        """Call before each training forward: the sequence-wise loss needs the batch dimension; `token_mask`
        (batch, seq), when given, restricts the load statistics to the tokens it marks True."""
        self.batch_size = batch_size
        self.token_mask = None if token_mask is None else token_mask.bool()
        self._aux.clear()

    def aux_loss(self) -> torch.Tensor | None:
        return torch.stack(self._aux).sum() if self._aux else None

    @torch.no_grad()
    def step(self) -> dict[str, dict[str, float]]:
        """After the optimizer step: update the biases from this step's load, return load statistics, reset."""
        stats = {}
        for name, moe in self.moes.items():
            load = self.load[name]
            if dist.is_available() and dist.is_initialized():  # every rank must apply the same update
                t = load.to(moe.gate.weight.device)
                dist.all_reduce(t)
                load = t.cpu()
            mean = load.mean()
            if mean > 0:
                stats[name] = {"max_over_mean": float(load.max() / mean), "cv": float(load.std() / mean)}
                if self.gamma > 0 and moe.gate.bias is not None:
                    moe.gate.bias -= self.gamma * torch.sign(load - mean).to(moe.gate.bias)
            self.load[name] = torch.zeros_like(load)
        self.token_mask = None  # a mask belongs to the forwards of one step
        return stats

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
