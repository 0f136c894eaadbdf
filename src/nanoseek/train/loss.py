"""The training objective as a module, so that DDP / FSDP2 wrap one forward that does everything.

    L = CE(main) + λ/D · Σ_k CE(MTP_k) + L_bal (sequence-wise balance loss, from the LoadBalancer's hooks)
Labels equal to -100 are ignored (SFT masks everything but the assistant's tokens). Each CE runs the output head
and the loss together in chunks (linear_cross_entropy): the (tokens, vocab) logits are never materialised.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model import Transformer
from ..model.layers import linear_cross_entropy


class TrainingObjective(nn.Module):
    def __init__(self, model: Transformer, mtp_lambda: float = 0.0):
        super().__init__()
        self.model = model
        self.mtp_lambda = mtp_lambda

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """input_ids, labels (b, s): labels[:, i] is the token that follows input_ids[:, i]."""
        model = self.model
        hidden = model.forward_hidden(input_ids)
        ce = linear_cross_entropy(hidden, model.head.weight, labels)
        parts = {"ce": ce.detach()}
        loss = ce
        if self.mtp_lambda > 0 and len(model.mtp):
            # depth k at position i predicts token i+k+1 = labels[:, i+k]; its input token is input_ids[:, i+k]
            losses = []
            for k, h in enumerate(model.forward_mtp_hidden(input_ids, hidden), start=1):
                losses.append(linear_cross_entropy(h, model.head.weight, labels[:, k:]))
                parts[f"mtp{k}"] = losses[-1].detach()
            if losses:
                loss = loss + self.mtp_lambda / len(model.mtp) * torch.stack(losses).sum()
        return loss, parts
