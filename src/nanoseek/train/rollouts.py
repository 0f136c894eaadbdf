"""What GRPO and distillation sample from: prompt rows (a task's train split or a jsonl file, in a seeded order,
optionally by a level curriculum), their rendering with the chat template, the engine that samples completions
from the live policy, and the reward functions that score them.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..rewards import required_fields, resolve_reward
from .grpo_config import GRPOConfig


def check_fields(fn: Callable[..., Any], name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Every row has the fields the reward/verifier `fn` needs: an error naming the first row that does not."""
    need = required_fields(fn)
    for i, row in enumerate(rows):
        missing = [f for f in need if f not in row]
        if missing:
            raise ValueError(f"prompt row {i} (id {row.get('id', '?')}): {name} needs field(s) "
                             f"{', '.join(missing)}, which the row lacks")


# ------------------------------------------------------------------------------------------------ prompts
def load_rows(path: str) -> list[dict[str, Any]]:
    """Prompt rows of a jsonl file: each a JSON object with `prompt` (text) or `messages` (a chat)."""
    from ..data.corpora import jsonl_objects
    rows = []
    for n, row in jsonl_objects(Path(path)):
        if not (isinstance(row.get("prompt"), str) or isinstance(row.get("messages"), list)):
            raise ValueError(f"{path}:{n}: a row needs a `prompt` string or a `messages` list")
        row.setdefault("id", f"{os.path.basename(path)}:{n}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompt rows")
    return rows


class LevelCurriculum:
    """A prompt curriculum at the model's frontier over a task's difficulty levels.

    Each level keeps a running estimate p_l of the policy's accuracy on it (an exponential moving average, over
    steps, of the mean accuracy of the level's groups in the step's rollouts; 0.5 before any). A prompt's level is
    drawn with weight
        w_l = max(1 − p_l^G − (1 − p_l)^G, floor),
    the probability that a group of G samples at accuracy p_l holds both a right and a wrong answer (an informative
    group: GRPO learns nothing from a group whose rewards are all equal). Levels the model always or never solves
    keep the floor weight, so they are revisited and their estimate can move."""

    def __init__(self, levels: Sequence[int], group_size: int, momentum: float = 0.8, floor: float = 0.05):
        self.levels, self.G, self.momentum, self.floor = list(levels), group_size, momentum, floor
        self.acc: dict[int, float | None] = {lv: None for lv in self.levels}

    def weights(self) -> list[float]:
        out = []
        for lv in self.levels:
            p = 0.5 if self.acc[lv] is None else self.acc[lv]
            out.append(max(1.0 - p ** self.G - (1.0 - p) ** self.G, self.floor))
        return out

    def update(self, level: int, group_accuracy: float) -> None:
        old = self.acc.get(level)
        self.acc[level] = group_accuracy if old is None else self.momentum * old + (1 - self.momentum) * group_accuracy

    def state_dict(self) -> dict[str, Any]:
        return {str(k): v for k, v in self.acc.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc.update({int(k): v for k, v in state.items()})


class Prompts:
    """The RL prompts, drawn in order: a built-in task's train split (its own stream, not SFT's: the RL prompts are
    not the SFT problems replayed), one level at a time by the curriculum's weights or uniformly; or a file's rows
    reshuffled each epoch. Which prompts come next is a function of the seed, the number drawn so far (`cursor`)
    and the curriculum's state, all kept in checkpoints, so a resumed run draws the same prompts."""

    def __init__(self, cfg: GRPOConfig):
        self.seed = cfg.seed
        self.task = None
        self.rows: list[dict[str, Any]] = []
        self.cursor = 0  # prompts drawn so far
        self._drawn: dict[int, int] = {}  # examples taken from each level's stream (task prompts)
        self.curriculum: LevelCurriculum | None = None
        if cfg.task:
            from .. import tasks
            self.task = tasks.get(cfg.task)
            self.levels = cfg.level_list() or list(range(1, self.task.num_levels + 1))
            self._streams = {lv: self.task.iter_examples(split="train", level=lv, seed=f"grpo-{cfg.seed}")
                             for lv in self.levels}
            self._drawn = {lv: 0 for lv in self.levels}
            if cfg.curriculum:
                self.curriculum = LevelCurriculum(self.levels, cfg.num_generations)
        else:
            self.rows = load_rows(cfg.data)

    def messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(row.get("messages"), list):
            return row["messages"]
        return [{"role": "user", "content": row["prompt"]}]

    def draw(self, n: int) -> list[dict[str, Any]]:
        """The next n prompts."""
        out = []
        rng = random.Random(f"grpo-prompts-{self.seed}-{self.cursor}")
        for _ in range(n):
            if self.task is not None:
                weights = self.curriculum.weights() if self.curriculum else None
                lv = rng.choices(self.levels, weights=weights)[0]
                self._drawn[lv] += 1
                out.append(next(self._streams[lv]))
            else:
                epoch, i = divmod(self.cursor + len(out), len(self.rows))
                order = list(range(len(self.rows)))
                random.Random(f"{self.seed}-{epoch}").shuffle(order)
                out.append(self.rows[order[i]])
        self.cursor += n
        return out

    def peek(self) -> list[dict[str, Any]]:
        """A few prompts to check the rewards' fields against, without drawing."""
        if self.rows:
            return self.rows
        return [self.task.examples(1, split="train", level=lv)[0] for lv in self.levels]

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "drawn": {str(k): v for k, v in self._drawn.items()},
                "curriculum": self.curriculum.state_dict() if self.curriculum else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = state["cursor"]
        for lv, k in state.get("drawn", {}).items():  # fast-forward each level's stream
            lv = int(lv)
            for _ in range(k - self._drawn[lv]):
                next(self._streams[lv])
            self._drawn[lv] = k
        if self.curriculum and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], str]:
    """(prompt ids, pre-fill): the chat template's generation prompt, and the text of a think block it opens
    (R1's `<think>\\n`) that belongs to the assistant's answer."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except ValueError as e:
        raise ValueError(f"grpo: {e}; the model directory needs a tokenizer_config.json with a chat_template "
                         f"(nanoseek's tokenizers get the DeepSeek-R1 one)") from None
    tail = text.rstrip()
    prefill = text[tail.rfind("<think>"):] if tail.endswith("<think>") else ""
    return tokenizer.encode(text, add_special_tokens=False), prefill


# ------------------------------------------------------------------------------------------------ rollouts
@dataclass
class Rollout:
    token_ids: list[int]
    truncated: bool  # stopped by max_tokens, not by EOS


class EngineSampler:
    """G completions per prompt from nanoseek's inference engine, bound to the live model (the weights the
    optimizer just updated; nothing is copied or reloaded)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_model_len: int, max_num_seqs: int):
        from ..infer import LLM
        self.llm = LLM(model, tokenizer=tokenizer, max_model_len=max_model_len, max_num_seqs=max_num_seqs)

    def __call__(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float,
                 top_k: int, seeds: list[int]) -> list[list[Rollout]]:
        from ..infer import SamplingParams
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                 seed=s) for s in seeds]
        outs = self.llm.generate(prompts, params)
        return [[Rollout(list(c.token_ids), c.finish_reason == "length") for c in o.outputs] for o in outs]


