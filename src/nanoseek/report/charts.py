"""The report's bar charts, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state)
and written atomically. A run's curves come from nanoseek.plot."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import save_figure
from .accounting import human, human_bytes


def bars(path: Path, title: str, labels: Sequence[str], values: Sequence[float], texts: Sequence[str],
         xlabel: str, log: bool = False, colors: Sequence[str] | None = None) -> Path:
    """Horizontal bars, each annotated with its text."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 0.6 * len(labels) + 1.4), dpi=100)
    ax = fig.add_subplot()
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors or [f"C{i}" for i in range(len(labels))])
    ax.set_yticks(y, labels)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    top = max(values) if values else 1
    ax.set_xlim(right=top * (8 if log else 1.35))
    for yi, v, t in zip(y, values, texts):
        ax.text(v, yi, f"  {t}", va="center", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def params_chart(acc: dict[str, Any], out: Path) -> Path:
    p = acc["params"]
    labels = ["total", "activated per token", "activated w/o input embedding"]
    values = [p["total"], p["active"], p["active_no_embedding"]]
    texts = [human(p["total"]), f"{human(p['active'])} ({100 * p['active_fraction']:.2f}%)",
             f"{human(p['active_no_embedding'])} ({100 * p['active_fraction_no_embedding']:.2f}%)"]
    return bars(out / "params.png", "parameters: total vs activated per token", labels, values, texts, "parameters")


def kv_chart(acc: dict[str, Any], out: Path) -> Path:
    kv = acc["kv_cache"]
    ctx = kv["context_tokens"]
    names = {"mla_latent": "MLA latent (cached)", f"gqa_{kv['gqa_kv_heads']}": f"GQA, {kv['gqa_kv_heads']} KV heads",
             "mha": "MHA"}
    values = [kv["bytes_per_context"][k] for k in names]
    texts = [f"{human_bytes(v)} ({human_bytes(kv['bytes_per_token'][k])}/token)" for k, v in zip(names, values)]
    return bars(out / "kv_cache.png", f"KV cache for one {ctx // 1024}K-token context (bf16)", list(names.values()),
                values, texts, "bytes (log scale)", log=True)


def flops_chart(acc: dict[str, Any], out: Path) -> Path:
    f = acc["flops"]
    labels = ["this model (activated)", "dense, same total size"]
    values = [f["per_token"], f["dense_equivalent_per_token"]]
    texts = [f"{human(values[0])} ({100 * f['fraction_of_dense']:.1f}%)", human(values[1])]
    return bars(out / "flops.png", f"training FLOPs per token (sequence {f['seq_len']})", labels, values, texts,
                "FLOPs per token (log scale)", log=True)


def throughput_chart(m: dict[str, Any], out: Path) -> Path:
    labels, values = [f"training (batch {m['training']['batch']}x{m['training']['seq_len']})"], \
        [m["training"]["tokens_per_s"]]
    for d in m["decode"]:
        labels.append(f"decode, batch {d['batch']}")
        values.append(d["decode_tokens_per_s"])
    if "speculative" in m:
        labels.append("decode, batch 1, MTP speculative")
        values.append(m["speculative"]["decode_tokens_per_s"])
    texts = [f"{v:,.0f} tok/s" for v in values]
    return bars(out / "throughput.png", f"measured on this machine ({m['device']}, {m['threads']} threads)", labels,
                values, texts, "tokens / s")


def load_chart(load: dict[str, float], out: Path, name: str = "expert_load_measured.png",
               title: str = "expert load per MoE layer (measured)") -> Path:
    labels = list(load)
    values = [load[k] for k in labels]
    path = bars(out / name, title, labels, values, [f"{v:.2f}" for v in values], "max / mean tokens per expert "
                "(1.0 = balanced)", colors=["C0"] * len(labels))
    return path


def inference_compute_chart(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """nanoseek.evaluate.scaling's result. Left: pass@k and maj@k against k (log scale). Right: greedy accuracy
    against the thinking budget, with its 95% interval."""
    from matplotlib.figure import Figure
    s, b = result["samples"], result["budget"]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(s["k"], s["pass@k"], "o-", label="pass@k (any of k right)")
    ax1.plot(s["k"], s["maj@k"], "s-", label="maj@k (majority vote)")
    if s.get("greedy") is not None:
        ax1.axhline(s["greedy"], color="gray", ls="--", label="greedy")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(s["k"], [str(k) for k in s["k"]])
    ax1.set_xlabel(f"samples per problem (temperature {s['temperature']})")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("more samples")
    budgets = b["max_thinking_tokens"]
    finite = [t for t in budgets if t is not None]
    top = (max(finite) * 2 if finite else 1) or 1
    xs = [top if t is None else t for t in budgets]
    ax2.plot(xs, b["accuracy"], "o-", color="C2")
    lo = [ci[0] if ci else a for ci, a in zip(b["ci95"], b["accuracy"])]
    hi = [ci[1] if ci else a for ci, a in zip(b["ci95"], b["accuracy"])]
    ax2.fill_between(xs, lo, hi, color="C2", alpha=0.2, label="95% CI")
    ax2.set_xticks(xs, ["none" if t is None else str(t) for t in budgets])
    ax2.set_xlabel("max_thinking_tokens (greedy)")
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("longer thinking")
    fig.suptitle(f"inference-time compute: {result['task']}, {s['examples']} held-out problems")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)
