"""Training checkpoints that survive crashes: model, optimizer, RNG, data position and balancing state in one file,
written atomically (temporary file, fsync, rename), the last N kept.

The file is read with torch.load(weights_only=True): tensors and plain containers only, no arbitrary code.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import re
from typing import Any

import numpy as np
import torch

from ..files import atomic_path, atomic_write, temp_glob

_NAME = re.compile(r"step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to `path` so that a crash at any moment leaves either the old file or the complete new one."""
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            torch.save(obj, f)
    except OSError as e:
        raise OSError(f"could not write checkpoint {path}: {e.strerror or e} "
                      f"(the previous checkpoint is intact)") from e


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, path) of complete checkpoints, oldest first."""
    out = []
    for p in glob.glob(os.path.join(ckpt_dir, "step_*.pt")):
        m = _NAME.search(p)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def save(ckpt_dir: str, step: int, state: dict[str, Any], keep: int) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"step_{step:07d}.pt")
    atomic_torch_save({"step": step, "rng": rng_state(), **state}, path)
    for _, old in checkpoints(ckpt_dir)[:-keep]:
        os.remove(old)
    return path


def load(path: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None


def clean_leftovers(ckpt_dir: str) -> list[str]:
    """Remove the temporary files of checkpoint writes a kill interrupted (nanoseek.files' `.step_*.pt.tmp-PID-*`,
    and `step_*.pt.tmp.PID` of earlier versions); returns them."""
    gone = []
    for pattern in (temp_glob("step_*.pt"), "step_*.pt.tmp.*"):
        for p in glob.glob(os.path.join(glob.escape(ckpt_dir), pattern)):
            with contextlib.suppress(OSError):
                os.remove(p)
                gone.append(p)
    return gone


def load_latest(ckpt_dir: str, log: Any = print) -> dict[str, Any] | None:
    """The newest readable checkpoint (None when there is none). A newest one that cannot be read (truncated by a
    failing disk, say) is reported and the previous kept one is used; an error only when none can be read."""
    clean_leftovers(ckpt_dir)
    found = checkpoints(ckpt_dir)
    errors = []
    for _, path in reversed(found):
        try:
            ckpt = load(path)
        except ValueError as e:
            errors.append(str(e))
            log(f"resume: {e}; falling back to the previous checkpoint")
            continue
        ckpt["_path"] = path
        return ckpt
    if errors:
        raise ValueError("no readable checkpoint in " + ckpt_dir + ": " + "; ".join(errors))
    return None


def truncate_log(path: str, step: int) -> int:
    """Drop the rows of a metrics.jsonl written after `step` (by a run killed after its last checkpoint), so the
    resumed run does not log those steps twice; rewritten atomically. Returns the number of rows dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a row cut short by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        atomic_write(path, "".join(keep))
    return len(lines) - len(keep)
