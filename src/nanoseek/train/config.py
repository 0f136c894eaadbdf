"""TrainConfig: every knob of a training run, flat, with a TOML/JSON file and `--key value` overrides on top.

Model fields are overridden as `--model.<hf_config_field> value` (e.g. `--model.n_routed_experts 0`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    # what to train
    model: str = "tiny"  # preset name or model directory (config.json; weights loaded when present, for SFT)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dense: bool = False  # dense baseline with the same activated parameters (routed+shared experts -> one MLP)
    attention: str = "mla"  # mla | mha: standard multi-head attention baseline (ablations; not exportable)
    init_std: float | None = None  # None: the config's initializer_range
    # data
    data: str = "builtin"  # a prepared data dir (manifest.json), or a built-in corpus: builtin | pydoc | tasks
    tokenizer: str | None = None  # tokenizer dir; None: train one for built-in corpora (run_dir/tokenizer)
    vocab_size: int = 1024  # for a tokenizer trained here
    tokenizer_digits: int = 1  # ... and the most digits one of its tokens holds (3 = DeepSeek-V3; 1 learns arithmetic)
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch per process
    global_batch_size: int | None = None  # sequences per optimizer step; gradient accumulation fills the gap
    # optimisation
    max_steps: int = 600
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: str = "wsd"  # wsd: warmup, constant, decay (DeepSeek-V3) | cosine | constant
    warmup_steps: int = 30
    decay_frac: float = 0.2  # wsd: fraction of steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # DeepSeek-V3 specifics
    bias_update_speed: float = 1e-3  # gamma of auxiliary-loss-free balancing (0 disables)
    seq_aux_alpha: float = 1e-4  # complementary sequence-wise balance loss (0 disables)
    mtp_lambda: float = 0.3  # MTP loss weight lambda (loss += lambda/D * sum_k CE_k); 0 disables MTP training
    # systems
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 (autocast)
    compile: bool = False
    fp8: bool = False  # DeepSeek-V3 FP8 training: attention/MLP/expert GEMMs in e4m3 (nanoseek.train.fp8_train)
    fp8_scaling: str = "tile"  # tile: V3's 1x128 activation tiles and 128x128 weight blocks | tensor: per-tensor
    parallel: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2 fully_shard)
    expert_parallel: int = 1  # under torchrun: routed experts split over groups of this many ranks (all-to-all)
    seed: int = 1337
    threads: int | None = None
    # evaluation, checkpoints, logging
    run_dir: str = "runs/train"
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    export: bool = True  # save_pretrained the final model into run_dir/model
    log_every: int = 10
    progress: bool = True

    def validate(self) -> None:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"train config: {name}: {msg} (got {getattr(self, name)!r})")
        for name in ("seq_len", "batch_size", "max_steps", "eval_batches", "ckpt_every", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise bad("schedule", "expected wsd, cosine or constant")
        if self.parallel not in ("ddp", "fsdp"):
            raise bad("parallel", "expected ddp or fsdp")
        if not isinstance(self.expert_parallel, int) or self.expert_parallel < 1:
            raise bad("expert_parallel", "expected a positive number of processes")
        if self.attention not in ("mla", "mha"):
            raise bad("attention", "expected mla or mha")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise bad("dtype", "expected auto, float32 or bfloat16")
        if self.fp8_scaling not in ("tile", "tensor"):
            raise bad("fp8_scaling", "expected tile (DeepSeek-V3's fine-grained scaling) or tensor")
        if not isinstance(self.fp8, bool):
            raise bad("fp8", "expected true or false")
        if self.fp8 and self.attention != "mla":
            raise bad("fp8", "FP8 training covers the MLA model only (not the MHA baseline)")
        if not 0 <= self.decay_frac <= 1:
            raise bad("decay_frac", "must lie in [0, 1]")
        if self.lr <= 0:
            raise bad("lr", "must be positive")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise bad("global_batch_size", "must be >= 1")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "must be >= 1")
        if self.tokenizer_digits not in (1, 2, 3):
            raise bad("tokenizer_digits", "expected 1, 2 or 3")

    def global_batch(self, world_size: int = 1) -> int:
        """Sequences per optimizer step; gradient accumulation makes up what the processes' micro-batches don't."""
        per_step = self.global_batch_size or self.batch_size * world_size
        if per_step % (self.batch_size * world_size):
            raise ValueError(f"train config: global_batch_size {per_step} must be a multiple of batch_size × "
                             f"processes = {self.batch_size * world_size}")
        return per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Parse a command-line string into the type of the field's default."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"train config: {name}: expected a boolean, got {value!r}")
    for typ in (int, float):
        if isinstance(default, typ):
            try:
                return typ(value)
            except ValueError:
                if typ is int:
                    try:
                        f = float(value)
                        if f.is_integer():
                            return int(f)
                    except ValueError:
                        pass
                raise ValueError(f"train config: {name}: expected {typ.__name__}, got {value!r}") from None
    if default is None:  # Optional fields: guess
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def load_file(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found")
    with open(path, "rb") as f:
        if path.endswith(".json"):
            return json.load(f)
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML ({e})") from None


def build(file_values: dict[str, Any] | None = None, overrides: list[str] | None = None,
          **kwargs: Any) -> TrainConfig:
    """Defaults < config file < `--key value` overrides < keyword arguments. Unknown keys are errors."""
    defaults = TrainConfig()
    names = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    model_overrides: dict[str, Any] = {}

    def put(key: str, value: Any, source: str) -> None:
        key = key.replace("-", "_")
        if key.startswith("model."):
            model_overrides[key[6:]] = json.loads(value) if isinstance(value, str) and _is_json(value) else value
        elif key in ("model_overrides",) and isinstance(value, dict):
            model_overrides.update(value)
        elif key in names:
            values[key] = _coerce(key, value, names[key])
        else:
            raise ValueError(f"train config: unknown key {key!r} ({source})")

    for k, v in (file_values or {}).items():
        if k == "model" and isinstance(v, dict):  # [model] table in TOML
            for mk, mv in v.items():
                if mk == "name":
                    values["model"] = mv
                else:
                    model_overrides[mk] = mv
        else:
            put(k, v, "config file")
    for key, val in parse_overrides(overrides, "train config"):
        put(key, val, "command line")
    for k, v in kwargs.items():
        put(k, v, "argument")
    cfg = TrainConfig(**values)
    cfg.model_overrides = {**cfg.model_overrides, **model_overrides}
    cfg.validate()
    return cfg


def parse_overrides(args: list[str] | None, what: str) -> list[tuple[str, str]]:
    """`--key value`, `--key=value` and bare `--flag` (= true) pairs, in order."""
    args, out = list(args or []), []
    while args:
        key = args.pop(0)
        if not key.startswith("--"):
            raise ValueError(f"{what}: expected --key value, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, val = key.split("=", 1)
        elif args and not args[0].startswith("--"):
            val = args.pop(0)
        else:
            val = "true"  # a bare flag
        out.append((key, val))
    return out


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
        return True
    except json.JSONDecodeError:
        return False
