"""Reading a Hugging Face model directory: config.json, and the safetensors files (one, or shards with their index)
scanned from their headers and read tensor by tensor from memory maps. Only safetensors is ever read (no pickle:
loading cannot run code)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import ModelConfig
from .files import read_json_object
from .fp8 import SCALE_SUFFIX, check_quantization_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


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
    d = read_json_object(p)
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
class TensorInfo:
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


def scan(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's file, dtype and shape, from the safetensors headers alone (no data is read)."""
    files, wm = _weight_files(path)
    info: dict[str, TensorInfo] = {}
    for file in files:
        with _open(file) as f:
            for k in f.keys():
                if k in info:
                    raise ValueError(f"tensor {k} appears in both {info[k].file.name} and {file.name}")
                sl = f.get_slice(k)
                info[k] = TensorInfo(file, sl.get_dtype(), tuple(sl.get_shape()))
    for k, name in (wm or {}).items():
        if k not in info or info[k].file.name != name:
            raise ValueError(f"{path / INDEX_NAME}: lists tensor {k} in {name}, but that file does not contain it")
    return info


def mtp_layers(info: dict[str, TensorInfo], cfg: ModelConfig) -> int:
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


class Reader:
    """Tensors by name from the checkpoint's memory-mapped files. A file is opened when first needed and closed
    as soon as the last of its `wanted` tensors has been read, so the mappings of finished shards are dropped."""

    def __init__(self, info: dict[str, TensorInfo], wanted: list[str]):
        self.info, self._handles = info, {}
        self._left: dict[Path, int] = {}
        for k in wanted:
            self._left[info[k].file] = self._left.get(info[k].file, 0) + 1

    def __enter__(self) -> "Reader":
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


def with_scales(names: list[str], info: dict[str, TensorInfo]) -> list[str]:
    """The tensors to read for `names`: each FP8 weight with its `_scale_inv`."""
    return names + [k + SCALE_SUFFIX for k in names if info[k].dtype.startswith("F8")]

