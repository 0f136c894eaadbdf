"""`nanoseek demo`: the whole DeepSeek-V3 → R1 recipe on the built-in default, offline, on a laptop CPU.

    tokenizer + pretrain (MoE + MLA + MTP, built-in corpus)  →  SFT on worked solutions  →  GRPO on a verifiable task
    →  evaluation after every stage  →  efficiency report  →  a servable model directory

Every stage writes into its own directory under `--out` and marks itself done; a rerun skips finished stages and
resumes an interrupted one from its last checkpoint. `--skip` leaves stages out, `--scale` multiplies every stage's
step count (0.1 for a smoke run).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

STAGES = ("pretrain", "sft", "grpo", "eval", "report")
# One- to three-digit addition and subtraction: what a ~1M-parameter model learns in minutes on a CPU.
TASK, LEVELS = "arithmetic", [1, 2, 3]


def _steps(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def _done(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / "DONE.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(stage_dir: Path, summary: dict[str, Any]) -> None:
    tmp = stage_dir / "DONE.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, stage_dir / "DONE.json")


def _evaluate(model_dir: Path, limit: int, log: Callable[[str], None]) -> dict[str, Any]:
    from .evaluate.runner import evaluate
    res = evaluate(str(model_dir), [TASK], limit=limit, levels=LEVELS, max_tokens=96)
    acc = res["results"][TASK]
    log(f"  {TASK} (levels {LEVELS}, {limit} test problems, greedy): accuracy {acc.get('accuracy', acc)}")
    return acc


def run(out: str = "runs/demo", preset: str = "tiny", scale: float = 1.0, skip: tuple[str, ...] = (),
        threads: int | None = None, eval_limit: int = 50, log: Callable[[str], None] = print) -> dict[str, Any]:
    unknown = set(skip) - set(STAGES)
    if unknown:
        raise ValueError(f"demo: unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    if scale <= 0:
        raise ValueError(f"demo: --scale must be positive (got {scale})")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(threads)] if threads else []
    results: dict[str, Any] = {}
    latest: Path | None = None  # the newest trained model directory
    t0 = time.time()

    def stage(name: str, fn: Callable[[Path], dict[str, Any]]) -> None:
        nonlocal latest
        d = root / name
        if name in skip:
            log(f"[{name}] skipped (--skip)")
            return
        found = _done(d)
        if found is not None:
            log(f"[{name}] already done: {d} (delete it to redo)")
            results[name] = found
        else:
            log(f"[{name}] starting in {d}  ({time.time() - t0:.0f}s elapsed)")
            d.mkdir(parents=True, exist_ok=True)
            results[name] = fn(d)
            _mark_done(d, results[name])
        if (d / "model" / "config.json").exists():
            latest = d / "model"

    def pretrain(d: Path) -> dict[str, Any]:
        from .train.config import build
        from .train.pretrain import run as train_run
        cfg = build(None, ["--model", preset, "--run_dir", str(d), "--max_steps", str(_steps(400, scale)),
                           "--resume", "true", *common])
        s = train_run(cfg, log=log)
        return {"val_loss": s["val_loss"], "unigram_entropy": s["unigram_entropy"], "steps": s["step"],
                "accuracy": _evaluate(d / "model", eval_limit, log)}

    def sft(d: Path) -> dict[str, Any]:
        from .train import sft as sft_mod
        from .train.config import build
        if latest is None:
            raise ValueError("demo: SFT needs a pretrained model (do not skip pretrain on a fresh --out)")
        # 600 steps of 32 x 128 tokens: levels 1-3 go from ~0.02 to ~0.7-0.8 greedy (150 steps of 16 x 256: ~0.03)
        values = {**sft_mod.SFT_DEFAULTS, "model": str(latest), "run_dir": str(d), "resume": True,
                  "max_steps": _steps(600, scale), "seq_len": 128, "batch_size": 32, "lr": 2e-3}
        s = sft_mod.run(build(values, common), task=TASK, task_examples=4000, task_levels=LEVELS, log=log)
        return {"val_loss": s["val_loss"], "steps": s["step"], "accuracy": _evaluate(d / "model", eval_limit, log)}

    def grpo(d: Path) -> dict[str, Any]:
        from .train import grpo as grpo_mod
        from .train.grpo_config import build
        if latest is None:
            raise ValueError("demo: GRPO needs a trained model (do not skip pretrain and sft on a fresh --out)")
        # lr 3e-5: at 2e-4 the SFT model's greedy accuracy fell from 0.72 to 0.24 in these 30 steps
        cfg = build(None, common, model=str(latest), task=TASK, levels=",".join(map(str, LEVELS)),
                    run_dir=str(d), resume=True, max_steps=_steps(30, scale), num_prompts=8, num_generations=8,
                    max_completion_length=96, lr=3e-5, eval_prompts=eval_limit)
        s = grpo_mod.run(cfg, log=log)
        return {k: v for k, v in s.items() if isinstance(v, (int, float, str))} | {
            "accuracy": _evaluate(d / "model", eval_limit, log)}

    def evaluate_final(d: Path) -> dict[str, Any]:
        if latest is None:
            raise ValueError("demo: nothing to evaluate")
        from .evaluate.runner import evaluate, write_json
        res = evaluate(str(latest), [TASK], limit=eval_limit, levels=LEVELS, n=4, k=[1, 4], max_tokens=96)
        write_json(d / "eval.json", res)
        log(f"  final model {latest}: {json.dumps(res['results'][TASK])}")
        return res["results"]

    def report(d: Path) -> dict[str, Any]:
        from . import report as report_mod
        target = str(root / "pretrain") if (root / "pretrain" / "metrics.jsonl").exists() else str(latest or preset)
        path = report_mod.run(target, out=str(d))
        log(f"  report: {path}")
        return {"report": str(path)}

    stage("pretrain", pretrain)
    stage("sft", sft)
    stage("grpo", grpo)
    stage("eval", evaluate_final)
    stage("report", report)

    final = root / "model"
    if latest is not None:
        tmp = root / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(latest, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    summary_path = root / "summary.json"
    summary_path.write_text(json.dumps(results, indent=2, default=str))
    log(f"\ndemo finished in {time.time() - t0:.0f}s; results in {summary_path}")
    for name in ("pretrain", "sft", "grpo"):
        acc = results.get(name, {}).get("accuracy")
        if isinstance(acc, dict):
            log(f"  after {name:8s}: {TASK} accuracy {acc.get('accuracy')}")
    if latest is not None:
        log(f"\nchat with it:   nanoseek chat {final}\nserve it:       nanoseek serve {final} --port 8000\n"
            f"generate:       nanoseek generate {final} --prompt \"What is 3+4?\"")
    return results
