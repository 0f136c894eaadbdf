"""Hugging Face checkpoints of DeepSeek-V3/R1/V2: load, save and convert, in the official tensor layout.

A model directory holds `config.json` and `model.safetensors`, or shards `model-00001-of-0000N.safetensors` with
`model.safetensors.index.json`. Only safetensors is ever read (no pickle: loading cannot run code).

Names, official checkpoint -> nanoseek (per layer N < num_hidden_layers):
    model.embed_tokens / model.norm / lm_head                       -> embed / norm / head
    model.layers.N.{input,post_attention}_layernorm                 -> layers.N.{attn,ffn}_norm
    self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}          -> attn.{wq | wq_a, q_norm, wq_b}
    self_attn.{kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj} -> attn.{wkv_a, kv_norm, wkv_b, wo}
    mlp.{gate,down,up}_proj (dense)                                 -> ffn.{w1,w2,w3}
    mlp.gate.weight, mlp.gate.e_score_correction_bias               -> ffn.gate.weight, ffn.gate.bias (fp32)
    mlp.shared_experts.{gate,down,up}_proj                          -> ffn.shared_experts.{w1,w2,w3}
    mlp.experts.E.{gate,up}_proj                                    -> ffn.experts.w13[E, :I], w13[E, I:]
    mlp.experts.E.down_proj                                         -> ffn.experts.w2[E]
    (transformers' fused mlp.experts.gate_up_proj (E,2I,d), mlp.experts.down_proj (E,d,I) are read as well)
MTP module k lives at model.layers.{L+k}: enorm, hnorm, eh_proj, shared_head.norm (-> mtp.k.norm) and the block's
tensors under the usual layer names (-> mtp.k.block.*); its embed_tokens and shared_head.head are copies of the
main embedding and head: shape-checked and skipped on load, written on save (vLLM's deepseek_mtp reads them).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .fp8 import (FP8_DTYPE, SCALE_SUFFIX, check_fp8_tensor, check_quantization_config, dequantize_fp8_blockwise,
                  fp8_quantization_config, quantize_fp8_blockwise, scale_shape)
from .model import Transformer
from .memory import ModelTooLargeError, check_memory

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # buffers of old checkpoints, recomputed
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt)$|.*\.index\.json$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
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


# ------------------------------------------------------------------------------------------ the name map
@dataclass(frozen=True)
class _Slot:
    param: str  # nanoseek state_dict key
    index: tuple = ()  # where in that tensor: () whole, (e,) one expert, (e, rows) part of one expert


@dataclass
class _Names:
    slots: dict[str, _Slot]  # canonical checkpoint name -> place in the model
    fused: dict[str, tuple[_Slot, list[str]]]  # transformers' fused expert name -> (place, canonical names covered)
    copies: dict[str, str]  # MTP copies of the embedding/head -> the nanoseek tensor they copy


def _tensor_names(cfg: ModelConfig, n_mtp: int) -> _Names:
    names = _Names({}, {}, {})
    add = lambda hf, ns, index=(): names.slots.__setitem__(hf, _Slot(ns, index))  # noqa: E731
    add("model.embed_tokens.weight", "embed.weight")
    for i in range(cfg.num_hidden_layers):
        _block_names(cfg, names, f"model.layers.{i}.", f"layers.{i}.", cfg.is_moe_layer(i))
    add("model.norm.weight", "norm.weight")
    if not cfg.tie_word_embeddings:
        add("lm_head.weight", "head.weight")
    for k in range(n_mtp):
        hf, ns = f"model.layers.{cfg.num_hidden_layers + k}.", f"mtp.{k}."
        for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight"):
            add(hf + part, ns + part)
        _block_names(cfg, names, hf, ns + "block.", cfg.is_moe)
        add(hf + "shared_head.norm.weight", ns + "norm.weight")
        names.copies[hf + "embed_tokens.weight"] = "embed.weight"
        names.copies[hf + "shared_head.head.weight"] = "head.weight"
    return names


def _block_names(cfg: ModelConfig, names: _Names, hf: str, ns: str, moe: bool) -> None:
    add = lambda h, n, index=(): names.slots.__setitem__(hf + h, _Slot(ns + n, index))  # noqa: E731
    add("input_layernorm.weight", "attn_norm.weight")
    linears = [("q_proj", "wq", False)] if cfg.q_lora_rank is None else [("q_a_proj", "wq_a", True),
                                                                         ("q_b_proj", "wq_b", False)]
    linears += [("kv_a_proj_with_mqa", "wkv_a", True), ("kv_b_proj", "wkv_b", False), ("o_proj", "wo", True)]
    for h, n, has_bias in linears:
        add(f"self_attn.{h}.weight", f"attn.{n}.weight")
        if has_bias and cfg.attention_bias:
            add(f"self_attn.{h}.bias", f"attn.{n}.bias")
    if cfg.q_lora_rank is not None:
        add("self_attn.q_a_layernorm.weight", "attn.q_norm.weight")
    add("self_attn.kv_a_layernorm.weight", "attn.kv_norm.weight")
    add("post_attention_layernorm.weight", "ffn_norm.weight")
    mlp = [("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")]
    if not moe:
        for h, n in mlp:
            add(f"mlp.{h}.weight", f"ffn.{n}.weight")
        return
    add("mlp.gate.weight", "ffn.gate.weight")
    if cfg.topk_method == "noaux_tc":
        add("mlp.gate.e_score_correction_bias", "ffn.gate.bias")
    if cfg.n_shared_experts:
        for h, n in mlp:
            add(f"mlp.shared_experts.{h}.weight", f"ffn.shared_experts.{n}.weight")
    inter, w13, w2 = cfg.moe_intermediate_size, ns + "ffn.experts.w13", ns + "ffn.experts.w2"
    gate_up, down = [], []
    for e in range(cfg.n_routed_experts):
        p = f"mlp.experts.{e}."
        add(p + "gate_proj.weight", "ffn.experts.w13", (e, slice(0, inter)))  # w13 = [w1; w3] rows per expert
        add(p + "up_proj.weight", "ffn.experts.w13", (e, slice(inter, 2 * inter)))
        add(p + "down_proj.weight", "ffn.experts.w2", (e,))
        gate_up += [hf + p + "gate_proj.weight", hf + p + "up_proj.weight"]
        down.append(hf + p + "down_proj.weight")
    names.fused[hf + "mlp.experts.gate_up_proj"] = (_Slot(w13), gate_up)  # transformers 5: [gate; up] rows
    names.fused[hf + "mlp.experts.down_proj"] = (_Slot(w2), down)


def _rope_row_perm(cfg: ModelConfig, name: str, rows: int) -> torch.Tensor | None:
    """Rows permutation from the rotate-half layout (transformers' rope_interleave=false: pairs (j, j + r/2)) to the
    interleaved layout of the released weights (pairs (2j, 2j+1)): W_inter[o + 2j] = W_half[o + j],
    W_inter[o + 2j + 1] = W_half[o + j + r/2], applied to the rope rows o.. of each head's query and of k_pe."""
    r = cfg.qk_rope_head_dim
    pair = torch.arange(r).view(2, r // 2).t().flatten()
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
        perm = torch.arange(rows).view(cfg.num_attention_heads, cfg.qk_head_dim)
        perm[:, cfg.qk_nope_head_dim:] = perm[:, cfg.qk_nope_head_dim:][:, pair]
        return perm.flatten()
    if name.endswith(("self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_a_proj_with_mqa.bias")):
        perm = torch.arange(rows)
        perm[cfg.kv_lora_rank:] = cfg.kv_lora_rank + pair
        return perm
    return None


# ------------------------------------------------------------------------------------------ reading
def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a model directory, with file-specific errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a model directory")
    p = path / CONFIG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing (a model directory needs config.json)")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object")
    if "dtype" in d:  # transformers 5 writes `dtype`, older versions and the official configs `torch_dtype`
        dt = d.pop("dtype")
        d.setdefault("torch_dtype", dt)
    if d.get("model_type") == "deepseek_v2":
        # transformers writes null groups for V2 greedy routing; the official V2 value is 1 group (config.py
        # would otherwise fall back to the V3 defaults 8/4).
        for k in ("n_group", "topk_group"):
            if d.get(k) is None:
                d[k] = 1
    try:
        cfg = ModelConfig.from_dict(d)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    check_quantization_config(cfg.extra.get("quantization_config"), str(p))
    return cfg


@dataclass
class _TensorInfo:
    file: Path
    dtype: str  # safetensors dtype name: F32, BF16, F8_E4M3, ...
    shape: tuple[int, ...]


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except SafetensorError as e:
        raise ValueError(f"{file}: not a valid safetensors file, corrupt or truncated ({e})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: missing") from None


def _weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid index (needs a JSON 'weight_map': {e!r})") from None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ValueError(f"{index}: 'weight_map' must map tensor names to file names")
        files = []
        for name in sorted(set(wm.values())):
            if Path(name).name != name:
                raise ValueError(f"{index}: shard {name!r} is not a file in the model directory")
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing (listed in {INDEX_NAME})")
            files.append(path / name)
        return files, wm
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME], None
    found = sorted(p.name for p in path.iterdir())
    pickles = [n for n in found if n.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{path}: only safetensors checkpoints are read (found {pickles[0]}, a pickle file that can "
                         "run code when loaded); re-save it with safetensors")
    shards = [n for n in found if n.endswith(".safetensors")]
    if shards:
        raise FileNotFoundError(f"{path / INDEX_NAME}: missing (needed to read the shards {shards[0]}, ...)")
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}")


