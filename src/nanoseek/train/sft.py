"""`nanoseek sft`: chat supervised fine-tuning on the pretraining loop.

    nanoseek sft --model runs/train/model --data chats.jsonl        # chat `messages`, `reasoning_content` allowed
    nanoseek sft --model runs/train/model --task arithmetic         # built-in worked solutions, offline

The jsonl is tokenized with the model directory's tokenizer and chat template into the run directory
(`run_dir/data/<name>`), conversations are packed into rows, the loss is on assistant tokens only (labels -100
elsewhere; the reasoning trace of the last assistant message is a target, see `nanoseek.data.encode_chat`), and the
Trainer of pretraining does the rest: checkpoints and exact resume, metrics.jsonl, validation loss. The result is
exported to `run_dir/model` with its tokenizer, ready for `nanoseek.LLM`, GRPO or another SFT.

Fine-tuning starts from the model directory's weights; `--model PRESET` with `--tokenizer DIR` trains from scratch.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..data import CORPORA, DataError, TokenDataset, iter_packed, prepare, read_manifest
from ..files import atomic_write
from . import distributed
from .config import SFTConfig
from .data import unigram_entropy
from .pretrain import launch
from .trainer import Batch, Data, Trainer

def has_weights(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").exists())


def tokenizer_dir(cfg: SFTConfig) -> str:
    """The tokenizer SFT renders chats with: --tokenizer, else the model directory's own."""
    for d in (cfg.tokenizer, cfg.model):
        if d and os.path.isfile(os.path.join(d, "tokenizer.json")):
            return d
    if cfg.tokenizer:
        raise FileNotFoundError(f"no tokenizer.json in {cfg.tokenizer}")
    raise FileNotFoundError(f"model {cfg.model!r} has no tokenizer.json: pass --tokenizer DIR (SFT renders chats "
                            f"with the tokenizer's chat template)")


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows as JSON lines, written atomically (a crash leaves the old file or the whole new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def task_sft_rows(task: str, n: int, levels: Sequence[int] | None = None, seed: int = 0,
                  shortcuts: float = 0.0) -> list[dict[str, Any]]:
    """`n` worked solutions of a built-in task's train split as chat rows (reasoning in `reasoning_content`).
    `shortcuts`: the fraction of them (each row drawn independently, seeded) that show only the last step, the
    answer without the work, as in text found in the wild; `worked` in each row says which it is."""
    from .. import tasks
    if not 0.0 <= shortcuts <= 1.0:
        raise ValueError(f"sft: task shortcuts must be a fraction in [0, 1] (got {shortcuts})")
    t = tasks.get(task)
    lv = list(levels) if levels else list(range(1, t.num_levels + 1))
    rng = random.Random(f"nanoseek-sft-shortcuts-{task}-{seed}")
    rows = []
    for ex in t.examples(n, split="train", level=lv, seed=seed):
        worked = rng.random() >= shortcuts
        rows.append({"messages": t.sft_messages(ex, reasoning_content=True, worked=worked), "id": ex["id"],
                     "level": ex["level"], "worked": worked})
    return rows


def resolve_inputs(cfg: SFTConfig, write: bool = True) -> tuple[list[str] | str, str]:
    """(what to prepare: jsonl files or an already prepared directory, its name in run_dir/data). A task's file is
    written when `write` (the main process) and missing."""
    if cfg.task:
        levels = cfg.level_list()
        spec = json.dumps([cfg.task, cfg.task_examples, list(levels or []), cfg.seed]
                          + ([cfg.task_shortcuts] if cfg.task_shortcuts else []))  # (names of earlier runs' data kept)
        name = f"task-{cfg.task}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"  # other settings, other data
        path = os.path.join(cfg.run_dir, "data", f"{name}.jsonl")
        if write and not os.path.exists(path):
            write_jsonl(path, task_sft_rows(cfg.task, cfg.task_examples, levels, cfg.seed, cfg.task_shortcuts))
        return [path], name
    if not cfg.data or cfg.data in CORPORA:
        raise ValueError("sft needs --data FILE.jsonl (chat `messages`), a prepared data directory, or "
                         "--task NAME (built-in worked solutions)")
    if os.path.isfile(os.path.join(cfg.data, "manifest.json")):
        return cfg.data, ""
    files = [f for f in cfg.data.split(",") if f]
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"sft data file {f} not found")
    return files, Path(files[0]).stem


