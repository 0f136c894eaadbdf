"""What `nanoseek report` runs: argument definitions and the printout."""
from __future__ import annotations

import argparse
import sys
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
    rep = build_report(a.target, a.out, measure_speed=not a.no_measure, seq_len=a.seq_len, batch=a.batch,
                       train_seq=a.train_seq, steps=a.steps, decode_batch=a.decode_batch, new_tokens=a.new_tokens,
                       device=a.device)
    out.write(rep["markdown"])
    out.write(f"\nwrote {len(rep['files'])} files: {', '.join(rep['files'])}\n")
    return 0