def _scan(path: Path) -> dict[str, _TensorInfo]:
    """Every tensor's file, dtype and shape, from the safetensors headers alone (no data is read)."""
    files, wm = _weight_files(path)
    info: dict[str, _TensorInfo] = {}
    for file in files:
        with _open(file) as f:
            for k in f.keys():
                if k in info:
                    raise ValueError(f"tensor {k} appears in both {info[k].file.name} and {file.name}")
                sl = f.get_slice(k)
                info[k] = _TensorInfo(file, sl.get_dtype(), tuple(sl.get_shape()))
    for k, name in (wm or {}).items():
        if k not in info or info[k].file.name != name:
            raise ValueError(f"{path / INDEX_NAME}: lists tensor {k} in {name}, but that file does not contain it")
    return info


def _mtp_layers(info: dict[str, _TensorInfo], cfg: ModelConfig) -> int:
    """How many MTP modules the checkpoint holds (layers L, L+1, ... up to the config's count)."""
    present = set()
    for k in info:
        m = re.match(r"model\.layers\.(\d+)\.", k)
        if m and int(m.group(1)) >= cfg.num_hidden_layers:
            present.add(int(m.group(1)) - cfg.num_hidden_layers)
    n = 0
    while n < cfg.num_nextn_predict_layers and n in present:
        n += 1
    return n


