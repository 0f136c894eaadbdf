"""Block, multi-token-prediction module and the full DeepSeek-V3 Transformer.

    h   = x + MLA(attn_norm(x));   out = h + FFN(ffn_norm(h))        FFN = dense SwiGLU or DeepSeekMoE
    MTP depth k at position i:  h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]),
                                h^k_i = norm_k(Block_k(h'_i)),  logits = head(h^k_i)  predicting t_{i+k+1}
h^0 is the main model's final hidden state (after its final norm), as in vLLM and transformers.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..config import ModelConfig
from ..info import block_params, count
from .attention import MLA, LatentCacheLike
from .layers import MLP, RMSNorm, init_parameters
from .moe import MoE
from .rope import rope_cos_sin


class ModelTooLargeError(ValueError, MemoryError):
    """The parameters of a model cannot fit in the free memory of the device it would be built on. A ValueError
    (a config asked for it, and the CLIs print those as one line) and a MemoryError (what it stands in for)."""


def model_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of every parameter and buffer of `Transformer(cfg).to(dtype)`, from the config alone (nanoseek.info's
    counts, nothing allocated): parameters in `dtype`, the routing bias in fp32 (it stays fp32 through .to(dtype)),
    each MoE's per-expert token counters in int64."""
    info = count(cfg)
    moe_layers = sum(map(cfg.is_moe_layer, range(cfg.num_hidden_layers)))
    moe_layers += cfg.num_nextn_predict_layers if cfg.is_moe else 0  # an MTP block is MoE when the model is
    experts = moe_layers * cfg.n_routed_experts
    bias = experts if cfg.topk_method == "noaux_tc" else 0  # info counts it among the parameters
    params = info["total_params"] + info["mtp_params"] - bias
    return params * dtype.itemsize + bias * 4 + experts * 8


def available_memory(device: str | torch.device) -> int | None:
    """Bytes free for new tensors on `device`, or None where that cannot be known (then nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            # blocks PyTorch's caching allocator holds but no tensor uses are free to it, though not to the driver
            return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError):  # no usable CUDA: let the allocation itself give torch's error
            return None
    if device.type != "cpu":
        return None
    try:  # Linux: MemAvailable counts the page cache the kernel can reclaim, unlike "free" pages
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # elsewhere all physical memory: free pages alone omit the reclaimable cache and would refuse models that fit
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _size_drivers(cfg: ModelConfig, itemsize: int) -> list[str]:
    """The parts of the model and the config fields that set their size, largest first."""
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    n_moe = sum(map(cfg.is_moe_layer, range(L)))
    layers = n_moe * block_params(cfg, True)[0] + (L - n_moe) * block_params(cfg, False)[0]
    kinds = [f"{n_moe} MoE with n_routed_experts={cfg.n_routed_experts} x moe_intermediate_size="
             f"{cfg.moe_intermediate_size}"] if n_moe else []
    kinds += [f"{L - n_moe} dense with intermediate_size={cfg.intermediate_size}"] if L > n_moe else []
    info = count(cfg)
    parts = [(layers, f"num_hidden_layers={L} layers of ~{_size(layers * itemsize / L)} each "
                      f"({', '.join(kinds)}; hidden_size={d})"),
             (info["total_params"] - layers, f"vocab_size={V} x hidden_size={d} (embedding"
                                             f"{'' if cfg.tie_word_embeddings else ' and output head'})"),
             (info["mtp_params"], f"num_nextn_predict_layers={cfg.num_nextn_predict_layers} MTP modules")]
    return [f"{what} = {_size(n * itemsize)}" for n, what in sorted(parts, key=lambda p: -p[0]) if n]


def check_memory(cfg: ModelConfig, device: str | torch.device, dtype: torch.dtype) -> None:
    """Raise ModelTooLargeError, naming the fields that drive the size, when the model's parameters need more memory
    than `device` has free. Building on the meta device allocates nothing and is never refused."""
    device = torch.device(device)
    if device.type == "meta":
        return
    free = available_memory(device)
    if free is None:
        return
    need = model_bytes(cfg, dtype)
    if need > free:
        dt = str(dtype).removeprefix("torch.")
        raise ModelTooLargeError(
            f"the model needs ~{_size(need)} for its parameters in {dt} but {_size(free)} is available on {device}: "
            f"{'; '.join(_size_drivers(cfg, dtype.itemsize))}. Shrink these fields or use a smaller dtype "
            f"(build it under torch.device('meta') to inspect it without memory)")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = MLA(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn: MoE | MLP = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None) -> torch.Tensor:
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
                mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return self.norm(self.block(x, cos, sin, mask, cache))


class Transformer(nn.Module):
    """DeepSeek-V3 / V2 decoder. `model(input_ids)` returns the main head's logits (batch, seq, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # Refuse a model that cannot fit before allocating any of it: a config.json with a million layers once grew
        # memory until the machine ran out. Parameters land on the default device in the default dtype (meta: none).
        check_memory(cfg, torch.get_default_device(), torch.get_default_dtype())
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
                   cache: LatentCacheLike | None) -> torch.Tensor:
        if positions is not None:
            return positions.expand(input_ids.shape) if positions.dim() == 1 else positions
        start = getattr(cache, "length", 0) if cache is not None else 0
        return torch.arange(start, start + input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)

    def forward_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None) -> torch.Tensor:
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
                mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None) -> torch.Tensor:
        return self.head(self.forward_hidden(input_ids, positions, mask, cache))

    def forward_mtp(self, input_ids: torch.Tensor, hidden: torch.Tensor,
                    positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Training-time MTP over a whole sequence. hidden: forward_hidden(input_ids). Returns, for each depth k,
        logits (batch, seq − k, vocab) where position i predicts token i + k + 1."""
        return [self.head(h) for h in self.forward_mtp_hidden(input_ids, hidden, positions)]

    def forward_mtp_hidden(self, input_ids: torch.Tensor, hidden: torch.Tensor,
                           positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """forward_mtp before the shared output head: for each depth k, (batch, seq − k, dim)."""
        pos = self._positions(input_ids, positions, None)
        out, h = [], hidden
        for k, mtp in enumerate(self.mtp, start=1):
            n = input_ids.shape[1] - k
            if n <= 0:
                break
            cos, sin = rope_cos_sin(self.config, pos[:, k:])
            h = mtp(self.embed(input_ids[:, k:]), h[:, :n], cos, sin)
            out.append(h)
        return out

    def mtp_step(self, k: int, next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                 mask: torch.Tensor | None = None, cache: LatentCacheLike | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One MTP module for drafting: embeds next_ids (the tokens after `hidden`'s positions, at `positions`),
        returns (logits, hidden) so depth k + 1 can continue from hidden."""
        cos, sin = rope_cos_sin(self.config, positions.expand(next_ids.shape) if positions.dim() == 1 else positions)
        h = self.mtp[k](self.embed(next_ids), hidden, cos, sin, mask, cache)
        return self.head(h), h

    # ------------------------------------------------------------------ statistics
    def router_stats(self) -> dict[int, torch.Tensor]:
        """Tokens per routed expert in the last forward, by layer id (MTP layers included)."""
        out = {}
        for block in [*self.layers, *(m.block for m in self.mtp)]:
            if isinstance(block.ffn, MoE):
                out[block.attn.layer_id] = block.ffn.tokens_per_expert
        return out