# ------------------------------------------------------------------------------------------------ rewards
class Rewards:
    """The configured reward functions, their weights, and safe calls (an exception scores None, counted)."""

    def __init__(self, specs: Sequence[str], weights: Sequence[float] | None, log: Callable[[str], None]):
        self.names = [s.split("(")[0].split(":")[-1] for s in specs]
        self.fns = [resolve_reward(s) for s in specs]
        self.weights = list(weights) if weights else [1.0] * len(self.fns)
        if len(self.weights) != len(self.fns):
            raise ValueError(f"reward_weights: {len(self.weights)} weights for {len(self.fns)} reward functions")
        self.log = log
        self.errors = [0] * len(self.fns)

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every row has the fields every reward needs (an error naming the first row that does not)."""
        for name, fn in zip(self.names, self.fns):
            check_fields(fn, f"reward {name!r}", rows)

    def score(self, completion: str, row: dict[str, Any], length: int) -> list[float | None]:
        fields = {k: v for k, v in row.items() if k != "completion"}
        fields.setdefault("completion_length", length)
        out: list[float | None] = []
        for j, fn in enumerate(self.fns):
            try:
                v = fn(completion, **fields)
                out.append(None if v is None else float(v))
            except Exception as e:  # a broken reward must not stop the run: skip, count, say so once
                if self.errors[j] == 0:
                    self.log(f"grpo: reward {self.names[j]!r} raised {type(e).__name__}: {e} (scored as None; "
                             f"further errors are only counted in reward_errors)")
                self.errors[j] += 1
                out.append(None)
        return out