class _Reader:
    """Tensors by name from the checkpoint's memory-mapped files. A file is opened when first needed and closed
    as soon as the last of its `wanted` tensors has been read, so the mappings of finished shards are dropped."""

    def __init__(self, info: dict[str, _TensorInfo], wanted: list[str]):
        self.info, self._handles = info, {}
        self._left: dict[Path, int] = {}
        for k in wanted:
            self._left[info[k].file] = self._left.get(info[k].file, 0) + 1

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles.clear()

    def get(self, name: str) -> torch.Tensor:
        file = self.info[name].file
        if file not in self._handles:
            self._handles[file] = _open(file).__enter__()
        try:
            t = self._handles[file].get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{file}: cannot read tensor {name}, corrupt or truncated ({e})") from None
        self._left[file] = self._left.get(file, 1) - 1
        if self._left[file] <= 0:
            self._handles.pop(file).__exit__(None, None, None)
        return t


def with_scales(names: list[str], info: dict[str, _TensorInfo]) -> list[str]:
    """The tensors to read for `names`: each FP8 weight with its `_scale_inv`."""
    return names + [k + SCALE_SUFFIX for k in names if info[k].dtype.startswith("F8")]


def _plan_load(info: dict[str, _TensorInfo], names: _Names, meta: dict[str, torch.Tensor],
               block: tuple[int, int] | None, skip: Callable[[str], bool]) -> dict[str, _Slot]:
    """Check every checkpoint tensor against the model before reading any data: unexpected, missing, shape and
    FP8 scale errors all name the tensor. Returns what to load (checkpoint name -> place)."""
    todo: dict[str, _Slot] = {}
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
    info = _scan(path)
    n_mtp = _mtp_layers(info, cfg) if mtp else 0
    all_mtp = cfg.num_nextn_predict_layers
    cfg = cfg.replace(num_nextn_predict_layers=n_mtp)
    cfg.extra.pop("quantization_config", None)  # the loaded model holds dequantised weights

    names = _tensor_names(cfg, n_mtp)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to(dtype)
    meta = model.state_dict()
    _check_names_cover(names, meta)
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
    with torch.no_grad(), _Reader(info, with_scales(order, info)) as reader:
        for k in order:
            t = reader.get(k)
            if t.dtype == FP8_DTYPE:
                t = dequantize_fp8_blockwise(t, reader.get(k + SCALE_SUFFIX), block, torch.float32, k)
            perm = _rope_row_perm(cfg, k, t.shape[0]) if rope_half else None
            if perm is not None:
                t = t[perm]
            slot = todo[k]
            state[slot.param][slot.index].copy_(t)
    cfg.extra.pop("rope_interleave", None)  # loaded weights are always in the interleaved layout
    return model.eval()


