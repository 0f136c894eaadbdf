"""Settings: the dataclass configs of the training commands, built from defaults < config file < `--key value`.

Every training command (`train`, `sft`, `grpo`, `distill`) takes one dataclass of settings, flat, with one comment
per field. `Settings.build` layers a TOML/JSON file and command-line overrides on the defaults, refusing unknown
keys; `Settings.help` turns the fields' comments into the command's `--help`, so the documentation of a setting is
written once, next to its default. `RunConfig` holds the fields every training loop shares (optimizer, schedule,
checkpoints, logging, device); `TrainConfig`, `SFTConfig` and `GRPOConfig` extend it.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import tokenize
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="Settings")


class Settings:
    """Base of the commands' dataclass configs: building from layered sources, validation, help, serialisation."""
    what: ClassVar[str] = "config"  # the name error messages start with

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls: type[S], file_values: dict[str, Any] | None = None, overrides: list[str] | None = None,
              **kwargs: Any) -> S:
        """Defaults < config file < `--key value` overrides < keyword arguments. Unknown keys are errors."""
        values: dict[str, Any] = {}
        defaults = cls.defaults()
        layers = (("config file", cls._file_items(file_values or {})),
                  ("command line", parse_overrides(overrides, cls.what)), ("argument", list(kwargs.items())))
        for source, items in layers:
            for key, value in items:
                cls._put(values, key.replace("-", "_"), value, source, defaults)
        cfg = cls._make(values)
        cfg.validate()
        return cfg

    @classmethod
    def _file_items(cls, file_values: dict[str, Any]) -> list[tuple[str, Any]]:
        return list(file_values.items())

    @classmethod
    def _put(cls, values: dict[str, Any], key: str, value: Any, source: str, defaults: dict[str, Any]) -> None:
        """Set one key's value, parsed to its field's type (`defaults`: each field's default)."""
        if key not in defaults and cls.owns(key):  # `--no-KEY`: a boolean setting off
            key, value = key[3:], not coerce(f"{cls.what}: {key}", value, True)
        if key not in defaults:
            raise ValueError(f"{cls.what}: unknown key {key!r} ({source})")
        values[key] = coerce(f"{cls.what}: {key}", value, defaults[key])

    @classmethod
    def owns(cls, key: str) -> bool:
        """Whether `key` (underscored) names a setting: a field, or `no_` and a boolean field."""
        defaults = cls.defaults()
        return key in defaults or key.startswith("no_") and isinstance(defaults.get(key[3:]), bool)

    @classmethod
    def _make(cls: type[S], values: dict[str, Any]) -> S:
        return cls(**values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        made = cls()  # type: ignore[call-arg]
        return {f.name: getattr(made, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""

    def bad(self, name: str, msg: str) -> ValueError:
        return ValueError(f"{self.what}: {name}: {msg} (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    # ------------------------------------------------------------------ help
    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's comment (`name: type = default  # what it does`), the most derived class's winning."""
        out: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or not dataclasses.is_dataclass(klass):
                continue
            out.update(_field_comments(klass))
        return out

    @classmethod
    def help(cls) -> str:
        """Every setting with its default and what it does: the epilog of the command's `--help`."""
        docs, rows = cls.field_help(), []
        for name, default in cls.defaults().items():
            shown = default if isinstance(default, str) and default else json.dumps(default)
            head = f"  --{name} {shown}"
            text = docs.get(name, "")
            rows.append(f"{head:<36}{text}" if len(head) < 36 else f"{head}\n{'':<36}{text}")
        return ("settings (--key value or --key=value, a bare --key for true and --no-key for false; a config file "
                "takes the same keys):\n" + "\n".join(rows))


def _field_comments(klass: type) -> dict[str, str]:
    """{field: its trailing comment} read from the class's own source (not its bases')."""
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):  # no source (a frozen build): help without the comments
        return {}
    names = set(klass.__dict__.get("__annotations__", {}))
    out: dict[str, str] = {}
    line_name: dict[int, str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens[:-1]):
        # a field line: `name:` at the class body's indentation; its comment is the last token on the line
        if tok.type == tokenize.NAME and tok.string in names and tokens[i + 1].string == ":" \
                and tok.start[1] == 4 and tok.start[0] not in line_name:
            line_name[tok.start[0]] = tok.string
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_name:
            out.setdefault(line_name[tok.start[0]], tok.string.lstrip("#").strip())
    return out


# ---------------------------------------------------------------------------------------------------- parsing
def coerce(name: str, value: Any, default: Any) -> Any:
    """Parse a command-line string into the type of the field's default (`name` prefixes the error)."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
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
                raise ValueError(f"{name}: expected {typ.__name__}, got {value!r}") from None
    if default is None:  # Optional fields: a JSON value (number, list...) or the string itself
        return parse_json_or_text(value)
    return value


def parse_json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_file(path: str) -> dict[str, Any]:
    """A TOML or JSON config file as a dict."""
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


# ---------------------------------------------------------------------------------------------------- shared fields
@dataclass
class RunConfig(Settings):
    """The settings every training loop shares: what it starts from, the optimizer and its schedule, the device,
    checkpoints and logging."""
    model: str = ""  # preset name or model directory
    # optimisation
    max_steps: int = 600  # optimizer steps
    lr: float = 3e-3  # peak learning rate
    schedule: str = "wsd"  # wsd: warmup, constant, decay (DeepSeek-V3) | cosine | constant
    warmup_steps: int = 30  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms, biases, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this
    bias_update_speed: float = 1e-3  # gamma of auxiliary-loss-free balancing (0: routing biases frozen)
    # systems
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on a GPU that has it, else fp32) | float32 | bfloat16
    seed: int = 1337  # seeds initialisation, data order and sampling
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # evaluation, checkpoints, logging
    run_dir: str = "runs/train"  # where checkpoints, metrics.jsonl and the exported model go
    eval_every: int = 100  # evaluate every this many steps (and at the end)
    ckpt_every: int = 100  # checkpoint every this many steps (and at the end)
    keep_checkpoints: int = 2  # the newest checkpoints kept
    resume: bool = False  # continue from run_dir's newest checkpoint (exactly: data, RNG and optimizer state)
    export: bool = True  # write the final model to run_dir/model (Hugging Face layout, with its tokenizer)
    log_every: int = 10  # throughput and MFU in metrics.jsonl every this many steps
    progress: bool = True  # a progress bar on stderr

    def validate(self) -> None:
        for name in ("max_steps", "ckpt_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise self.bad(name, "must be >= 1")
        if self.eval_every < 0:
            raise self.bad("eval_every", "must be >= 0")
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise self.bad("schedule", "expected wsd, cosine or constant")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise self.bad("dtype", "expected auto, float32 or bfloat16")
        if self.lr <= 0:
            raise self.bad("lr", "must be positive")
