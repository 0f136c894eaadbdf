"""The training-loop skeleton that pretraining, SFT and GRPO extend.

A run is: resume from run_dir's newest checkpoint (or start a fresh metrics log), then steps until max_steps; after
each step its metrics row, an evaluation when due (every eval_every steps and at the end), a checkpoint when due
(every ckpt_every steps and at the end), the progress bar; finally the exported model. A subclass says what one
step is (`run_step`), what its checkpoint holds (`checkpoint_state` / `load_checkpoint_state`), how it evaluates
(`evaluation`) and what its summary is; checkpoints are atomic and a resumed run continues exactly (data, RNG and
optimizer state), its metrics log cut back to the checkpoint's step.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

from torch import nn

from . import state
from .settings import RunConfig


class TrainingError(RuntimeError):
    """A run that cannot continue (NaN loss...): reported in one line, the last good checkpoint kept."""


class TrainingLoop:
    label = "train"  # the progress bar's name

    def __init__(self, cfg: RunConfig, model: nn.Module, log: Callable[[str], None] = print, is_main: bool = True):
        self.cfg, self.model, self.log, self.is_main = cfg, model, log, is_main
        self.step = 0
        self.ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
        self.metrics_path = os.path.join(cfg.run_dir, "metrics.jsonl")

    # ------------------------------------------------------------------ what a subclass provides
    def run_step(self) -> dict[str, Any]:
        """One step; advances self.step and returns its metrics row."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the step and the RNG state (collective under FSDP)."""
        raise NotImplementedError

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        raise NotImplementedError

    def evaluation(self) -> dict[str, Any]:
        """Metrics of an evaluation, for the row of the step it follows ({} when there is nothing to evaluate)."""
        return {}

    def begin(self) -> None:
        """After resuming, before the first step of this call."""

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """The progress bar's figures for a step."""
        return {}

    def after_step(self, row: dict[str, Any]) -> None:
        """After a step's row is complete (evaluation included), before it is written."""

    def summary(self) -> dict[str, Any]:
        return {"step": self.step}

    def barrier(self) -> None:
        """Wait for every process (a no-op for one process)."""

    # ------------------------------------------------------------------ checkpoints and metrics
    def save_checkpoint(self) -> str | None:
        sd = self.checkpoint_state()  # every rank takes part (FSDP gathers here)
        path = state.save(self.ckpt_dir, self.step, sd, self.cfg.keep_checkpoints) if self.is_main else None
        self.barrier()
        return path

    def resume(self) -> bool:
        ckpt = state.load_latest(self.ckpt_dir, self.log)
        if ckpt is None:
            return False
        self.load_checkpoint_state(ckpt)
        state.set_rng_state(ckpt["rng"])
        self.step = ckpt["step"]
        if self.is_main:
            state.truncate_log(self.metrics_path, self.step)
        self.log(f"resumed from {ckpt['_path']} at step {self.step}")
        return True

    def write_row(self, row: dict[str, Any], path: str | None = None) -> None:
        """Append one JSON line to metrics.jsonl (or `path`), on the main process."""
        if self.is_main:
            with open(path or self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def due(self, every: int) -> bool:
        """Whether the step just taken is one of every `every` (0: never), or the last."""
        return self.step == self.cfg.max_steps or bool(every) and self.step % every == 0

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to max_steps (or stop after `stop_after` steps in this call, for tests of interruption)."""
        cfg = self.cfg
        os.makedirs(cfg.run_dir, exist_ok=True)
        if cfg.resume:
            self.resume()
        elif self.is_main and os.path.exists(self.metrics_path):
            os.remove(self.metrics_path)  # a fresh run starts a fresh log
        self.model.train()
        self.begin()
        bar = None
        if self.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.label, dynamic_ncols=True)
        done = 0
        while self.step < cfg.max_steps and (stop_after is None or done < stop_after):
            row = self.run_step()
            done += 1
            if self.due(cfg.eval_every):
                row.update(self.evaluation())
            self.after_step(row)
            self.write_row(row)
            if bar is not None:
                bar.set_postfix(self.postfix(row), refresh=False)
                bar.update(1)
            if self.due(cfg.ckpt_every):
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        return self.summary()

    def export(self, out_dir: str | None = None, tokenizer: Any = None, fp8: bool = False) -> str:
        """The model in the Hugging Face layout (loads in transformers and vLLM) with its tokenizer (a directory or
        an object with save_pretrained), by default into run_dir/model."""
        from ..checkpoint import save_pretrained
        out = out_dir or os.path.join(self.cfg.run_dir, "model")
        save_pretrained(self.model, out, tokenizer=tokenizer, fp8=fp8)
        return out
