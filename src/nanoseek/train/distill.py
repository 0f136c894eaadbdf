"""`nanoseek distill`: the DeepSeek-R1 distillation recipe, rejection sampling then SFT.

    nanoseek distill --teacher runs/grpo/model --task arithmetic --out traces.jsonl --k 4
    nanoseek distill --teacher DIR --task countdown --out traces.jsonl --student small --max_steps 300

1. Prompts: a built-in task's train split (or a jsonl of prompt rows with the fields the verifier needs).
2. The teacher (any nanoseek-loadable model directory) samples k completions per prompt with the inference engine.
3. Rejection sampling: a completion is kept only if the verifier (the task's, or --reward) scores it 1.0 and, by
   default, it is well-formed (one think block then a boxed answer: the format reward), as R1 dropped unreadable
   chains of thought. Distinct kept completions, at most `max_per_prompt` per prompt.
4. They are written as chat jsonl, the reasoning in the assistant message's `reasoning_content` (the DeepSeek API
   form), ready for `nanoseek sft`.
5. With --student (a model directory, or a preset trained from scratch with the teacher's tokenizer), the student
   is fine-tuned on them with `nanoseek sft` (its settings as `--key value`: any key that is not distillation's).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..reasoning import ReasoningParser
from ..rewards import format_reward, resolve_reward
from .config import SFTConfig, level_list
from .rollouts import EngineSampler, Rollout, check_fields, load_rows, render_prompt
from .settings import Settings
from .sft import has_weights, write_jsonl


@dataclass
class DistillConfig(Settings):
    """`nanoseek distill`: rejection sampling from a teacher, then (with --student) SFT of a student."""
    what: ClassVar[str] = "distill config"
    teacher: str = ""  # teacher model directory (with its tokenizer)
    out: str = ""  # chat jsonl to write (reasoning_content form)
    task: str | None = None  # built-in task whose train prompts are sampled (its verifier judges)
    data: str | None = None  # jsonl of prompt rows (`prompt` or `messages`, and `answer`), instead of --task
    num_prompts: int = 256  # prompts to sample from
    levels: Any = None  # comma-separated task levels, e.g. 1,2 (default: all)
    k: int = 4  # completions sampled per prompt
    max_tokens: int = 512  # longest completion
    temperature: float = 0.6  # sampling temperature (R1's recommendation)
    top_p: float = 0.95  # nucleus sampling
    max_per_prompt: int = 2  # distinct correct traces kept per prompt
    require_format: bool = True  # keep only well-formed answers (one think block, then a boxed answer)
    seed: int = 0  # seeds the prompts and the sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch CPU threads, for sampling and the student's SFT
    student: str | None = None  # then fine-tune this model directory or preset on the kept traces
    sft: dict[str, Any] = field(default_factory=dict)  # the student's SFT settings (SFTConfig keys; run_dir runs/distill)

    def validate(self) -> None:
        for name in ("teacher", "out"):
            if not getattr(self, name):
                raise self.bad(name, "required")
        if bool(self.task) == bool(self.data):
            raise ValueError(f"{self.what}: give exactly one of --task NAME and --data FILE.jsonl")
        for name in ("num_prompts", "k", "max_tokens", "max_per_prompt"):
            if getattr(self, name) < 1:
                raise self.bad(name, "must be >= 1")
        if self.temperature < 0:
            raise self.bad("temperature", "must be >= 0")
        if self.sft and not self.student:
            raise ValueError(f"{self.what}: SFT settings need --student (got {', '.join(self.sft)})")
        self.level_list()

    def level_list(self) -> list[int] | None:
        return level_list(self.levels, f"{self.what}: levels")

    def student_config(self) -> SFTConfig:
        """The student's SFT: on the kept traces, tokenized with the student's tokenizer or else the teacher's."""
        assert self.student
        tok = self.student if os.path.isfile(os.path.join(self.student, "tokenizer.json")) else self.teacher
        extra = {} if has_weights(self.student) and tok == self.student else {"tokenizer": tok}
        return SFTConfig.build({"run_dir": "runs/distill", **self.sft}, model=self.student, data=self.out, **extra)


@dataclass
class DistillStats:
    prompts: int = 0
    samples: int = 0
    correct: int = 0  # verified-correct samples (before the format filter and de-duplication)
    kept: int = 0
    prompts_kept: int = 0  # prompts with at least one kept completion

    def summary(self) -> str:
        rate = self.correct / max(self.samples, 1)
        return (f"{self.prompts} prompts x k: {self.samples} samples, {self.correct} verified correct "
                f"({100 * rate:.1f}%), {self.kept} kept for {self.prompts_kept} prompts")