def sft_data(cfg: SFTConfig, env: distributed.DistEnv, global_batch: int) -> Data:
    tok_dir = tokenizer_dir(cfg)
    inputs, name = resolve_inputs(cfg, write=env.is_main)
    if isinstance(inputs, str):
        data_dir = inputs
        read_manifest(data_dir)
    else:
        data_dir = os.path.join(cfg.run_dir, "data", name)
        if env.is_main:
            manifest = prepare(inputs, tok_dir, data_dir, progress=cfg.progress)
            if not manifest["loss_mask"]:
                raise DataError(f"{', '.join(inputs)}: no chat `messages` rows; SFT needs conversations "
                                "(plain `text` rows are pretraining data: use `nanoseek train`)")
        distributed.barrier(env)
    train = TokenDataset(data_dir, "train")
    pad = train.manifest["tokenizer"]["eos_token_id"]
    try:
        val: TokenDataset | None = TokenDataset(data_dir, "validation")
    except DataError:
        val = None
        if env.is_main:
            warnings.warn(f"{data_dir}: no validation conversations (too little data for the 5% split); "
                          "val_loss is measured on training conversations", stacklevel=2)

    def train_batches(start: int) -> Iterator[Batch]:
        return train.sft_batches(global_batch, cfg.seq_len, seed=cfg.seed, start_step=start)

    def val_batches() -> Iterator[Batch]:
        ds = val or train
        rows = iter_packed((ds.document(i) for i in range(ds.num_documents)), cfg.seq_len, pad)
        while True:
            chunk = list(itertools.islice(rows, cfg.batch_size))
            if not chunk:
                return
            yield torch.from_numpy(np.stack([r[0] for r in chunk])), torch.from_numpy(np.stack([r[1] for r in chunk]))

    def limited_val() -> Iterator[Batch]:
        return itertools.islice(val_batches(), cfg.eval_batches)

    return Data(train_batches, limited_val, train.vocab_size, unigram_entropy(train), tok_dir,
                {"data_dir": data_dir, "train_tokens": train.num_tokens, "conversations": train.num_documents})


def load_model(cfg: SFTConfig, data: Data) -> torch.nn.Module | None:
    """The model directory's weights (fine-tuning), or None for a preset / config-only directory (from scratch)."""
    if not has_weights(cfg.model):
        return None
    if cfg.model_overrides or cfg.dense:
        raise ValueError(f"sft: --model.<field> and --dense change the architecture; they cannot apply to the "
                         f"pretrained weights in {cfg.model}")
    from ..checkpoint import load_pretrained
    model = load_pretrained(cfg.model, dtype=torch.float32).train()
    if data.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {data.vocab_size} tokens but the model {cfg.model} has "
                         f"vocab_size {model.config.vocab_size}")
    return model


def run(cfg: SFTConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    def describe(trainer: Trainer) -> str:
        info = trainer.data.info
        start = f"training {cfg.model} from scratch" if not has_weights(cfg.model) else f"fine-tuning {cfg.model}"
        return (f"sft: {start}; {info['conversations']:,} conversations, {info['train_tokens']:,} tokens in "
                f"{info['data_dir']}; global batch {trainer.global_batch} x {cfg.seq_len}")

    return launch(cfg, lambda env: sft_data(cfg, env, cfg.global_batch(env.world_size)), describe, log,
                  make_model=lambda data: load_model(cfg, data), record={"stage": "sft"})
