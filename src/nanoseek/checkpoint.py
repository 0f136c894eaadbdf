"""Hugging Face checkpoints of DeepSeek-V3/R1/V2: load, save and convert, in the official tensor layout.

A model directory holds `config.json` and `model.safetensors`, or shards `model-00001-of-0000N.safetensors` with
`model.safetensors.index.json`. Only safetensors is ever read (no pickle: loading cannot run code). The official
tensor names and their places in nanoseek's model are in nanoseek.checkpoint_names; reading the files (headers,
memory-mapped tensors) is nanoseek.checkpoint_reader; every write is atomic (nanoseek.files.atomic_dir).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from .checkpoint_names import FP8_WEIGHT, Names, Slot, check_names_cover, rope_row_perm, tensor_names
from .checkpoint_reader import (CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, Reader, TensorInfo, mtp_layers, read_config,
                                scan, with_scales)
from .config import ModelConfig
from .files import atomic_dir, parse_size, write_json
from .fp8 import (FP8_DTYPE, SCALE_SUFFIX, check_fp8_tensor, check_quantization_config, dequantize_fp8_blockwise,
                  fp8_quantization_config, quantize_fp8_blockwise, scale_shape)
from .memory import ModelTooLargeError, check_memory
from .model import Transformer

__all__ = ["CONFIG_NAME", "INDEX_NAME", "WEIGHTS_NAME", "config_for_save", "convert_checkpoint", "load_pretrained",
           "read_config", "resolve_dtype", "save_pretrained", "with_scales"]

_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # buffers of old checkpoints, recomputed
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt)$|.*\.index\.json$")
_ST_ITEMSIZE = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}  # safetensors' non-float dtypes
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """torch.dtype from a dtype, a name ('bf16', 'bfloat16', 'torch.float32', ...) or None (-> default)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from bf16, fp16, fp32")
    return _DTYPES[key]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------ loading
def _plan_load(info: dict[str, TensorInfo], names: Names, meta: dict[str, torch.Tensor],
               block: tuple[int, int] | None, skip: Callable[[str], bool]) -> dict[str, Slot]:
    """Check every checkpoint tensor against the model before reading any data: unexpected, missing, shape and
    FP8 scale errors all name the tensor. Returns what to load (checkpoint name -> place)."""
    todo: dict[str, Slot] = {}
    covered: set[str] = set()
    for k, t in info.items():
        if k.endswith(SCALE_SUFFIX) and k[:-len(SCALE_SUFFIX)] in info:
            continue  # read together with its weight
        if k in names.slots or k in names.fused:
            slot, covers = names.fused[k] if k in names.fused else (names.slots[k], [k])
            expected = tuple(meta[slot.param][slot.index].shape)
            for c in covers:
                if c in covered:
                    raise ValueError(f"tensor {c} is given twice (per expert and fused as {k})")
                covered.add(c)
            todo[k] = slot
        elif k in names.copies:
            expected = tuple(meta[names.copies[k]].shape)
        elif _IGNORABLE.search(k) or skip(k):
            continue
        else:
            raise ValueError(f"unexpected tensor {k} in {t.file.name} (not part of the model that config.json "
                             "describes)")
        if t.shape != expected:
            raise ValueError(f"tensor {k} in {t.file.name}: shape {list(t.shape)} does not match the model's "
                             f"{list(expected)}")
        check_fp8_tensor(k, info, block)
    missing = [k for k in names.slots if k not in covered]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"tensor {missing[0]} is missing from the checkpoint{more}")
    return todo


