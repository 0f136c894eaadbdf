"""`nanoseek plot RUN_DIR`: PNG charts of a run's metrics.jsonl (pretraining, SFT or GRPO).

Charts are drawn with matplotlib's object API on the Agg canvas (no display, no pyplot global state) and written
atomically next to the metrics (or into --out):
    loss.png             training loss (cross-entropy) and validation loss        pretraining / SFT
    lr.png               learning rate
    expert_load.png      max/mean tokens per routed expert, one line per MoE layer (1.0 = perfectly balanced)
    reward.png           mean reward and each reward function's mean              GRPO
    accuracy.png         training accuracy (the task's verifier) and held-out pass@1
    kl.png               k3 KL to the reference (runs with beta > 0)
    completion_length.png  mean completion length, and the truncated fraction
    grpo_stats.png       entropy, clip fraction, fraction of groups with zero reward spread
A chart whose metrics a run does not have is not written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .files import jsonl_values, save_figure

Rows = list[dict[str, Any]]


def read_metrics(path: str | Path) -> Rows:
    """The rows of a metrics.jsonl (a resumed run's repeated steps keep their last value)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (runs of nanoseek train, sft and grpo write one)")
    # a run killed mid-write leaves a partial last line: the rows before it are the run's
    rows = [row for _, row in jsonl_values(path, partial_tail=True)
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float))]
    if not rows:
        raise ValueError(f"{path}: no rows with a `step`")
    return rows


def series(rows: Rows, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of a numeric metric, the last value winning for a repeated step."""
    last: dict[float, float] = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            last[r["step"]] = float(v)
    steps = sorted(last)
    return steps, [last[s] for s in steps]


def _figure(title: str, ylabel: str):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _lines(rows: Rows, out: Path, name: str, title: str, ylabel: str, keys: Sequence[tuple[str, str]],
           log_y: bool = False) -> Path | None:
    """One chart of several metrics (key, label); None when none of them has data."""
    data = [(label, *series(rows, key)) for key, label in keys]
    data = [d for d in data if d[1]]
    if not data:
        return None
    fig, ax = _figure(title, ylabel)
    for i, (label, x, y) in enumerate(data):
        if len(x) < 20:
            ax.plot(x, y, marker="o", markersize=3, label=label, color=f"C{i}")
            continue
        # noisy per-step values: faint, with a trailing moving average over ~5% of the run on top
        w = max(3, len(y) // 20)
        avg = [sum(y[max(0, j - w + 1):j + 1]) / (j + 1 - max(0, j - w + 1)) for j in range(len(y))]
        ax.plot(x, y, color=f"C{i}", alpha=0.25, linewidth=1)
        ax.plot(x, avg, color=f"C{i}", label=f"{label} (mean of {w})")
    if log_y and all(v > 0 for _, _, y in data for v in y):
        ax.set_yscale("log")
    ax.legend()
    return save_figure(fig, out / name)


def _expert_load(rows: Rows, out: Path) -> Path | None:
    layers: dict[str, dict[float, float]] = {}
    for r in rows:
        if isinstance(r.get("load"), dict):
            for layer, v in r["load"].items():
                if isinstance(v, (int, float)):
                    layers.setdefault(str(layer), {})[r["step"]] = float(v)
    if not layers:
        return None
    fig, ax = _figure("expert load per MoE layer", "max / mean tokens per expert")
    for layer, points in sorted(layers.items()):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], label=layer)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.legend(fontsize="small")
    return save_figure(fig, out / "expert_load.png")


def _completion_length(rows: Rows, out: Path) -> Path | None:
    x, y = series(rows, "completion_length")
    if not x:
        return None
    fig, ax = _figure("completion length", "tokens (mean over the step)")
    ax.plot(x, y, label="mean length", color="C0")
    tx, ty = series(rows, "truncated_frac")
    if tx:
        twin = ax.twinx()
        twin.plot(tx, ty, label="truncated fraction", color="C1", alpha=0.7)
        twin.set_ylabel("truncated fraction")
        twin.set_ylim(0, 1)
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    return save_figure(fig, out / "completion_length.png")


def plot(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the charts of `run_dir`'s metrics.jsonl into out_dir (default: run_dir); returns the files written."""
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else (Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent)
    out.mkdir(parents=True, exist_ok=True)
    grpo = any("reward" in r for r in rows)
    reward_keys = sorted({k for r in rows for k in r if k.startswith("rewards/")})
    train_loss = ("ce", "train (cross-entropy)") if any("ce" in r for r in rows) else ("loss", "train")
    charts = [
        None if grpo else _lines(rows, out, "loss.png", "loss", "nats / token",
                                 [train_loss, ("val_loss", "validation")]),
        _lines(rows, out, "lr.png", "learning rate", "lr", [("lr", "lr")]),
        _expert_load(rows, out),
        _lines(rows, out, "reward.png", "reward", "mean reward",
               [("reward", "total (weighted)")] + [(k, k.split("/", 1)[1]) for k in reward_keys]),
        _lines(rows, out, "accuracy.png", "accuracy", "fraction correct",
               [("accuracy", "train samples"), ("eval_accuracy", "held-out pass@1 (greedy)")]),
        _lines(rows, out, "kl.png", "KL to the reference (k3)", "KL", [("kl", "kl")]),
        _completion_length(rows, out),
        _lines(rows, out, "grpo_stats.png", "GRPO statistics", "value",
               [("entropy", "entropy (nats)"), ("clip_ratio", "clip fraction"),
                ("frac_reward_zero_std", "groups with zero reward spread")]),
    ]
    return [c for c in charts if c is not None]