def prompt_rows(task: str | None, data: str | None, num_prompts: int, levels: Sequence[int] | None,
                seed: int) -> tuple[list[dict[str, Any]], Callable[..., Any]]:
    """(prompt rows with `messages`, the verifier)."""
    if task:
        from .. import tasks
        t = tasks.get(task)
        lv = list(levels) if levels else list(range(1, t.num_levels + 1))
        rows = [{**ex, "messages": t.messages(ex)} for ex in t.examples(num_prompts, split="train", level=lv,
                                                                        seed=seed)]
        return rows, resolve_reward(t.reward)
    rows = load_rows(data)[:num_prompts]
    for r in rows:
        r.setdefault("messages", [{"role": "user", "content": r.get("prompt", "")}])
    return rows, resolve_reward("accuracy")


def rejection_sample(sampler: Callable[..., list[list[Rollout]]], tokenizer: Any, rows: list[dict[str, Any]],
                     verifier: Callable[..., Any], *, k: int = 4, max_tokens: int = 512, temperature: float = 0.6,
                     top_p: float = 0.95, top_k: int = 0, seed: int = 0, require_format: bool = True,
                     max_per_prompt: int = 2, chunk: int = 32, log: Callable[[str], None] = print
                     ) -> tuple[list[dict[str, Any]], DistillStats]:
    """Sample k completions per row, keep the verified-correct ones; returns (chat rows, statistics)."""
    check_fields(verifier, "the verifier", rows)
    stats = DistillStats(prompts=len(rows))
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        rendered = [render_prompt(tokenizer, r["messages"]) for r in part]
        seeds = [hash((seed, start + i)) & 0x7FFF_FFFF for i in range(len(part))]
        groups = sampler([ids for ids, _ in rendered], k, max_tokens, temperature, top_p, top_k, seeds)
        for row, (ids, prefill), group in zip(part, rendered, groups):
            kept: list[str] = []
            for r in group:
                stats.samples += 1
                generated = tokenizer.decode(r.token_ids, skip_special_tokens=True)
                text = prefill + generated
                fields = {key: v for key, v in row.items() if key != "completion"}
                if verifier(text, **fields) != 1.0:
                    continue
                stats.correct += 1
                if (require_format and format_reward(text) != 1.0) or text in kept or len(kept) >= max_per_prompt:
                    continue
                kept.append(text)
                reasoning, content = ReasoningParser(starts_in_reasoning=bool(prefill)).parse(generated)
                assistant = {"role": "assistant", "content": (content or "").strip(),
                             "reasoning_content": (reasoning or "").strip()}
                extra = {key: row[key] for key in ("id", "task", "level", "answer") if key in row}
                out.append({"messages": [*row["messages"], assistant], **extra})
            stats.kept += len(kept)
            stats.prompts_kept += bool(kept)
        log(f"distill: {min(start + chunk, len(rows))}/{len(rows)} prompts, {stats.kept} kept")
    return out, stats


def run(cfg: DistillConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..checkpoint import load_pretrained
    from ..tokenizer import Tokenizer
    from .distributed import pick_device
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not os.path.isfile(os.path.join(cfg.teacher, "tokenizer.json")):
        raise FileNotFoundError(f"teacher {cfg.teacher}: no tokenizer.json (a model directory as nanoseek sft, grpo "
                                f"and train export it)")
    student = cfg.student_config() if cfg.student else None  # bad SFT settings fail before the sampling
    rows, verifier = prompt_rows(cfg.task, cfg.data, cfg.num_prompts, cfg.level_list(), cfg.seed)
    dev = pick_device(cfg.device)
    model = load_pretrained(cfg.teacher, dtype=torch.float32 if dev.type == "cpu" else None, device=dev)
    tok = Tokenizer.from_pretrained(cfg.teacher)
    longest = max(len(render_prompt(tok, r["messages"])[0]) for r in rows)
    sampler = EngineSampler(model, tok, min(model.config.max_position_embeddings, longest + cfg.max_tokens + 8),
                            max_num_seqs=min(256, 32 * cfg.k))
    kept, stats = rejection_sample(sampler, tok, rows, verifier, k=cfg.k, max_tokens=cfg.max_tokens,
                                   temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                   require_format=cfg.require_format, max_per_prompt=cfg.max_per_prompt, log=log)
    write_jsonl(cfg.out, kept)
    log(f"distill: {stats.summary()}; wrote {cfg.out}")
    summary: dict[str, Any] = {"stats": stats, "out": cfg.out}
    if student is not None:
        if not kept:
            raise ValueError(f"distill: the teacher produced no verified-correct completion in {stats.samples} "
                             f"samples; nothing to fine-tune {cfg.student} on (raise --k or --num_prompts, or use "
                             f"easier --levels)")
        del model, sampler
        from . import sft
        summary["sft"] = sft.run(student, log=log)
    return summary
