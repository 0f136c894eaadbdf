"""Block-wise FP8 weights in the format of the official DeepSeek-V3/R1 checkpoints.

A weight W (out, in) is stored as W_q = float8_e4m3fn and `<name>_scale_inv` (fp32) of shape
(ceil(out/128), ceil(in/128)), one scale per 128x128 block (edge blocks may be partial):

    W[i, j] = float(W_q[i, j]) · scale_inv[i // 128, j // 128]          (dequantisation, README_WEIGHTS.md)
    scale_inv[b] = max|W| over block b / 448                            (448 = largest finite e4m3fn value)

`quantization_config` in config.json: {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
"weight_block_size": [128, 128]}.
"""
from __future__ import annotations

import math
from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
SCALE_SUFFIX = "_scale_inv"  # official names: `<prefix>.weight` + `<prefix>.weight_scale_inv`


def scale_shape(shape: tuple[int, ...] | torch.Size, block: tuple[int, int]) -> tuple[int, int]:
    """(ceil(out/bo), ceil(in/bi)): one scale per block, partial edge blocks included."""
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def quantize_blocks(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """W (R, C) -> (W_q float8_e4m3fn viewed as blocks (ceil(R/bo), bo, ceil(C/bi), bi), scale_inv fp32
    (ceil(R/bo), ceil(C/bi))): the quantization itself, shared by checkpoints and FP8 training
    (nanoseek.train.fp8_train). Edge blocks are zero-padded (zeros do not change the block maximum)."""
    bo, bi = block
    out, inn = w.shape
    no, ni = scale_shape(w.shape, (bo, bi))
    if (out, inn) == (no * bo, ni * bi):
        padded = w.float()
    else:
        padded = w.new_zeros(no * bo, ni * bi, dtype=torch.float32)
        padded[:out, :inn] = w.float()
    blocks = padded.reshape(no, bo, ni, bi)
    amax = blocks.abs().amax(dim=(1, 3))
    # An all-zero block gets scale 1 (any positive value dequantises its zeros exactly).
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale_inv


def quantize_fp8_blockwise(w: torch.Tensor, block: int | tuple[int, int] = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) -> (W_q float8_e4m3fn (out, in), scale_inv fp32 (ceil(out/bo), ceil(in/bi)))."""
    if w.dim() != 2:
        raise ValueError(f"quantize_fp8_blockwise: expected a 2-D weight, got shape {tuple(w.shape)}")
    bo, bi = (block, block) if isinstance(block, int) else block
    q, scale_inv = quantize_blocks(w, (bo, bi))
    return q.reshape(q.shape[0] * bo, q.shape[2] * bi)[:w.shape[0], :w.shape[1]].contiguous(), scale_inv.contiguous()


def dequantize_fp8_blockwise(w_q: torch.Tensor, scale_inv: torch.Tensor, block: int | tuple[int, int] = 128,
                             dtype: torch.dtype = torch.float32, name: str = "weight") -> torch.Tensor:
    """W = float(W_q) · scale_inv[i // bo, j // bi], computed in fp32 and cast to `dtype`."""
    bo, bi = (block, block) if isinstance(block, int) else block
    if w_q.dim() != 2:
        raise ValueError(f"{name}: FP8 weights must be 2-D, got shape {tuple(w_q.shape)}")
    expected = scale_shape(w_q.shape, (bo, bi))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"{name}{SCALE_SUFFIX}: shape {tuple(scale_inv.shape)} does not match weight "
                         f"{tuple(w_q.shape)} with {bo}x{bi} blocks (expected {expected})")
    inn = w_q.shape[1]
    w = w_q.to(torch.float32)
    for i, row in enumerate(scale_inv.float()):  # one band of rows at a time: no full-size scale tensor
        w[i * bo:(i + 1) * bo].mul_(row.repeat_interleave(bi)[:inn])
    return w.to(dtype)


def check_quantization_config(qc: Any, where: str) -> tuple[int, int] | None:
    """Validate `quantization_config`; returns the weight block size, or None when there is none.
    Only the official block-wise e4m3 FP8 format is supported."""
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ValueError(f"{where}: quantization_config must be an object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if method != "fp8":
        raise ValueError(f"{where}: unsupported quantization {method!r}: only the official block-wise FP8 "
                         "('quant_method': 'fp8', 'fmt': 'e4m3') is supported")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"{where}: unsupported FP8 format {fmt!r}: only 'e4m3' is supported")
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError(f"{where}: unsupported FP8 activation_scheme {qc.get('activation_scheme')!r}: "
                         "only 'dynamic' is supported")
    block = qc.get("weight_block_size")
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"{where}: quantization_config.weight_block_size must be two positive integers "
                         f"(block-wise FP8), got {block!r}")
    return int(block[0]), int(block[1])


def fp8_quantization_config(block: int = 128) -> dict[str, Any]:
    """The `quantization_config` of the official FP8 checkpoints."""
    return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": [block, block]}


def check_fp8_tensor(k: str, info: dict[str, Any], block: tuple[int, int] | None) -> None:
    """An FP8 tensor of a checkpoint needs the FP8 quantization_config and a `_scale_inv` of one scale per block.
    info: name -> header entry with `.dtype` (safetensors name) and `.shape`."""
    t = info[k]
    if not t.dtype.startswith("F8"):
        return
    if block is None:
        raise ValueError(f"tensor {k} is {t.dtype} but config.json has no quantization_config")
    if t.dtype != "F8_E4M3":
        raise ValueError(f"tensor {k}: unsupported FP8 dtype {t.dtype} (only F8_E4M3)")
    scale = info.get(k + SCALE_SUFFIX)
    if scale is None:
        raise ValueError(f"tensor {k} is FP8 but {k}{SCALE_SUFFIX} is missing")
    if len(t.shape) != 2 or scale.shape != scale_shape(t.shape, block):
        raise ValueError(f"tensor {k}{SCALE_SUFFIX}: shape {list(scale.shape)} does not match weight "
                         f"{list(t.shape)} in {block[0]}x{block[1]} blocks")
