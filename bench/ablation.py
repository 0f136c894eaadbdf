"""Ablation at equal training FLOPs on the built-in data: DeepSeek-V3's choices against their usual alternatives.

Variants of the default `nanoseek train` run (the `tiny` preset on the built-in corpus):
  deepseek   MoE + MTP (lambda 0.3) + MLA: the default run
  dense      one dense SwiGLU per layer with the same activated parameters     (--dense true)
  no-mtp     no multi-token prediction loss; the MTP module is not run        (--mtp_lambda 0)
  mha        standard multi-head attention with the same heads instead of MLA (--attention mha)
  vanilla    all three: dense + no MTP + MHA

The FLOP budget is the default run's (FLOPs/token of a training step x tokens/step x its steps); every variant
gets the steps that spend the same budget (nanoseek.info.train_flops_per_token counts MTP and MHA). Reported:
validation loss of the main head (nats/token, same validation windows), KV-cache bytes/token (bf16), steps.
Each run is `nanoseek train` in a subprocess at one thread, `--jobs` at a time; a run directory that already holds
a finished run of the planned length is reused, so an interrupted benchmark continues where it stopped.

    python bench/ablation.py --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, markdown_table, write_section  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "deepseek": [],
    "dense": ["--dense", "true"],
    "no-mtp": ["--mtp_lambda", "0"],
    "mha": ["--attention", "mha"],
    "vanilla": ["--dense", "true", "--mtp_lambda", "0", "--attention", "mha"],
}
DESCRIPTION = {
    "deepseek": "MoE + MTP + MLA (default run)",
    "dense": "dense FFN, same activated params",
    "no-mtp": "no MTP",
    "mha": "MHA instead of MLA",
    "vanilla": "dense + no MTP + MHA",
}


def variant_config(args: list[str], base: list[str]):
    from nanoseek.train.config import build
    return build(None, [*base, *args])


def flops_per_token(cfg) -> tuple[int, dict]:
    """(training FLOPs per token, info.count of the model) for a TrainConfig, from the config alone."""
    from nanoseek.config import ModelConfig
    from nanoseek.info import count, train_flops_per_token
    from nanoseek.train.trainer import dense_baseline
    mcfg = ModelConfig.from_dict({**ModelConfig.from_name_or_path(cfg.model).to_dict(), **cfg.model_overrides})
    if cfg.dense:
        mcfg = dense_baseline(mcfg)
    depth = mcfg.num_nextn_predict_layers if cfg.mtp_lambda > 0 else 0
    return train_flops_per_token(mcfg, cfg.seq_len, depth, cfg.attention), count(mcfg, seq_len=cfg.seq_len)


def prepare_data(out: Path, base: list[str]) -> tuple[str, str]:
    """Tokenizer and shards of the built-in corpus, once, shared by every run."""
    from nanoseek.train.data import pretraining_data
    from nanoseek.train.distributed import DistEnv
    cfg = variant_config(["--run_dir", str(out / "shared"), "--progress", "false"], base)
    data = pretraining_data(cfg, DistEnv(), cfg.global_batch())
    return data.info["data_dir"], data.tokenizer_dir


def data_tokens(data_dir: str) -> int:
    return json.loads((Path(data_dir) / "manifest.json").read_text())["splits"]["train"]["tokens"]


def run_one(name: str, seed: int, steps: int, out: Path, data: tuple[str, str], base: list[str]) -> dict:
    run_dir = out / f"{name.replace('@', '-at-')}-s{seed}"
    cmd = [sys.executable, "-m", "nanoseek.cli", "train", *base, *VARIANTS[name.split("@")[0]], "--data", data[0], "--tokenizer", data[1],
           "--run_dir", str(run_dir), "--max_steps", str(steps), "--seed", str(seed), "--threads", "1",
           "--export", "false", "--progress", "false", "--ckpt_every", str(steps), "--keep_checkpoints", "1"]
    t = time.perf_counter()
    rows = _finished(run_dir, steps)
    if rows is None:  # not run yet, or interrupted: (re)train from scratch
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rows = _finished(run_dir, steps)
        if rows is None:
            raise RuntimeError(f"{run_dir}: the run ended without its final validation")
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    print(f"  {name} seed {seed}: {steps} steps, val loss {val[-1]:.4f}, {time.perf_counter() - t:.0f} s",
          flush=True)
    train_ce = statistics.mean(r["ce"] for r in rows[-50:])
    return {"name": name, "seed": seed, "steps": steps, "val_loss": val[-1], "train_ce": train_ce,
            "tokens_per_s": statistics.median(tps), "wall_s": time.perf_counter() - t}


def _finished(run_dir: Path, steps: int) -> list[dict] | None:
    """The metrics of a run that reached `steps` with a final validation (an earlier invocation's), else None."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or rows[-1]["step"] != steps or "val_loss" not in rows[-1]:
        return None
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="steps of the deepseek variant (sets the FLOP budget)")
    p.add_argument("--seeds", default="1337,1338", help="comma list; each variant runs once per seed")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--equal-steps", default="no-mtp,mha",
                   help="variants also run at the deepseek variant's step count (the paper's same-tokens setting)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (one thread each)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--train-args", default="", help="extra `nanoseek train` arguments for every run")
    p.add_argument("--write", type=Path, default=None, help="write the table into this markdown file")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    same_steps = [v for v in args.equal_steps.split(",") if v]
    for v in same_steps:
        if v not in names or v == "deepseek":
            p.error(f"--equal-steps: {v!r} is not one of the other variants run")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base = args.train_args.split()

    budget_cfg = variant_config(VARIANTS["deepseek"], base)
    tokens_per_step = budget_cfg.global_batch() * budget_cfg.seq_len
    budget = flops_per_token(budget_cfg)[0] * tokens_per_step * args.steps
    plan = {}
    for v in names:
        fpt, info = flops_per_token(variant_config(VARIANTS[v], base))
        mha = "--attention" in VARIANTS[v]
        plan[v] = {"steps": max(1, round(budget / (fpt * tokens_per_step))), "flops_per_token": fpt,
                   "kv_bytes": info["mha_kv_cache_bytes_per_token" if mha else "kv_cache_bytes_per_token"],
                   "active": info["active_params"]}
    for v in same_steps:
        plan[f"{v}@steps"] = {**plan[v], "steps": args.steps}
    print(f"budget {budget:.3e} FLOPs ({args.steps} steps of the deepseek variant, {tokens_per_step} tokens/step); "
          + ", ".join(f"{v}: {p['steps']} steps" for v, p in plan.items()), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.out, base)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args.out, data, base),
                                [(v, s, plan[v]["steps"]) for s in seeds for v in plan]))
    wall = time.perf_counter() - t0

    by = {v: [r for r in results if r["name"] == v] for v in plan}
    ref = statistics.mean(r["val_loss"] for r in by[names[0]])
    rows = []
    for v in plan:
        losses = [r["val_loss"] for r in by[v]]
        mean = statistics.mean(losses)
        what = f"{v}: {DESCRIPTION[v]}" if "@" not in v else f"{v}: {DESCRIPTION[v.split('@')[0]]}, same steps"
        rows.append([what, f"{plan[v]['steps']}", f"{plan[v]['flops_per_token'] / 1e6:.2f} M",
                     f"{mean:.4f}", " / ".join(f"{x:.4f}" for x in losses), f"{mean - ref:+.4f}",
                     f"{statistics.mean(r['train_ce'] for r in by[v]):.3f}",
                     f"{plan[v]['kv_bytes']:,}", f"{statistics.median(r['tokens_per_s'] for r in by[v]):,.0f}"])
    table = markdown_table(["variant", "steps", "train FLOPs/token", "val loss (mean)", "per seed",
                            f"vs {names[0]}", "train CE, last 50 steps", "KV bytes/token (bf16)", "tokens/s (1 thread)"], rows)
    m = machine_info()
    cmd = "python bench/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (f"```\n{cmd}\n```\n\n{table}\n\n"
              + f"- budget: {budget:.3e} training FLOPs per run = {args.steps} steps of the default run x "
              f"{tokens_per_step:,} tokens/step; seeds {', '.join(map(str, seeds))} (init and data order)\n"
              + (f"- `@steps` rows: the same variant at the deepseek variant's {args.steps} steps, i.e. the same "
                 f"training tokens (the setting of DeepSeek-V3's own ablations), not the same FLOPs\n"
                 if same_steps else "")
              + f"- validation: the main head's cross-entropy on the same held-out windows of the built-in corpus; "
              f"train CE: the main head's loss on the training batches, mean of the last 50 steps (the gap to the "
              f"validation loss is memorisation: the corpus has {data_tokens(data[0]):,} training tokens)\n"
              f"- {len(results)} runs, {args.jobs} at a time at one thread each ({wall / 60:.1f} min wall for this "
              f"invocation; runs reused from an earlier one take none)\n"
              f"- machine: {m['cpu']} ({m['matrix_isa']}), {m['cores']} cores, torch {m['torch']}, "
              f"Python {m['python']}, load average at end {m['load_avg']}; {m['date']}\n")
    print(report)
    if args.write:
        write_section(args.write, "ablation", "Ablation at equal training FLOPs", report)


if __name__ == "__main__":
    main()
