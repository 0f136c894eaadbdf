"""`nanoseek demo`: the whole DeepSeek-V3 → R1 recipe on the built-in default, offline, on a laptop CPU.

    built-in corpus → `data clean` (decontaminated against the evaluation's held-out problems) → tokenizer + pretrain
    (MoE + MLA + MTP)  →  SFT on worked solutions  →  GRPO on a verifiable task  →  evaluation after every stage  →
    efficiency report  →  a servable model directory

Every stage writes into its own directory under `--out` and marks itself done; a rerun skips finished stages and
resumes an interrupted one from its last checkpoint. `--skip` leaves stages out, `--scale` multiplies every stage's
step count (0.1 for a smoke run).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .files import atomic_dir, atomic_write, write_json

STAGES = ("pretrain", "sft", "grpo", "distill", "eval", "report")
OPTIONAL = ("distill",)  # run only when asked for (`--with distill`): it doubles the SFT time
# One- to three-digit addition and subtraction: what a ~1M-parameter model learns in minutes on a CPU.
TASK, LEVELS = "arithmetic", [1, 2, 3]
# GRPO: 32 informative groups of 8 per step (DAPO dynamic sampling refills groups whose rewards are all equal),
# levels drawn at the policy's frontier (curriculum), token-level loss, no KL; measured in docs/reasoning.md
PRETRAIN_LR = 1.5e-3
# SFT on worked solutions (the cold start): 1,000 steps of 32 x 128 tokens over 4,000 problems, half of which show
# only the result line (`347+85=432`, the work done in the head), as text in the wild often does. SFT imitates that
# mix: the model answers some problems with column steps and some without. GRPO's reward then teaches it which
# works (the steps), the R1 result "RL teaches the model to think"; docs/reasoning.md has the all-worked control.
SFT: dict[str, Any] = dict(max_steps=1000, seq_len=128, batch_size=32, lr=2e-3, task_examples=4000,
                           task_shortcuts=0.5)
DISTILL_PROMPTS = 2000  # teacher prompts (2 samples each at temperature 0.6; verified-correct ones kept)
GRPO: dict[str, Any] = dict(max_steps=60, num_prompts=32, num_generations=8, lr=1e-4, warmup_steps=5,
                            dynamic_sampling=True, curriculum=True)
MAX_TOKENS = 96  # completion budget of rollouts and evaluations (the longest worked solution is ~60 tokens)
# `data clean` on the pretraining corpus: decontamination only. The quality filters are made for web prose and would
# drop nearly all of the built-in corpus (short pydoc sections, worked arithmetic), and exact dedup would remove the
# legitimate repeats of the small low-level problem spaces (578 of 6,146 documents): both would change what the
# measured recipe pretrains on. Decontamination removes nothing from it (the tasks corpus is the train split), so
# the token stream is the one the recipe was measured on; the stage proves it and guards a changed corpus.
CLEAN_STEPS = ["decontaminate"]
DECONTAMINATE = f"{TASK}:{','.join(map(str, LEVELS))}"  # the evaluation's task and levels


def clean_corpus(d: Path, eval_limit: int, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The built-in corpus, exported as jsonl, through `nanoseek data clean` against the first `eval_limit` held-out
    problems of the evaluation (the very problems every stage is evaluated on). Returns the kept directory and the
    report (with the seconds it took). A rerun reuses the finished output."""
    from .data import corpus_documents
    from .data.clean import clean, summary
    src = d / "corpus" / "builtin.jsonl"
    t = time.perf_counter()
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(src, "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n"
                                  for doc in corpus_documents("builtin")))
    report = clean([src], d / "corpus" / "clean", steps=CLEAN_STEPS, decontaminate=[DECONTAMINATE],
                   decont_limit=eval_limit, progress=False)
    report = {**report, "stage_seconds": round(time.perf_counter() - t, 2)}
    log(f"  data clean ({', '.join(CLEAN_STEPS)} against {eval_limit} {DECONTAMINATE} test problems): "
        f"{summary(report)}")
    return d / "corpus" / "clean" / "kept", report


def grpo_gain(results: dict[str, Any]) -> float | None:
    """GRPO's greedy accuracy minus SFT's, on the same held-out problems."""
    try:
        return round(results["grpo"]["accuracy"]["accuracy"] - results["sft"]["accuracy"]["accuracy"], 4)
    except (KeyError, TypeError):
        return None