def load_pretrained(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, *, mtp: bool = True) -> Transformer:
    """A Transformer from a Hugging Face DeepSeek-V3/R1/V2 directory (BF16/FP32, or the official block-wise FP8,
    dequantised on the fly). dtype: default the checkpoint's torch_dtype (bf16 for the official ones), else fp32;
    the routing bias stays fp32. mtp=False skips the MTP modules. The model is built on the meta device and every
    tensor is copied into place shard by shard from memory-mapped files, so the weights exist once."""
    path = Path(path)
    cfg = read_config(path)
    block = check_quantization_config(cfg.extra.get("quantization_config"), str(path / CONFIG_NAME))
    dtype = resolve_dtype(dtype, resolve_dtype(cfg.torch_dtype) if cfg.torch_dtype else torch.float32)
    device = torch.device(device if device is not None else "cpu")
    # Refuse a model that cannot fit before reading any weights, with the MTP modules the config declares (the
    # checkpoint may hold fewer: an upper bound by at most those modules).
    try:
        check_memory(cfg.replace(num_nextn_predict_layers=cfg.num_nextn_predict_layers if mtp else 0), device, dtype)
    except ModelTooLargeError as e:
        raise ModelTooLargeError(f"{path / CONFIG_NAME}: {e}") from None
    info = scan(path)
    n_mtp = mtp_layers(info, cfg) if mtp else 0
    all_mtp = cfg.num_nextn_predict_layers
    cfg = cfg.replace(num_nextn_predict_layers=n_mtp)
    cfg.extra.pop("quantization_config", None)  # the loaded model holds dequantised weights

    names = tensor_names(cfg, n_mtp)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to(dtype)
    meta = model.state_dict()
    check_names_cover(names, meta)
    L = cfg.num_hidden_layers
    mtp_layer = re.compile(r"model\.layers\.(\d+)\.")

    def skip(k: str) -> bool:  # the config's MTP layers that are not loaded (mtp=False, or absent)
        m = mtp_layer.match(k)
        return bool(m) and L + n_mtp <= int(m.group(1)) < L + all_mtp

    todo = _plan_load(info, names, meta, block, skip)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.head.weight = model.embed.weight
    for name, buf in model.named_buffers():
        if name not in meta:  # non-persistent buffers (counters) start at zero
            buf.zero_()
    state = model.state_dict()
    rope_half = cfg.model_type == "deepseek_v3" and cfg.extra.get("rope_interleave", True) is False
    order = sorted(todo, key=lambda k: str(info[k].file))  # shard by shard
    with torch.no_grad(), Reader(info, with_scales(order, info)) as reader:
        for k in order:
            t = reader.get(k)
            if t.dtype == FP8_DTYPE:
                t = dequantize_fp8_blockwise(t, reader.get(k + SCALE_SUFFIX), block, torch.float32, k)
            perm = rope_row_perm(cfg, k, t.shape[0]) if rope_half else None
            if perm is not None:
                t = t[perm]
            slot = todo[k]
            state[slot.param][slot.index].copy_(t)
    cfg.extra.pop("rope_interleave", None)  # loaded weights are always in the interleaved layout
    return model.eval()