def _check_names_cover(names: _Names, meta: dict[str, torch.Tensor]) -> None:
    """The name map must place something in every tensor of the model (guards against model changes)."""
    targets = {s.param for s in names.slots.values()}
    left = [k for k in meta if k not in targets and not (k == "head.weight" and "lm_head.weight" not in names.slots)]
    unknown = sorted(targets - set(meta))
    if left or unknown:
        raise RuntimeError(f"nanoseek checkpoint name map out of date: model tensors {left[:3]} unmapped, "
                           f"mapped names {unknown[:3]} not in the model")


# ------------------------------------------------------------------------------------------ writing
def parse_size(size: int | str) -> int:
    """Bytes from 5_000_000_000, '5GB' (10^9) or '4GiB' (2^30), as transformers' max_shard_size."""
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"max_shard_size: cannot read {size!r} (e.g. '5GB', '500MB' or a number of bytes)")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tensors(out: Path, sizes: list[tuple[str, int]], get: Callable[[str], torch.Tensor],
                   max_shard_size: int | str) -> None:
    """`model.safetensors`, or shards of at most max_shard_size bytes (a bigger tensor gets a shard of its own)
    plus the index. get(name) makes each tensor only when its shard is written: one shard in memory at a time."""
    limit = parse_size(max_shard_size)
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
        _write_json(out / INDEX_NAME, {"metadata": {"total_size": sum(n for _, n in sizes)},
                                       "weight_map": weight_map})


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _remove_dead_leftovers(path: Path) -> None:
    """Temporary siblings (`.NAME.tmp-PID-*`) that a killed writer left behind: removed when that process is gone
    (a live one may still be writing)."""
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        m = re.match(rf"\.{re.escape(path.name)}\.tmp-(\d+)-", p.name)
        if not m or not p.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (PermissionError, OverflowError):  # alive (someone else's), or not a PID
            pass


def _atomic_dir(path: str | os.PathLike, fill: Callable[[Path], None], carry_from: Path | None = None) -> Path:
    """Build the directory in a temporary sibling, fsync it, then rename it into place. An existing directory is
    replaced (its non-weight files, e.g. the tokenizer, are carried over); a crash at any point leaves either the
    old directory or the new one at `path`, never a half-written one."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    old: Path | None = None
    try:
        fill(tmp)
        for src in (carry_from, path if path.is_dir() else None):
            if src is not None:
                _carry_over(src, tmp, _not_weights)
        for root, _, files in os.walk(tmp):
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    _fsync(Path(root, f))
            _fsync(Path(root))
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


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


# The linear weights the official FP8 checkpoints store in float8_e4m3fn: every one inside the decoder layers (the
# MTP block's included); never the router, norms, embeddings, heads or eh_proj.
_FP8_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                         r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight")


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
    names = _tensor_names(cfg, n_mtp)
    state = model.state_dict()
    _check_names_cover(names, state)
    sources = {k: (s.param, s.index) for k, s in names.slots.items()}
    sources.update({k: (src, ()) for k, src in names.copies.items()})
    view = lambda k: state[sources[k][0]][sources[k][1]]  # noqa: E731
    sizes: list[tuple[str, int]] = []
    for k in sources:
        t = view(k)
        if fp8 and _FP8_WEIGHT.fullmatch(k):
            sizes += [(k, t.numel()), (k + SCALE_SUFFIX, 4 * math.prod(scale_shape(t.shape, (128, 128))))]
        else:
            sizes.append((k, t.numel() * t.element_size()))
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the last weight quantised, for its scale

    def get(k: str) -> torch.Tensor:
        base = k.removesuffix(SCALE_SUFFIX)
        if base not in sources or (base == k and not (fp8 and _FP8_WEIGHT.fullmatch(k))):
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
        _write_json(out / CONFIG_NAME, config)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, out)

    with torch.no_grad():
        return _atomic_dir(path, fill)