def _append_recipe(report_md: Path, results: dict[str, Any], root: Path) -> None:
    """The recipe's own section of the report: accuracy after each stage with its interval, and the final model's
    inference-time compute (table and chart)."""
    lines = []
    dc = results.get("pretrain", {}).get("data_clean")
    if isinstance(dc, dict):
        removed = ", ".join(f"{k} {v:,}" for k, v in dc["removed"].items())
        lines += ["", "## Pretraining data: `nanoseek data clean`", "",
                  f"The built-in corpus ({dc['input']:,} documents) went through `data clean` "
                  f"(stages: {', '.join(dc['removed'])}; against "
                  + ", ".join(f"{k} ({v:,} held-out prompts)" for k, v in dc["decontamination_prompts"].items())
                  + f"): {dc['kept']:,} kept; removed: {removed}; {dc['stage_seconds']}s.", ""]
    lines += ["", "## The recipe: held-out accuracy after each stage", "",
             f"Greedy accuracy on the same distinct held-out {TASK} problems (levels {LEVELS}), with the 95% "
             "Wilson interval, and the fraction of answers that write the column steps.", "",
             "| stage | accuracy | 95% CI | problems | answers showing the steps |", "|---|---|---|---|---|"]
    for name in ("pretrain", "sft", "grpo", "distill"):
        acc = results.get(name, {}).get("accuracy")
        if isinstance(acc, dict) and "accuracy" in acc:
            ci = acc.get("ci95")
            ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
            work = f"{acc['shows_work']:.0%}" if "shows_work" in acc else "-"
            lines.append(f"| {name} | {acc['accuracy']:.3f} | {ci_text} | {acc['examples']} | {work} |")
    ic = results.get("eval", {}).get("inference_compute")
    if ic:
        from .evaluate import scaling
        chart = root / "eval" / "inference_compute.png"
        if chart.exists():
            shutil.copyfile(chart, report_md.parent / chart.name)
        lines += ["", "## Inference-time compute of the final model", "", scaling.markdown(ic),
                  f"![inference-time compute]({chart.name})", ""]
    atomic_write(report_md, report_md.read_text(encoding="utf-8") + "\n".join(lines) + "\n")


