"""Expert parallelism on CPU processes (gloo): training throughput and all-to-all traffic at 1, 2 and 4 processes,
and, on paper, DeepSeek-V3's dispatch volume at 64-way expert parallelism next to a layer's compute.

    python bench/expert_parallel.py                          # small preset, 2 x 1..4 processes, markdown
    python bench/expert_parallel.py --write BENCHMARKS.md

Each run is `nanoseek train` under torchrun with --expert_parallel equal to the number of processes (1 = the plain
single-process run), the same global batch and data (a corpus this script prepares), one torch thread per process.
tokens/s is the run's own measurement over its last logged interval; MB sent is what one rank sends to the others
per optimizer step (dispatch + combine, forward and backward), as the trainer logs it (`all_to_all_mb`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, markdown_table, write_section  # noqa: E402


def prepare_data(root: Path, vocab_size: int) -> tuple[Path, Path]:
    from nanoseek.data import prepare
    from nanoseek.data.corpora import builtin_documents
    from nanoseek.tokenizer import train_tokenizer
    docs = list(builtin_documents())
    train_tokenizer(iter(docs), min(vocab_size, 4096), root / "tok")
    prepare("builtin", str(root / "tok"), root / "data", val_fraction=0.02, progress=False)
    return root / "data", root / "tok"


def run(nproc: int, data: Path, tok: Path, out: Path, a: argparse.Namespace) -> dict:
    args = ["-m", "nanoseek.cli", "train", "--model", a.preset, "--data", str(data), "--tokenizer", str(tok),
            "--max_steps", str(a.steps), "--seq_len", str(a.seq_len), "--batch_size", str(a.global_batch // nproc),
            "--global_batch_size", str(a.global_batch), "--log_every", str(a.steps // 2), "--eval_every", "100000",
            "--ckpt_every", "100000", "--export", "false", "--progress", "false", "--threads", "1",
            "--run_dir", str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args,
                "--expert_parallel", str(nproc)]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "tokens_per_s" in r][-1]
    return {"nproc": nproc, "tokens_per_s": last["tokens_per_s"], "loss": rows[-1]["loss"],
            "mb": sum(r.get("all_to_all_mb", 0.0) for r in rows) / len(rows)}


def v3_on_paper() -> str:
    """DeepSeek-V3's routed-expert traffic per token and MoE layer at 64-way EP, against the layer's compute."""
    from nanoseek import ModelConfig
    cfg = ModelConfig.preset("deepseek-v3")
    d, k, inter = cfg.hidden_size, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    nodes = cfg.topk_group  # node-limited routing: a token reaches at most 4 nodes (8 GPUs each)
    dispatch_fp8 = nodes * d * 1  # V3 dispatches in FP8 once per node, then forwards over NVLink
    combine_bf16 = nodes * d * 2  # and combines in BF16
    unlimited = k * d * (1 + 2)
    flops = 2 * (k + cfg.n_shared_experts) * 3 * d * inter  # forward MACs x 2 of the 9 experts a token runs
    ib, peak = 50e9, 989e12  # 400 Gb/s InfiniBand per GPU; H800 dense BF16 peak
    rows = [["dispatch (FP8) + combine (BF16), node-limited to 4 nodes", f"{(dispatch_fp8 + combine_bf16) / 1e3:.1f} KB",
             f"{(dispatch_fp8 + combine_bf16) / ib * 1e6:.2f} µs"],
            ["the same without node-limited routing (top-8 destinations)", f"{unlimited / 1e3:.1f} KB",
             f"{unlimited / ib * 1e6:.2f} µs"],
            ["expert compute per token (8 routed + 1 shared, forward)", f"{flops / 1e9:.2f} GFLOP",
             f"{flops / peak * 1e6:.2f} µs at 100% of 989 TFLOPS, {flops / (0.4 * peak) * 1e6:.2f} µs at 40%"]]
    return ("DeepSeek-V3 on paper, per token and MoE layer (hidden 7,168, top-8 of 256 experts of width 2,048, "
            "64-way EP over 8-GPU nodes, 50 GB/s InfiniBand per GPU):\n\n"
            + markdown_table(["", "bytes or FLOPs", "time"], rows)
            + "\n\nThe all-to-all takes about as long as the experts' compute even with node-limited routing and FP8 "
              "dispatch; without them it would take longer than the compute. That is why V3 caps the nodes per "
              "token and overlaps communication with computation (DualPipe): at this ratio an unoverlapped "
              "dispatch would halve the MoE layers' throughput.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--write", help="replace this benchmark's section in this markdown file")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from nanoseek import ModelConfig
        data, tok = prepare_data(root, ModelConfig.preset(a.preset).vocab_size)
        results = [run(n, data, tok, root / f"run{n}", a) for n in a.procs]
    base = results[0]["tokens_per_s"]
    m = machine_info()
    table = markdown_table(
        ["processes", "expert parallel", "tokens/s", "vs 1 process", "MB sent per rank per step", "loss at the end"],
        [[str(r["nproc"]), str(r["nproc"]) if r["nproc"] > 1 else "-", f"{r['tokens_per_s']:.0f}",
          f"{r['tokens_per_s'] / base:.2f}x", f"{r['mb']:.2f}", f"{r['loss']:.4f}"] for r in results])
    body = (f"`python bench/expert_parallel.py --preset {a.preset} --steps {a.steps}` on {m['cpu']}, "
            f"{m['cores']} cores, torch {m['torch']}, one thread per process, gloo; load average "
            f"{m['load_avg']}; {m['date']}. Global batch {a.global_batch} x {a.seq_len} tokens.\n\n{table}\n\n"
            "On 2 CPU cores more processes only share the same cores: the point is the traffic, not a speed-up (2 "
            "processes beat 1 here because one process at one thread leaves a core idle). Final losses may differ in "
            "the 4th digit: float summation order, amplified by a short run's high-learning-rate steps (one process "
            "alone differs as much between micro-batch 8 and 4); tests/test_distributed.py checks EP against one "
            "process within 1e-4 over 8 steps.\n\n" + v3_on_paper())
    print(body)
    if a.write:
        write_section(a.write, "expert_parallel", "Expert parallelism (`python bench/expert_parallel.py`)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
