"""Block, multi-token-prediction module and the full DeepSeek-V3 Transformer.

    h   = x + MLA(attn_norm(x));   out = h + FFN(ffn_norm(h))        FFN = dense SwiGLU or DeepSeekMoE
    MTP depth k at position i:  h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]),
                                h^k_i = norm_k(Block_k(h'_i)),  logits = head(h^k_i)  predicting t_{i+k+1}
h^0 is the main model's final hidden state (after its final norm), as in vLLM and transformers.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import MLA, AttentionCache
from .layers import MLP, RMSNorm, init_parameters
from .moe import MoE
from .rope import rope_cos_sin


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = MLA(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn: MoE | MLP = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class MTP(nn.Module):
    """One multi-token-prediction module. Embedding and output head are the main model's."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.block = Block(cfg, layer_id, moe=cfg.is_moe)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # shared_head.norm in the checkpoint

    def forward(self, emb: torch.Tensor, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return self.norm(self.block(x, cos, sin, mask, cache))


class Transformer(nn.Module):
    """DeepSeek-V3 / V2 decoder. `model(input_ids)` returns the main head's logits (batch, seq, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        L = cfg.num_hidden_layers
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i, cfg.is_moe_layer(i)) for i in range(L))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.head.weight = self.embed.weight
        self.mtp = nn.ModuleList(MTP(cfg, L + k) for k in range(cfg.num_nextn_predict_layers))
        if self.head.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """Normal(0, std) for every matrix (std = initializer_range; DeepSeek-V3 used 0.006), ones for norms,
        zeros for biases and the routing bias."""
        init_parameters(self, self.config.initializer_range if std is None else std)
        for name, b in self.named_buffers():
            if name.endswith("gate.bias"):
                b.zero_()

    # ------------------------------------------------------------------ forward passes
    def _positions(self, input_ids: torch.Tensor, positions: torch.Tensor | None,
                   cache: AttentionCache | None) -> torch.Tensor:
        if positions is not None:
            return positions.expand(input_ids.shape) if positions.dim() == 1 else positions
        start = getattr(cache, "length", 0) if cache is not None else 0
        return torch.arange(start, start + input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        """Final hidden states (after the final norm), (batch, seq, dim).

        positions: (seq,) or (batch, seq); default 0.. (or continuing from cache.length). mask: bool (batch, seq,
        ctx), True where a query may attend; None means causal. With a cache, attention runs on the absorbed path
        over the cached latents."""
        pos = self._positions(input_ids, positions, cache)
        cos, sin = rope_cos_sin(self.config, pos)
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        return self.norm(h)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        return self.head(self.forward_hidden(input_ids, positions, mask, cache))

    def forward_mtp_hidden(self, input_ids: torch.Tensor, hidden: torch.Tensor,
                           positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Training-time MTP over a whole sequence. hidden: forward_hidden(input_ids). Returns, for each depth k,
        the hidden states (batch, seq − k, dim) whose `head` at position i predicts token i + k + 1."""
        pos = self._positions(input_ids, positions, None)
        out, h = [], hidden
        for k in range(1, len(self.mtp) + 1):
            n = input_ids.shape[1] - k
            if n <= 0:
                break
            h = self.mtp_step(k - 1, input_ids[:, k:], h[:, :n], pos[:, k:])
            out.append(h)
        return out

    def mtp_step(self, k: int, next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                 mask: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        """MTP module k for drafting: embeds next_ids (the tokens after `hidden`'s positions, at `positions`) and
        returns the module's hidden state (after its norm): `head` of it predicts the token after each of
        next_ids, and depth k + 1 continues from it."""
        cos, sin = rope_cos_sin(self.config, positions.expand(next_ids.shape) if positions.dim() == 1 else positions)
        return self.mtp[k](self.embed(next_ids), hidden, cos, sin, mask, cache)

    # ------------------------------------------------------------------ statistics
    def router_stats(self) -> dict[int, torch.Tensor]:
        """Tokens per routed expert in the last forward, by layer id (MTP layers included)."""
        out = {}
        for block in [*self.layers, *(m.block for m in self.mtp)]:
            if isinstance(block.ffn, MoE):
                out[block.attn.layer_id] = block.ffn.tokens_per_expert
        return out
