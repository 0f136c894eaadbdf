"""GRPOConfig: every knob of a GRPO run (TRL's names), two presets, and a config file plus `--key value` overrides.

Precedence: defaults < preset < config file (TOML/JSON) < command line < keyword arguments.

Presets:
    paper   DeepSeekMath (arXiv:2402.03300, §4.1) and DeepSeek-R1 (arXiv:2501.12948): the per-sequence mean
            ("grpo"), beta 0.04 with the k3 KL to the reference, G 16, group std scaling, epsilon 0.2, one policy
            update per batch.
    modern  TRL's GRPOTrainer defaults since 2025: beta 0 (no reference model), token-level "dapo" aggregation
            (DAPO, arXiv:2503.14476), group std scaling, G 8, epsilon 0.2, one policy update per batch.
The learning rate is not part of a preset: it depends on the model's size (TRL uses 1e-6 for billion-parameter
models; the tiny CPU models here need about 1e-4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import level_list
from .grpo_loss import LOSS_TYPES, SCALE_REWARDS
from .settings import RunConfig


@dataclass
class GRPOConfig(RunConfig):
    """`nanoseek grpo` (RunConfig's fields with RL defaults, then these)."""
    what: ClassVar[str] = "grpo config"
    model: str = ""  # model directory (weights + tokenizer with a chat template)
    max_steps: int = 100  # GRPO steps (each: rollouts, rewards, num_iterations optimizer steps)
    lr: float = 1e-4  # learning rate
    schedule: str = "constant"  # constant | cosine | wsd
    warmup_steps: int = 0  # linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta2: float = 0.99  # AdamW beta2
    bias_update_speed: float = 0.0  # aux-loss-free balancing during RL (0: routing biases frozen)
    seed: int = 0  # seeds the prompts' order, the sampling and initialisation
    eval_every: int = 0  # held-out evaluation every this many steps (0: at the start and the end only)
    run_dir: str = "runs/grpo"  # where checkpoints, metrics.jsonl, samples.jsonl and the exported model go
    ckpt_every: int = 50  # checkpoint every this many steps (and at the end)
    log_every: int = 1  # a sample completion in samples.jsonl every this many steps
    # what to train on
    task: str | None = None  # built-in task name (or package.module:Class)
    levels: Any = None  # task difficulty levels, e.g. "1,2" (default: all)
    data: str | None = None  # jsonl of prompt rows: `prompt` or `messages`, plus the fields the rewards need
    reward: Any = None  # comma-separated reward names / module:function (default: the task's verifier, format)
    reward_weights: Any = None  # comma-separated weights (default: all 1)
    # sampling
    num_prompts: int = 4  # prompts per step
    num_generations: int = 8  # G completions per prompt
    max_completion_length: int = 256  # the longest completion, in tokens
    temperature: float = 1.0  # sampling temperature of the rollouts (and of the log-probabilities)
    top_p: float = 1.0  # nucleus sampling of the rollouts
    top_k: int = 0  # top-k sampling of the rollouts (0: off)
    # the objective
    beta: float = 0.0  # KL coefficient; 0 skips the reference model
    epsilon: float = 0.2  # lower clip of the probability ratio (1 - epsilon)
    epsilon_high: float | None = None  # upper clip (DAPO's clip-higher); None: epsilon
    loss_type: str = "dapo"  # grpo (per-sequence mean) | dapo (per-token) | dr_grpo (fixed length normaliser)
    scale_rewards: str = "group"  # divide advantages by the reward std of: group | batch | none
    num_iterations: int = 1  # policy updates per batch (mu)
    mask_truncated_completions: bool = False  # completions cut by max_completion_length leave the loss
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal and draw more prompts
    max_sampling_rounds: int = 4  # rollout rounds per step when dynamic sampling refills the batch
    curriculum: bool = False  # draw a task's levels where the policy's group accuracy is strictly between 0 and 1
    micro_batch_size: int = 16  # sequences per forward/backward
    eval_prompts: int = 500  # distinct held-out test problems: greedy accuracy at the start, every eval_every, the end
    preset: str | None = None  # paper | modern: sets the algorithm's settings (under any given explicitly)

    @classmethod
    def _make(cls, values: dict[str, Any]) -> GRPOConfig:
        preset = values.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"{cls.what}: preset: expected one of {', '.join(PRESETS)} (got {preset!r})")
            values = {**PRESETS[preset], **values}
        return cls(**values)

    # ------------------------------------------------------------------ derived values
    def level_list(self) -> list[int] | None:
        return level_list(self.levels, f"{self.what}: levels")

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
            raise ValueError(f"{self.what}: reward_weights: expected numbers such as 1,0.2 "
                             f"(got {self.reward_weights!r})") from None

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise self.bad("model", "a model directory is required (--model DIR)")
        if bool(self.task) == bool(self.data):
            raise ValueError(f"{self.what}: give exactly one of --task NAME and --data FILE.jsonl")
        for name in ("num_prompts", "num_generations", "max_completion_length", "num_iterations",
                     "micro_batch_size", "max_sampling_rounds"):
            if getattr(self, name) < 1:
                raise self.bad(name, "must be >= 1")
        if self.loss_type not in LOSS_TYPES:
            raise self.bad("loss_type", f"expected one of {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise self.bad("scale_rewards", f"expected one of {', '.join(SCALE_REWARDS)}")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise self.bad("epsilon", "clip ranges must be >= 0")
        if self.beta < 0:
            raise self.bad("beta", "must be >= 0")
        if self.temperature <= 0:
            raise self.bad("temperature", "must be > 0 (GRPO needs diverse samples)")
        self.level_list()
        self.reward_weight_list()


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
    """GRPOConfig.build: defaults < preset < config file < `--key value` overrides < keyword arguments."""
    return GRPOConfig.build(file_values, overrides, **kwargs)
