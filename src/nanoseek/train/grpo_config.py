"""GRPOConfig: every knob of a GRPO run (TRL's names), two presets, and a config file plus `--key value` overrides.

Precedence: defaults < preset < config file (TOML/JSON) < command line < keyword arguments.

Presets (../shared/reference/training_rl.md §4.3, §5.3):
    paper   DeepSeekMath / R1: per-sequence mean ("grpo"), beta 0.04 with the k3 KL to the reference, G 16,
            group std scaling, epsilon 0.2, one policy update per batch.
    modern  TRL's defaults since 2025: beta 0 (no reference model), token-level "dapo" aggregation, group std
            scaling, G 8, epsilon 0.2, one policy update per batch.
The learning rate is not part of a preset: it depends on the model's size (TRL uses 1e-6 for billion-parameter
models; the tiny CPU models here need about 1e-4).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import _coerce, parse_overrides
from .grpo_loss import LOSS_TYPES, SCALE_REWARDS


@dataclass
class GRPOConfig:
    # what to train, on what
    model: str = ""  # model directory (weights + tokenizer with a chat template)
    task: str | None = None  # built-in task name (or package.module:Class)
    levels: Any = None  # task difficulty levels, e.g. "1,2" (default: all)
    data: str | None = None  # jsonl of prompt rows: `prompt` or `messages`, plus the fields the rewards need
    reward: Any = None  # comma-separated reward names / module:function (default: the task's verifier, format)
    reward_weights: Any = None  # comma-separated weights (default: all 1)
    # sampling
    num_prompts: int = 4  # prompts per step
    num_generations: int = 8  # G completions per prompt
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # the objective
    beta: float = 0.0  # KL coefficient; 0 skips the reference model
    epsilon: float = 0.2
    epsilon_high: float | None = None  # upper clip (DAPO's clip-higher); None: epsilon
    loss_type: str = "dapo"  # grpo | dapo | dr_grpo
    scale_rewards: str = "group"  # group | batch | none
    num_iterations: int = 1  # policy updates per batch (mu)
    mask_truncated_completions: bool = False
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal and draw more prompts
    max_sampling_rounds: int = 4  # rollout rounds per step when dynamic sampling refills the batch
    curriculum: bool = False  # draw a task's levels where the policy's group accuracy is strictly between 0 and 1
    # optimisation
    max_steps: int = 100
    lr: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    micro_batch_size: int = 16  # sequences per forward/backward
    bias_update_speed: float = 0.0  # aux-loss-free balancing during RL (0: routing biases frozen)
    # systems, evaluation, checkpoints
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    threads: int | None = None
    eval_prompts: int = 500  # distinct held-out test problems: greedy accuracy at the start, every eval_every, the end
    eval_every: int = 0
    run_dir: str = "runs/grpo"
    ckpt_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False
    export: bool = True
    log_every: int = 1
    progress: bool = True
    preset: str | None = None  # recorded; applied by build()

    # ------------------------------------------------------------------ derived values
    def level_list(self) -> list[int] | None:
        if self.levels in (None, ""):
            return None
        items = self.levels if isinstance(self.levels, (list, tuple)) else str(self.levels).split(",")
        try:
            return [int(x) for x in items]
        except ValueError:
            raise ValueError(f"grpo config: levels: expected integers such as 1,2 (got {self.levels!r})") from None

    def reward_list(self, task: Any = None) -> list[str]:
        if self.reward in (None, "", []):
            return [task.reward if task is not None else "accuracy", "format"]
        if isinstance(self.reward, (list, tuple)):
            return [str(r) for r in self.reward]
        return _split_top_level(str(self.reward))

    def reward_weight_list(self) -> list[float] | None:
        if self.reward_weights in (None, "", []):
            return None
        items = self.reward_weights if isinstance(self.reward_weights, (list, tuple)) else \
            str(self.reward_weights).split(",")
        try:
            return [float(x) for x in items]
        except ValueError:
            raise ValueError(f"grpo config: reward_weights: expected numbers such as 1,0.2 "
                             f"(got {self.reward_weights!r})") from None

    def validate(self) -> None:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"grpo config: {name}: {msg} (got {getattr(self, name)!r})")
        if not self.model:
            raise bad("model", "a model directory is required (--model DIR)")
        if bool(self.task) == bool(self.data):
            raise ValueError("grpo config: give exactly one of --task NAME and --data FILE.jsonl")
        for name in ("num_prompts", "num_generations", "max_completion_length", "max_steps", "num_iterations",
                     "micro_batch_size", "ckpt_every", "log_every", "keep_checkpoints", "max_sampling_rounds"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.loss_type not in LOSS_TYPES:
            raise bad("loss_type", f"expected one of {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise bad("scale_rewards", f"expected one of {', '.join(SCALE_REWARDS)}")
        if self.schedule not in ("constant", "cosine", "wsd"):
            raise bad("schedule", "expected constant, cosine or wsd")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise bad("dtype", "expected auto, float32 or bfloat16")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise bad("epsilon", "clip ranges must be >= 0")
        if self.beta < 0:
            raise bad("beta", "must be >= 0")
        if self.temperature <= 0:
            raise bad("temperature", "must be > 0 (GRPO needs diverse samples)")
        if self.lr <= 0:
            raise bad("lr", "must be positive")
        self.level_list()
        self.reward_weight_list()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: `accuracy,length_penalty(max_length=64, cache=16)` is two rewards."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"loss_type": "grpo", "beta": 0.04, "num_generations": 16, "scale_rewards": "group", "epsilon": 0.2,
              "epsilon_high": None, "num_iterations": 1, "temperature": 1.0},
    "modern": {"loss_type": "dapo", "beta": 0.0, "num_generations": 8, "scale_rewards": "group", "epsilon": 0.2,
               "epsilon_high": None, "num_iterations": 1, "temperature": 1.0},
}


def build(file_values: dict[str, Any] | None = None, overrides: list[str] | None = None, **kwargs: Any
          ) -> GRPOConfig:
    """defaults < preset < config file < `--key value` overrides < keyword arguments. Unknown keys are errors."""
    defaults = GRPOConfig()
    names = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(GRPOConfig)}
    layers: list[tuple[str, dict[str, Any]]] = [("config file", dict(file_values or {}))]
    cli: dict[str, Any] = dict(parse_overrides(overrides, "grpo config"))
    layers += [("command line", cli), ("argument", kwargs)]
    values: dict[str, Any] = {}
    for source, layer in layers:
        for k, v in layer.items():
            k = k.replace("-", "_")
            if k not in names:
                raise ValueError(f"grpo config: unknown key {k!r} ({source})")
            values[k] = _coerce(k, v, names[k])
    preset = values.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"grpo config: preset: expected one of {', '.join(PRESETS)} (got {preset!r})")
        values = {**PRESETS[preset], **values}
    cfg = GRPOConfig(**values)
    cfg.validate()
    return cfg
