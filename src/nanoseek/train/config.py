"""TrainConfig (pretraining) and SFTConfig (fine-tuning on chats): flat settings, a TOML/JSON file and `--key value`
overrides on top (`nanoseek.train.settings`).

Model fields are overridden as `--model.<hf_config_field> value` (e.g. `--model.n_routed_experts 0`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .settings import RunConfig, parse_json_or_text


@dataclass
class TrainConfig(RunConfig):
    """`nanoseek train`: pretraining from scratch (RunConfig's fields, then these)."""
    what: ClassVar[str] = "train config"
    model: str = "tiny"  # preset name or model directory (its config.json): the architecture to train
    model_overrides: dict[str, Any] = field(default_factory=dict)  # model config fields (--model.<field> value)
    dense: bool = False  # dense baseline with the same activated parameters (routed+shared experts -> one MLP)
    attention: str = "mla"  # mla | mha: standard multi-head attention baseline (ablations; not exportable)
    init_std: float | None = None  # initialisation std (None: the config's initializer_range)
    # data
    data: str = "builtin"  # a prepared data dir (manifest.json), or a built-in corpus: builtin | pydoc | tasks
    tokenizer: str | None = None  # tokenizer dir; None: train one for built-in corpora (run_dir/tokenizer)
    vocab_size: int = 1024  # for a tokenizer trained here
    tokenizer_digits: int = 1  # most digits one token of a tokenizer trained here holds (3: DeepSeek-V3; 1 learns sums)
    seq_len: int = 256  # tokens per training sequence
    batch_size: int = 16  # sequences per micro-batch per process
    global_batch_size: int | None = None  # sequences per optimizer step; gradient accumulation fills the gap
    decay_frac: float = 0.2  # wsd: fraction of steps spent decaying
    # DeepSeek-V3 specifics
    seq_aux_alpha: float = 1e-4  # complementary sequence-wise balance loss (0 disables)
    mtp_lambda: float = 0.3  # MTP loss weight lambda (loss += lambda/D * sum_k CE_k); 0 disables MTP training
    # systems
    compile: bool = False  # torch.compile the training step
    fp8: bool = False  # DeepSeek-V3 FP8 training: attention/MLP/expert GEMMs in e4m3 (nanoseek.train.fp8_train)
    fp8_scaling: str = "tile"  # tile: V3's 1x128 activation tiles and 128x128 weight blocks | tensor: per-tensor
    parallel: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2 fully_shard)
    expert_parallel: int = 1  # under torchrun: routed experts split over groups of this many ranks (all-to-all)
    eval_batches: int = 8  # validation batches per evaluation

    def validate(self) -> None:
        super().validate()
        bad = self.bad
        for name in ("seq_len", "batch_size", "eval_batches", "eval_every"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.parallel not in ("ddp", "fsdp"):
            raise bad("parallel", "expected ddp or fsdp")
        if not isinstance(self.expert_parallel, int) or self.expert_parallel < 1:
            raise bad("expert_parallel", "expected a positive number of processes")
        if self.attention not in ("mla", "mha"):
            raise bad("attention", "expected mla or mha")
        if self.fp8_scaling not in ("tile", "tensor"):
            raise bad("fp8_scaling", "expected tile (DeepSeek-V3's fine-grained scaling) or tensor")
        if not isinstance(self.fp8, bool):
            raise bad("fp8", "expected true or false")
        if self.fp8 and self.attention != "mla":
            raise bad("fp8", "FP8 training covers the MLA model only (not the MHA baseline)")
        if not 0 <= self.decay_frac <= 1:
            raise bad("decay_frac", "must lie in [0, 1]")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise bad("global_batch_size", "must be >= 1")
        if self.tokenizer_digits not in (1, 2, 3):
            raise bad("tokenizer_digits", "expected 1, 2 or 3")

    def global_batch(self, world_size: int = 1) -> int:
        """Sequences per optimizer step; gradient accumulation makes up what the processes' micro-batches don't."""
        per_step = self.global_batch_size or self.batch_size * world_size
        if per_step % (self.batch_size * world_size):
            raise ValueError(f"train config: global_batch_size {per_step} must be a multiple of batch_size × "
                             f"processes = {self.batch_size * world_size}")
        return per_step

    # ------------------------------------------------------------------ `--model.<field>` and a [model] table
    @classmethod
    def _file_items(cls, file_values: dict[str, Any]) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        for k, v in file_values.items():
            if k == "model" and isinstance(v, dict):  # [model] table in TOML: name = preset, other keys override
                items += [("model" if mk == "name" else f"model.{mk}", mv) for mk, mv in v.items()]
            else:
                items.append((k, v))
        return items

    @classmethod
    def _put(cls, values: dict[str, Any], key: str, value: Any, source: str, defaults: dict[str, Any]) -> None:
        overrides = values.setdefault("model_overrides", {})
        if key.startswith("model."):
            overrides[key[6:]] = parse_json_or_text(value) if isinstance(value, str) else value
        elif key == "model_overrides" and isinstance(value, dict):
            overrides.update(value)
        else:
            super()._put(values, key, value, source, defaults)


@dataclass
class SFTConfig(TrainConfig):
    """`nanoseek sft`: fine-tuning on chats (TrainConfig's fields with fine-tuning defaults, then these)."""
    what: ClassVar[str] = "sft config"
    model: str = "tiny"  # model directory to fine-tune (weights + tokenizer), or a preset trained from scratch
    data: str = ""  # chat jsonl file(s), comma-separated, or a prepared data directory (or use --task)
    run_dir: str = "runs/sft"  # where checkpoints, metrics.jsonl and the exported model go
    max_steps: int = 200  # optimizer steps
    lr: float = 3e-4  # peak learning rate
    schedule: str = "cosine"  # wsd | cosine | constant
    warmup_steps: int = 10  # linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    batch_size: int = 8  # sequences per micro-batch per process
    seq_len: int = 512  # tokens per packed row of conversations
    eval_every: int = 50  # evaluate every this many steps (and at the end)
    ckpt_every: int = 50  # checkpoint every this many steps (and at the end)
    eval_batches: int = 4  # validation batches per evaluation
    task: str | None = None  # built-in task (e.g. arithmetic) whose worked solutions are the data, instead of --data
    task_examples: int = 2000  # worked solutions generated for --task
    task_levels: Any = None  # comma-separated difficulty levels for --task, e.g. 1,2 (default: all)
    task_shortcuts: float = 0.0  # fraction of --task's solutions that show only the result, not the work

    def validate(self) -> None:
        super().validate()
        if self.attention != "mla":
            raise self.bad("attention", "mha is a pretraining ablation baseline; SFT trains and exports DeepSeek "
                                        "(MLA) models")
        if self.task and self.data:
            raise ValueError(f"{self.what}: give --data or --task, not both")
        if not 0.0 <= self.task_shortcuts <= 1.0:
            raise self.bad("task_shortcuts", "must be a fraction in [0, 1]")
        if self.task_examples < 1:
            raise self.bad("task_examples", "must be >= 1")
        self.level_list()

    def level_list(self) -> list[int] | None:
        return level_list(self.task_levels, f"{self.what}: task_levels")


def level_list(levels: Any, name: str) -> list[int] | None:
    """`1,2`, [1, 2] or None (all levels) as a list of ints."""
    if levels in (None, ""):
        return None
    items = levels if isinstance(levels, (list, tuple)) else str(levels).split(",")
    try:
        return [int(x) for x in items]
    except ValueError:
        raise ValueError(f"{name}: expected integers such as 1,2 (got {levels!r})") from None


def build(file_values: dict[str, Any] | None = None, overrides: list[str] | None = None,
          **kwargs: Any) -> TrainConfig:
    """TrainConfig.build: defaults < config file < `--key value` overrides < keyword arguments."""
    return TrainConfig.build(file_values, overrides, **kwargs)