def _steps(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def _done(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / "DONE.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(stage_dir: Path, summary: dict[str, Any]) -> None:
    write_json(stage_dir / "DONE.json", summary)


def _fmt_acc(acc: dict[str, Any]) -> str:
    """`0.628 [0.585, 0.669] on 500 problems` (accuracy, its 95% confidence interval, the number of problems)."""
    ci = acc.get("ci95")
    return f"{acc['accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + \
        f" on {acc['examples']} problems"


def shows_work(completion: str) -> bool:
    """Whether a completion's think block holds more than one step line (the column steps), not just the result
    line `347+85=432` (a one-digit problem has one step either way)."""
    from .rewards import THINK_CLOSE
    reasoning = completion.split(THINK_CLOSE, 1)[0]
    return sum(1 for line in reasoning.splitlines() if "=" in line) > 1


def _evaluate(model_dir: Path, limit: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy accuracy on `limit` distinct held-out problems: the one evaluation every stage uses, on the same
    problems; and `shows_work`, the fraction of answers that write the column steps (what GRPO teaches)."""
    from .evaluate.runner import evaluate
    res = evaluate(str(model_dir), [TASK], limit=limit, levels=LEVELS, max_tokens=MAX_TOKENS, log_samples=True)
    acc = res["results"][TASK]
    done = [shows_work(c) for s in acc.pop("samples", []) for c in s["completions"]]
    acc["shows_work"] = round(sum(done) / max(len(done), 1), 4)
    log(f"  {TASK} (levels {LEVELS}, greedy): accuracy {_fmt_acc(acc)}; {acc['shows_work']:.0%} of the answers show "
        f"the column steps")
    return acc


def run(out: str = "runs/demo", preset: str = "tiny", scale: float = 1.0, skip: tuple[str, ...] = (),
        threads: int | None = None, eval_limit: int = 500, seed: int = 0, include: tuple[str, ...] = (),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole recipe into `out`. `seed` seeds every stage (pretraining's data order and initialisation, SFT,
    GRPO's prompts and samples); the held-out problems are the same for every seed. `include` adds optional
    stages (distill)."""
    unknown = (set(skip) | set(include)) - set(STAGES)
    if unknown:
        raise ValueError(f"demo: unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    skip = tuple(skip) + tuple(s for s in OPTIONAL if s not in include and s not in skip)
    if scale <= 0:
        raise ValueError(f"demo: --scale must be positive (got {scale})")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(threads)] if threads else []
    common += ["--seed", str(seed)]
    results: dict[str, Any] = {}
    latest: Path | None = None  # the newest trained model directory
    t0 = time.time()

    def stage(name: str, fn: Callable[[Path], dict[str, Any]], final: bool = True) -> None:
        """Run (or reuse) one stage; `final`: its model becomes the recipe's newest model."""
        nonlocal latest
        d = root / name
        if name in skip:
            log(f"[{name}] skipped" + (" (optional: --with distill runs it)" if name in OPTIONAL else " (--skip)"))
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
        if final and (d / "model" / "config.json").exists():
            latest = d / "model"

    def pretrain(d: Path) -> dict[str, Any]:
        from .data import iter_documents, prepare
        from .tokenizer import train_tokenizer
        from .train.config import build
        from .train.pretrain import run as train_run
        # lr 1.5e-3, not train's 3e-3: at 3e-3 the 400-step base depends on the seed (validation 2.66 for seed 1337,
        # 2.72-2.75 for seeds 0-2) and SFT from the worse bases learns no three-digit sums (0.17-0.20 against 0.63)
        args = ["--model", preset, "--run_dir", str(d), "--max_steps", str(_steps(400, scale)),
                "--lr", str(PRETRAIN_LR), "--resume", "true", *common]
        kept, cleaned = clean_corpus(d, eval_limit, log)
        # What `train` does for the built-in corpus (tokenizer trained on it, then token shards), on the kept
        # documents: the same texts in the same order when nothing was removed, so the same tokenizer and tokens.
        cfg = build(None, args)
        tok_dir, data_dir = d / "tokenizer", d / "data" / "clean"
        if not (tok_dir / "tokenizer.json").exists():
            train_tokenizer((t for t in iter_documents([kept]) if isinstance(t, str)), cfg.vocab_size, tok_dir,
                            max_digits=cfg.tokenizer_digits)
        prepare([kept], str(tok_dir), data_dir, progress=cfg.progress)
        cfg = build(None, [*args, "--data", str(data_dir), "--tokenizer", str(tok_dir)])
        s = train_run(cfg, log=log)
        return {"val_loss": s["val_loss"], "unigram_entropy": s["unigram_entropy"], "steps": s["step"],
                "data_clean": {k: cleaned[k] for k in ("input", "kept", "removed", "stage_seconds",
                                                       "decontamination_prompts")},
                "accuracy": _evaluate(d / "model", eval_limit, log)}

    def sft_values(d: Path, model: Path) -> dict[str, Any]:
        """The SFT stage's settings (the distill stage's student gets the same)."""
        return {**SFT, "model": str(model), "run_dir": str(d), "resume": True,
                "max_steps": _steps(SFT["max_steps"], scale)}

    def sft(d: Path) -> dict[str, Any]:
        from .train import sft as sft_mod
        from .train.config import SFTConfig
        if latest is None:
            raise ValueError("demo: SFT needs a pretrained model (do not skip pretrain on a fresh --out)")
        s = sft_mod.run(SFTConfig.build(sft_values(d, latest), common, task=TASK, task_levels=LEVELS), log=log)
        return {"val_loss": s["val_loss"], "steps": s["step"], "accuracy": _evaluate(d / "model", eval_limit, log)}

    def distill(d: Path) -> dict[str, Any]:
        """DeepSeek-R1's distillation: the GRPO model's verified traces fine-tune a fresh student from the same
        pretrained base, with the SFT stage's settings and steps (so the student compares with SFT at the same
        budget: teacher traces against the task's worked solutions)."""
        from .train import distill as distill_mod
        base, teacher = root / "pretrain" / "model", root / "grpo" / "model"
        if not (base / "config.json").exists() or not (teacher / "config.json").exists():
            raise ValueError("demo: distill needs the pretrain and grpo stages' models")
        v = sft_values(d, base)
        student_sft = {k: v[k] for k in ("run_dir", "max_steps", "seq_len", "batch_size", "lr", "resume")}
        student_sft["seed"] = seed
        cfg = distill_mod.DistillConfig.build(None, common, teacher=str(teacher), out=str(d / "traces.jsonl"),
                                              task=TASK, levels=LEVELS, num_prompts=DISTILL_PROMPTS, k=2,
                                              max_tokens=MAX_TOKENS, student=str(base), sft=student_sft)
        s = distill_mod.run(cfg, log=log)
        st = s["stats"]
        return {"traces": st.kept, "prompts": st.prompts, "teacher_sample_accuracy": st.correct / max(st.samples, 1),
                "steps": s["sft"]["step"], "accuracy": _evaluate(d / "model", eval_limit, log)}

    def grpo(d: Path) -> dict[str, Any]:
        from .train import grpo as grpo_mod
        from .train.grpo_config import build
        if latest is None:
            raise ValueError("demo: GRPO needs a trained model (do not skip pretrain and sft on a fresh --out)")
        settings = {**GRPO, "max_steps": _steps(GRPO["max_steps"], scale)}
        if scale < 1:  # a smoke run: fewer prompts per step too
            settings["num_prompts"] = max(2, round(GRPO["num_prompts"] * scale))
        cfg = build(None, common, model=str(latest), task=TASK, levels=",".join(map(str, LEVELS)),
                    run_dir=str(d), resume=True, max_completion_length=MAX_TOKENS,
                    eval_prompts=0,  # the stages' own evaluation below measures the GRPO model (once, not thrice)
                    **settings)
        s = grpo_mod.run(cfg, log=log)
        return {k: v for k, v in s.items() if isinstance(v, (int, float, str))} | {
            "accuracy": _evaluate(d / "model", eval_limit, log)}

    def evaluate_final(d: Path) -> dict[str, Any]:
        """The final model with more inference-time compute: samples per problem (pass@k, maj@k for k up to 16)
        and thinking budgets, on the same held-out problems."""
        if latest is None:
            raise ValueError("demo: nothing to evaluate")
        from .evaluate import scaling
        from .report.charts import inference_compute_chart
        res = scaling.run(str(latest), TASK, levels=LEVELS, limit=eval_limit, max_tokens=MAX_TOKENS, seed=seed)
        write_json(d / "inference_compute.json", res)
        atomic_write(d / "inference_compute.md", scaling.markdown(res))
        inference_compute_chart(res, d / "inference_compute.png")
        sm = res["samples"]
        log("  final model, more samples per problem (temperature 0.6): " +
            ", ".join(f"k={k}: pass {p:.3f} maj {m:.3f}" for k, p, m in zip(sm["k"], sm["pass@k"], sm["maj@k"])))
        log("  final model, thinking budget (greedy): " + ", ".join(
            f"{'none' if t is None else t}: {a:.3f}" for t, a in zip(res["budget"]["max_thinking_tokens"],
                                                                     res["budget"]["accuracy"])))
        return {"inference_compute": res, "chart": str(d / "inference_compute.png")}

    def report(d: Path) -> dict[str, Any]:
        from . import report as report_mod
        target = str(root / "pretrain") if (root / "pretrain" / "metrics.jsonl").exists() else str(latest or preset)
        path = report_mod.run(target, out=str(d))
        _append_recipe(path, results, root)
        log(f"  report: {path}")
        return {"report": str(path)}

    stage("pretrain", pretrain)
    stage("sft", sft)
    stage("grpo", grpo)
    stage("distill", distill, final=False)
    stage("eval", evaluate_final)
    stage("report", report)

    final = root / "model"
    if latest is not None:  # the newest model, copied whole or not at all
        src = latest
        atomic_dir(final, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
    gain = grpo_gain(results)
    if gain is not None:
        results["grpo_gain"] = gain
    summary_path = root / "summary.json"
    write_json(summary_path, results)
    log(f"\ndemo finished in {time.time() - t0:.0f}s; results in {summary_path}")
    for name in ("pretrain", "sft", "grpo", "distill"):
        acc = results.get(name, {}).get("accuracy")
        if isinstance(acc, dict) and "accuracy" in acc:
            what = "student distilled from the GRPO model" if name == "distill" else f"after {name}"
            work = f"; {acc['shows_work']:.0%} show the steps" if "shows_work" in acc else ""
            log(f"  {what:10s}: {TASK} greedy accuracy {_fmt_acc(acc)}{work}")
    if gain is not None:
        log(f"  GRPO gain over SFT: {gain:+.3f} (the same {results['grpo']['accuracy']['examples']} problems)")
    if latest is not None:
        log(f"\nchat with it:   nanoseek chat {final}\nserve it:       nanoseek serve {final} --port 8000\n"
            f"generate:       nanoseek generate {final} --prompt \"What is 3+4?\"")
    return results