# ------------------------------------------------------------------------------------------ writing
def _write_tensors(out: Path, sizes: list[tuple[str, int]], get: Callable[[str], torch.Tensor],
                   max_shard_size: int | str) -> None:
    """`model.safetensors`, or shards of at most max_shard_size bytes (a bigger tensor gets a shard of its own)
    plus the index. get(name) makes each tensor only when its shard is written: one shard in memory at a time."""
    limit = parse_size(max_shard_size, "max_shard_size")
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes:
        if shards[-1] and used + n > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    files = ([WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, shard in zip(files, shards):
        save_file({name: get(name) for name in shard}, str(out / file), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {name: file for file, shard in zip(files, shards) for name in shard}
        write_json(out / INDEX_NAME, {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map},
                   sort_keys=True, default=None)


def _carry_over(src: Path, dst: Path, keep: Callable[[str], bool]) -> None:
    for entry in src.iterdir():
        if not keep(entry.name) or (dst / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dst / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, dst / entry.name, follow_symlinks=False)


def _not_weights(name: str) -> bool:
    """Files carried over from an existing/source directory: all but weights and config.json."""
    return name != CONFIG_NAME and not _WEIGHT_FILE.fullmatch(name)


def _model_dir(path: str | os.PathLike, fill: Callable[[Path], None], carry_from: Path | None = None) -> Path:
    """Write a model directory atomically (nanoseek.files.atomic_dir): a crash at any point leaves the old directory
    or the new one, never a half-written one. The files of `carry_from` and of the directory being replaced that are
    neither weights nor config.json (a tokenizer, remote code) are carried over unless `fill` wrote them."""
    path = Path(os.path.abspath(path))

    def build(tmp: Path) -> None:
        fill(tmp)
        for src in (carry_from, path if path.is_dir() else None):
            if src is not None:
                _carry_over(src, tmp, _not_weights)
    return atomic_dir(path, build)


_TOKENIZER_FILE = re.compile(r"tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\..*|"
                             r"vocab\.json|merges\.txt")


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
        return
    src = Path(tokenizer)
    files = [p for p in src.iterdir() if _TOKENIZER_FILE.fullmatch(p.name) and p.is_file()] if src.is_dir() else []
    if not files:
        raise FileNotFoundError(f"tokenizer: no tokenizer files (tokenizer.json, tokenizer_config.json, ...) in {src}")
    for p in files:
        shutil.copy2(p, out / p.name)


def config_for_save(cfg: ModelConfig, dtype: torch.dtype, n_mtp: int) -> dict[str, Any]:
    """config.json as transformers and vLLM read it: the official field names (topk_method, scoring_func, n_group,
    topk_group, norm_topk_prob, rope_scaling with rope_theta) that transformers 5 itself no longer writes."""
    d = cfg.replace(num_nextn_predict_layers=n_mtp, torch_dtype=_dtype_name(dtype)).to_dict()
    # Dropped: the weights are not quantised; remote code (auto_map) may be absent; derived fields are recomputed.
    for k in ("quantization_config", "auto_map", "head_dim", "qk_head_dim", "rope_parameters", "dtype"):
        d.pop(k, None)
    d["dtype"] = d["torch_dtype"]  # transformers 5 reads `dtype`, older readers `torch_dtype`
    if cfg.model_type == "deepseek_v3":
        d["rope_interleave"] = True  # our weights are in the released (interleaved) RoPE layout
    return d



def _unwrap(model: Any) -> Transformer:
    """The Transformer inside torch.compile / DistributedDataParallel wrappers."""
    while not isinstance(model, Transformer):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise ValueError(f"save_pretrained: expected a nanoseek Transformer, got {type(model).__name__}")
        model = inner
    return model


def save_pretrained(model: Transformer, path: str | os.PathLike, max_shard_size: int | str = "5GB", *,
                    tokenizer: Any = None, fp8: bool = False) -> Path:
    """Write `model` as a Hugging Face checkpoint (official tensor names, MTP at model.layers.{L+k}), atomically.
    tokenizer: a directory to copy tokenizer files from, or an object with save_pretrained(dir). Files other than
    weights and config.json already in `path` (a tokenizer, say) are kept. fp8=True stores the decoder layers'
    linear weights in the official block-wise FP8 format (e4m3 + weight_scale_inv per 128x128 block)."""
    model = _unwrap(model)
    cfg = model.config
    n_mtp = len(model.mtp)
    names = tensor_names(cfg, n_mtp)
    state = model.state_dict()
    check_names_cover(names, state)
    sources = {k: (s.param, s.index) for k, s in names.slots.items()}
    sources.update({k: (src, ()) for k, src in names.copies.items()})
    view = lambda k: state[sources[k][0]][sources[k][1]]  # noqa: E731
    sizes: list[tuple[str, int]] = []
    for k in sources:
        t = view(k)
        if fp8 and FP8_WEIGHT.fullmatch(k):
            sizes += [(k, t.numel()), (k + SCALE_SUFFIX, 4 * math.prod(scale_shape(t.shape, (128, 128))))]
        else:
            sizes.append((k, t.numel() * t.element_size()))
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the last weight quantised, for its scale

    def get(k: str) -> torch.Tensor:
        base = k.removesuffix(SCALE_SUFFIX)
        if base not in sources or (base == k and not (fp8 and FP8_WEIGHT.fullmatch(k))):
            # A copy per tensor: expert slices share storage, which safetensors refuses; one shard is held.
            return view(k).detach().to("cpu", copy=True).contiguous()
        if base not in quantized:
            quantized.clear()
            quantized[base] = quantize_fp8_blockwise(view(base).detach().cpu())
        return quantized[base][0 if base == k else 1]

    config = config_for_save(cfg, model.embed.weight.dtype, n_mtp)
    if fp8:
        config["quantization_config"] = fp8_quantization_config()

    def fill(out: Path) -> None:
        _write_tensors(out, sizes, get, max_shard_size)
        write_json(out / CONFIG_NAME, config, sort_keys=True, default=None)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, out)

    with torch.no_grad():
        return _model_dir(path, fill)


# ------------------------------------------------------------------------------------------ converting
def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype = "bf16",
                       max_shard_size: int | str = "5GB") -> Path:
    """`nanoseek convert`: rewrite a checkpoint with every floating tensor in `dtype` (FP8 weights dequantised
    block-wise, their scales dropped, quantization_config removed; the routing bias stays fp32), one output shard
    in memory at a time. Tensor names and every other file (tokenizer, remote code) are kept; the write is atomic."""
    src = Path(src)
    cfg = read_config(src)
    block = check_quantization_config(cfg.extra.get("quantization_config"), str(src / CONFIG_NAME))
    dtype = resolve_dtype(dtype)
    if Path(dst).exists() and Path(dst).resolve() == src.resolve():
        raise ValueError(f"convert: destination {dst} is the source directory")
    info = scan(src)
    out_dtype: dict[str, torch.dtype | None] = {}  # None: not floating, written unchanged
    for k, t in info.items():
        weight = info.get(k.removesuffix(SCALE_SUFFIX))
        if k.endswith(SCALE_SUFFIX) and weight is not None and weight.dtype.startswith("F8"):
            continue  # consumed by its weight's dequantisation
        check_fp8_tensor(k, info, block)
        floating = t.dtype.startswith(("F", "BF"))
        out_dtype[k] = torch.float32 if k.endswith("e_score_correction_bias") else dtype if floating else None
    sizes = [(k, math.prod(info[k].shape) * (d.itemsize if d is not None else _ST_ITEMSIZE.get(info[k].dtype, 8)))
             for k, d in out_dtype.items()]
    config = json.loads((src / CONFIG_NAME).read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config["torch_dtype"] = _dtype_name(dtype)
    if "dtype" in config:
        config["dtype"] = _dtype_name(dtype)

    def fill(out: Path) -> None:
        with Reader(info, with_scales(list(out_dtype), info)) as reader:
            def get(k: str) -> torch.Tensor:
                t = reader.get(k)
                if t.dtype == FP8_DTYPE:
                    return dequantize_fp8_blockwise(t, reader.get(k + SCALE_SUFFIX), block, out_dtype[k], k)
                return t if out_dtype[k] is None else t.to(out_dtype[k]).contiguous()
            _write_tensors(out, sizes, get, max_shard_size)
        write_json(out / CONFIG_NAME, config, sort_keys=True, default=None)

    return _model_dir(dst, fill, carry_from=src)
