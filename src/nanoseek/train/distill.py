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
   is fine-tuned on them with `nanoseek sft` (its settings as `--key value`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..reasoning import ReasoningParser
from ..rewards import format_reward, required_fields, resolve_reward
from .grpo import EngineSampler, Rollout, load_rows, render_prompt
from .sft import write_jsonl


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
    if bool(task) == bool(data):
        raise ValueError("distill: give exactly one of --task NAME and --data FILE.jsonl")
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
    need = required_fields(verifier)
    for i, r in enumerate(rows):
        missing = [f for f in need if f not in r]
        if missing:
            raise ValueError(f"prompt row {i} (id {r.get('id', '?')}): the verifier needs field(s) "
                             f"{', '.join(missing)}, which the row lacks")
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


def run(teacher: str, out: str, *, task: str | None = None, data: str | None = None, num_prompts: int = 256,
        levels: Sequence[int] | None = None, k: int = 4, max_tokens: int = 512, temperature: float = 0.6,
        top_p: float = 0.95, seed: int = 0, require_format: bool = True, max_per_prompt: int = 2,
        device: str = "auto", student: str | None = None, sft_overrides: Sequence[str] = (),
        sft_file: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..checkpoint import load_pretrained
    from ..tokenizer import Tokenizer
    from .distributed import pick_device
    if not os.path.isfile(os.path.join(teacher, "tokenizer.json")):
        raise FileNotFoundError(f"teacher {teacher}: no tokenizer.json (a model directory as nanoseek sft, grpo "
                                f"and train export it)")
    rows, verifier = prompt_rows(task, data, num_prompts, levels, seed)
    dev = pick_device(device)
    model = load_pretrained(teacher, dtype=torch.float32 if dev.type == "cpu" else None, device=dev)
    tok = Tokenizer.from_pretrained(teacher)
    longest = max(len(render_prompt(tok, r["messages"])[0]) for r in rows)
    sampler = EngineSampler(model, tok, min(model.config.max_position_embeddings, longest + max_tokens + 8),
                            max_num_seqs=min(256, 32 * k))
    kept, stats = rejection_sample(sampler, tok, rows, verifier, k=k, max_tokens=max_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed, require_format=require_format,
                                   max_per_prompt=max_per_prompt, log=log)
    write_jsonl(out, kept)
    log(f"distill: {stats.summary()}; wrote {out}")
    summary: dict[str, Any] = {"stats": stats, "out": out}
    if student:
        if not kept:
            raise ValueError(f"distill: the teacher produced no verified-correct completion in {stats.samples} "
                             f"samples; nothing to fine-tune {student} on (raise --k or --num-prompts, or use "
                             f"easier --levels)")
        del model, sampler
        from . import sft
        from .config import build
        from .sft import SFT_DEFAULTS, has_weights
        values = {**SFT_DEFAULTS, "run_dir": "runs/distill", **(sft_file or {})}
        student_tok = student if os.path.isfile(os.path.join(student, "tokenizer.json")) else teacher
        cfg = build(values, list(sft_overrides), model=student, data=out,
                    **({} if has_weights(student) and student_tok == student else {"tokenizer": student_tok}))
        summary["sft"] = sft.run(cfg, log=log)
    return summary
