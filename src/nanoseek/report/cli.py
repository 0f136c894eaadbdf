"""What `nanoseek report` runs: argument definitions and the printout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL_OR_PRESET_OR_RUN_DIR",
                   help="a preset (tiny, small, deepseek-v3, ...), a model directory, or a run directory "
                        "(metrics.jsonl, and model/ if exported)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for report.md, report.json and the PNGs (default RUN_DIR/report, else "
                        "./report-NAME)")
    p.add_argument("--no-measure", action="store_true", help="skip the throughput / MFU / acceptance measurements")
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length for the attention FLOPs")
    p.add_argument("--batch", type=int, default=4, help="training measurement: sequences per step")
    p.add_argument("--train-seq", type=int, default=128, help="training measurement: tokens per sequence")
    p.add_argument("--steps", type=int, default=3, help="training measurement: timed steps (after one warm-up)")
    p.add_argument("--decode-batch", type=int, default=8, help="decode measurement: sequences (besides batch 1)")
    p.add_argument("--new-tokens", type=int, default=32, help="decode measurement: tokens generated per sequence")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the measurements")
    p.add_argument("--tokens", type=float, default=None,
                   help="training-cost section: tokens to price the model's training at (default 14.8e12, V3's)")
    p.add_argument("--mfu", type=float, default=None,
                   help="training-cost section: stated MFU (default: what V3's figures imply, else 0.4)")
    p.add_argument("--price-per-hour", type=float, default=2.0, help="training-cost section: $ per device-hour")
    p.add_argument("--compare", default=None, metavar="RUN_DIR",
                   help="training-cost section: a second run (e.g. the bf16 twin of an --fp8 run) to set beside it")


def run_report(a: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout  # looked up per call (tests replace sys.stdout)
    from .build import build_report
    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads: must be >= 1 (got {a.threads})")
        import torch
        torch.set_num_threads(a.threads)
    for name in ("seq_len", "batch", "train_seq", "steps", "decode_batch", "new_tokens"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1 (got {getattr(a, name)})")
    if a.tokens is not None and a.tokens <= 0:
        raise ValueError(f"--tokens: must be positive (got {a.tokens})")
    if a.mfu is not None and not 0 < a.mfu <= 1:
        raise ValueError(f"--mfu: must lie in (0, 1] (got {a.mfu})")
    if a.price_per_hour < 0:
        raise ValueError(f"--price-per-hour: must be >= 0 (got {a.price_per_hour})")
    if a.compare is not None and not (Path(a.compare) / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"--compare {a.compare}: not a run directory (no metrics.jsonl)")
    rep = build_report(a.target, a.out, measure_speed=not a.no_measure, seq_len=a.seq_len, batch=a.batch,
                       train_seq=a.train_seq, steps=a.steps, decode_batch=a.decode_batch, new_tokens=a.new_tokens,
                       device=a.device, tokens=a.tokens, mfu=a.mfu, price_per_hour=a.price_per_hour,
                       compare=a.compare)
    out.write(rep["markdown"])
    out.write(f"\nwrote {len(rep['files'])} files: {', '.join(rep['files'])}\n")
    return 0
