"""Shared helpers for the benchmarks: machine description, matmul peak, interleaved timing, markdown tables."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
import torch


def lscpu() -> dict[str, str]:
    """lscpu's "key: value" lines (empty where lscpu is unavailable)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def machine_info() -> dict[str, str]:
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = "not installed"

    cpu = lscpu()
    flags = set(cpu.get("Flags", "").split())
    matrix = sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f"))
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu.get("Model name", platform.processor() or "unknown"),
        "cores": str(os.cpu_count()),
        "matrix_isa": " ".join(matrix) or "none reported",
        "torch": torch.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
        "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def matmul_seconds(n: int, dtype: torch.dtype, reps: int = 3, clock: str = "wall") -> float:
    """Best time of an (n,n)@(n,n) product over `reps` runs (one untimed run first)."""
    now = time.perf_counter if clock == "wall" else time.process_time
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = now()
        a @ b
        best = min(best, now() - t)
    return best


def interleaved(fns: dict, rounds: int, warmup: int, clock: str = "wall") -> dict:
    """Call every fn once per round (ABAB..., the order rotated each round so no contender always follows the
    same one), `warmup` untimed rounds first. Returns each fn's times over the timed rounds: wall-clock, or with
    clock="cpu" this process's CPU time (robust on a machine shared with other jobs, meaningful at one thread:
    with more, idle OpenMP threads spinning at barriers count too)."""
    now = time.perf_counter if clock == "wall" else time.process_time
    names = list(fns)
    times: dict = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = now()
            fns[name]()
            dt = now() - t
            if r >= warmup:
                times[name].append(dt)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(path, key: str, title: str, body: str) -> None:
    """Replace the generated text between `<!-- key:begin -->` and `<!-- key:end -->` in the markdown file `path`,
    keeping the notes around it; the first time, append a `## title` section. Atomic: temporary file, then rename."""
    from pathlib import Path

    from nanoseek.files import atomic_write
    path = Path(path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{body.rstrip(chr(10))}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    atomic_write(path, text.encode())
