"""`nanoseek report`: resolve the target, compute, measure, chart, and write report.md + report.json + PNGs."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..files import atomic_write, write_json
from ..presets import PRESETS
from .accounting import accounting, human, human_bytes
from .measure import measure, skip_reason


@dataclass
class Target:
    name: str
    kind: str  # "preset", "model" or "run"
    config: ModelConfig | None
    model_dir: Path | None = None
    run_dir: Path | None = None


def resolve(target: str | os.PathLike) -> Target:
    """A preset name, a model directory (config.json) or a run directory (metrics.jsonl, maybe model/)."""
    p = Path(target)
    if p.is_dir():
        if (p / "config.json").is_file():
            return Target(p.name or str(p), "model", ModelConfig.from_pretrained(p), model_dir=p)
        if (p / "metrics.jsonl").is_file():
            model = p / "model"
            if (model / "config.json").is_file():
                return Target(p.name, "run", ModelConfig.from_pretrained(model), model_dir=model, run_dir=p)
            return Target(p.name, "run", None, run_dir=p)
        raise FileNotFoundError(f"{p}: neither a model directory (config.json) nor a run directory (metrics.jsonl)")
    if str(target) in PRESETS:
        return Target(str(target), "preset", ModelConfig.preset(str(target)))
    raise ValueError(f"{target!r}: not a preset ({', '.join(PRESETS)}), a model directory or a run directory")


# ------------------------------------------------------------------------------------------------ run directories
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_summary(run_dir: Path) -> dict[str, Any]:
    """First/last values of the logged curves, median throughput, and the last expert load per layer."""
    from ..plot import read_metrics, series
    rows = read_metrics(run_dir)
    out: dict[str, Any] = {"rows": len(rows), "last_step": max(r["step"] for r in rows)}
    for key in ("loss", "ce", "mtp1", "val_loss", "reward", "accuracy", "eval_accuracy", "kl", "completion_length"):
        steps, vals = series(rows, key)
        if vals:
            out[key] = {"first": vals[0], "last": vals[-1], "min": min(vals), "max": max(vals), "points": len(vals)}
    for key in ("tokens_per_s", "mfu"):
        _, vals = series(rows, key)
        if vals:
            out[key] = {"median": statistics.median(vals), "last": vals[-1]}
    loads = [r["load"] for r in rows if isinstance(r.get("load"), dict)]
    if loads:
        out["expert_load_last"] = {str(k): float(v) for k, v in loads[-1].items() if _num(v)}
        _, worst = series(rows, "load_max_over_mean")
        if worst:
            out["load_max_over_mean"] = {"first": worst[0], "last": worst[-1]}
    return out


# ------------------------------------------------------------------------------------------------ the report
def build_report(target: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, measure_speed: bool = True,
                 seq_len: int = 4096, batch: int = 4, train_seq: int = 128, steps: int = 3, decode_batch: int = 8,
                 new_tokens: int = 32, device: str | None = None, tokens: float | None = None,
                 mfu: float | None = None, price_per_hour: float = 2.0,
                 compare: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the report into out_dir (default: RUN_DIR/report for a run, else ./report-NAME); returns it as a
    dict with "files" (the paths written) and "markdown"."""
    from . import charts
    t = resolve(target)
    out = Path(out_dir) if out_dir is not None else (t.run_dir / "report" if t.run_dir else Path(f"report-{t.name}"))
    out.mkdir(parents=True, exist_ok=True)
    rep: dict[str, Any] = {"target": str(target), "name": t.name, "kind": t.kind,
                           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                       "cpus": os.cpu_count(), "torch": torch.__version__}}
    files: list[Path] = []
    if t.config is not None:
        acc = accounting(t.config, seq_len=seq_len)
        rep["accounting"] = acc
        files += [charts.params_chart(acc, out), charts.kv_chart(acc, out), charts.flops_chart(acc, out)]
        reason = skip_reason(acc["params"]["total"]) if measure_speed else "skipped: --no-measure"
        if reason is None:
            model, tokenizer = _instantiate(t, device)
            rep["measured"] = measure(model, tokenizer, trained=t.kind != "preset", batch=batch, seq=train_seq,
                                      steps=steps, decode_batch=decode_batch, new_tokens=new_tokens)
            files.append(charts.throughput_chart(rep["measured"], out))
            load = rep["measured"]["training"]["expert_load_max_over_mean"]
            if load:
                files.append(charts.load_chart(load, out))
        else:
            rep["measured"] = {"skipped": reason}
    from .cost import cost_section
    rep["cost"] = cost_section(t.config, t.run_dir, Path(compare) if compare is not None else None, tokens, seq_len,
                               mfu, price_per_hour)
    if t.run_dir is not None:
        from ..plot import plot
        rep["run"] = run_summary(t.run_dir)
        files += plot(t.run_dir, out)
    from .markdown import render
    rep["files"] = [str(f) for f in files]
    text = render(rep, [f.name for f in files])
    md = out / "report.md"
    atomic_write(md, text)
    rep["files"] += [str(md), str(out / "report.json")]
    write_json(out / "report.json", rep)
    rep["markdown"] = text
    return rep


def _instantiate(t: Target, device: str | None):
    """The model to measure, in fp32: the directory's weights (and tokenizer), or a preset's random init."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if t.model_dir is not None:
        from ..checkpoint import load_pretrained
        model = load_pretrained(t.model_dir, dtype=torch.float32, device=dev, mtp=True)
        tokenizer = None
        if (t.model_dir / "tokenizer.json").is_file():
            from ..tokenizer import Tokenizer
            tokenizer = Tokenizer.from_pretrained(t.model_dir)
        return model, tokenizer
    from ..model import Transformer
    torch.manual_seed(0)
    with torch.device(dev):
        model = Transformer(t.config)
    return model.eval(), None


__all__ = ["build_report", "resolve", "run_summary", "Target", "human", "human_bytes"]
