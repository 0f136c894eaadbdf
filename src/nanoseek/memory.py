"""Will a model fit? The bytes of a model's parameters (and, to train it, of its gradients and optimizer state) from
its config alone, against the memory free on a device.

Checked before a model is allocated from a config that came from outside (a model directory's config.json, a
training run's settings), so that a config asking for a million layers is a one-line error naming the fields, not a
process growing toward the OOM killer.
"""
from __future__ import annotations

import os

import torch

from .config import ModelConfig
from .info import block_params, count


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


# Training holds four fp32 copies of every parameter: the weights, their gradients and AdamW's two moments (exp_avg,
# exp_avg_sq). Activations come on top and depend on the batch; they are not counted.
TRAINING_COPIES = 4


def check_memory(cfg: ModelConfig, device: str | torch.device, dtype: torch.dtype, *, training: bool = False,
                 shards: int = 1) -> None:
    """Raise ModelTooLargeError, naming the fields that drive the size, when the model needs more memory than
    `device` has free: its parameters in `dtype`, or with `training` the TRAINING_COPIES fp32 copies of training
    (divided over `shards` processes when FSDP shards them). Building on the meta device allocates nothing and is
    never refused."""
    device = torch.device(device)
    if device.type == "meta":
        return
    free = available_memory(device)
    if free is None:
        return
    dt = str(dtype).removeprefix("torch.")
    need = model_bytes(cfg, dtype)
    what = f"for its parameters in {dt}"
    if training:
        need = -(-need * TRAINING_COPIES // max(1, shards))
        what = (f"to train (weights, gradients and AdamW's two moments in {dt}"
                f"{f', sharded over {shards} processes' if shards > 1 else ''}; activations not counted)")
    if need > free:
        raise ModelTooLargeError(
            f"the model needs ~{_size(need)} {what} but {_size(free)} is available on {device}: "
            f"{'; '.join(_size_drivers(cfg, dtype.itemsize))}. Shrink these fields or use a smaller dtype "
            f"(build it under torch.device('meta') to inspect it without memory)")
