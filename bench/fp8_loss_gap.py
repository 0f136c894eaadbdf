"""FP8 vs BF16 training: the relative validation-loss gap (DeepSeek-V3 reports < 0.25%), and the ablation.

For each seed, three runs with the same data and initialisation, all under --dtype bfloat16:
    bf16         every matmul in bf16 (autocast)                          the baseline
    fp8-tile     --fp8 true --fp8_scaling tile    DeepSeek-V3's 1x128 / 128x128 scaling
    fp8-tensor   --fp8 true --fp8_scaling tensor  the naive per-tensor recipe
    fp32         --dtype float32 (no autocast)                              control: bf16's own gap to fp32
Relative gap = (val_loss_fp8 − val_loss_bf16) / val_loss_bf16 at the last step, per seed, then mean and spread.
Then the outliers: the max-abs per channel of the activations entering each FP8 layer of the trained bf16 model,
and each layer's quantization error (relative RMS of Q(X) − X) under the two recipes.

    python bench/fp8_loss_gap.py                       # trains what is missing (resumable), writes docs/fp8_loss_gap.*
    python bench/fp8_loss_gap.py --seeds 0 1 2 --steps 400 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import machine_info, markdown_table, write_section  # noqa: E402

RECIPES = {"bf16": [], "fp8-tile": ["--fp8", "true", "--fp8_scaling", "tile"],
           "fp8-tensor": ["--fp8", "true", "--fp8_scaling", "tensor"],
           "fp32": ["--dtype", "float32"]}  # control: how far another precision change moves the loss here
COMPARED = ("fp8-tile", "fp8-tensor", "fp32")


def train_args(a: argparse.Namespace, recipe: str, seed: int, run_dir: Path) -> list[str]:
    return ["--model", a.model, "--dtype", "bfloat16", "--seed", str(seed), "--max_steps", str(a.steps),
            "--seq_len", str(a.seq_len), "--batch_size", str(a.batch_size), "--eval_every", str(a.eval_every),
            "--eval_batches", str(a.eval_batches), "--ckpt_every", str(a.eval_every), "--log_every",
            str(a.eval_every), "--threads", "1", "--progress", "false", "--run_dir", str(run_dir),
            "--resume", "true", *RECIPES[recipe]]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def finished(run_dir: Path, steps: int) -> bool:
    return any(r.get("step") == steps and "val_loss" in r for r in read_metrics(run_dir))


def train_all(a: argparse.Namespace, work: Path) -> None:
    """Every missing (recipe, seed) run, `jobs` at a time, each on one thread, niced."""
    todo = [(r, s) for s in a.seeds for r in RECIPES if not finished(work / f"{r}-s{s}", a.steps)]
    running: list[subprocess.Popen] = []
    while todo or running:
        while todo and len(running) < a.jobs:
            recipe, seed = todo.pop(0)
            run_dir = work / f"{recipe}-s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = ["nice", "-n", "19", sys.executable, "-m", "nanoseek.cli", "train",
                   *train_args(a, recipe, seed, run_dir)]
            print("start:", " ".join(cmd[3:]), flush=True)
            running.append(subprocess.Popen(cmd, stdout=open(run_dir / "stdout.log", "a"),
                                            stderr=subprocess.STDOUT))
        running[0].wait()
        done = running.pop(0)
        if done.returncode:
            raise SystemExit(f"a run failed (exit {done.returncode}): see its stdout.log")


def _stats(t: torch.Tensor) -> dict[str, float]:
    """t (tokens, channels): per-channel max-abs (largest over median), and for each recipe the relative RMS error
    of Q(t) per channel (averaged over channels) and the share of non-zero values flushed to zero (they fall below e4m3's smallest
    subnormal, 2^-9 · s, when one scale must also cover the largest value of the whole tensor)."""
    from nanoseek.train.fp8_train import TILE, fake_quantize
    t = t.float()
    amax = t.abs().amax(0)
    out = {"channels": t.shape[1], "amax_max": float(amax.max()), "amax_median": float(amax.median()),
           "outlier_ratio": float(amax.max() / amax.median().clamp_min(1e-30))}
    nonzero = (t != 0).float().sum().clamp_min(1)
    for s in ("tile", "tensor"):
        q = fake_quantize(t, (1, TILE), s)
        # each channel's RMS error relative to its own RMS, averaged over channels: a small channel counts as much
        # as a large one (a tensor-wide RMS would be the outlier channel's alone)
        rel = (q - t).pow(2).mean(0).sqrt() / t.pow(2).mean(0).sqrt().clamp_min(1e-30)
        out[f"rel_rms_err_{s}"] = float(rel[t.abs().amax(0) > 0].mean())
        out[f"flushed_{s}"] = float(((q == 0) & (t != 0)).float().sum() / nonzero)
    return out


def outliers(run_dir: Path, seq_len: int) -> dict[str, Any]:
    """Per FP8 layer of the trained model, on one validation batch: the statistics of its input activations and of
    the gradient arriving at its output (what Dgrad and Wgrad quantize), and the same for the worst input with one
    channel scaled by 100, the 'massive activation' of large LLMs that per-tensor scaling cannot absorb."""
    from nanoseek.checkpoint import load_pretrained
    from nanoseek.train.config import TrainConfig
    from nanoseek.train.data import pretraining_data
    from nanoseek.train.distributed import DistEnv
    from nanoseek.train.fp8_train import _fp8_modules
    cfg = TrainConfig(**json.loads((run_dir / "train_config.json").read_text()))
    x, y = next(pretraining_data(cfg, DistEnv(), cfg.batch_size).val_batches())
    model = load_pretrained(run_dir / "model")
    model.eval()
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    hooks = []
    blocks = [*model.layers, *(m.block for m in model.mtp)]
    for i, block in enumerate(blocks[:len(model.layers)]):  # the main model's blocks (the MTP block is off here)
        for name, mod in _fp8_modules(torch.nn.ModuleDict({"layers": torch.nn.ModuleList([block])})):
            if isinstance(mod, torch.nn.Linear):
                key = f"block{i}.{name}"
                hooks.append(mod.register_forward_hook(
                    lambda m, args, out, key=key: inputs.__setitem__(key, args[0].detach().flatten(0, -2))))
                hooks.append(mod.register_full_backward_hook(
                    lambda m, gin, gout, key=key: grads.__setitem__(key, gout[0].detach().flatten(0, -2))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    for h in hooks:
        h.remove()
    layers = {k: {**_stats(t), "grad": _stats(grads[k])} for k, t in inputs.items() if k in grads}
    worst = max(layers, key=lambda k: layers[k]["outlier_ratio"])
    t = inputs[worst].float().clone()
    t[:, int(t.abs().amax(0).argmax())] *= 100
    return {"layers": layers, "worst_layer": worst, "worst_channel_amax": inputs[worst].float().abs().amax(0).tolist(),
            "massive_outlier": {"layer": worst, "scale": 100, **_stats(t)}}


def summarise(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs = {f"{r}-s{s}": read_metrics(work / f"{r}-s{s}") for s in a.seeds for r in RECIPES}
    curves = {k: [(m["step"], m["val_loss"]) for m in v if "val_loss" in m] for k, v in runs.items()}
    final = {k: c[-1][1] for k, c in curves.items() if c}
    gaps: dict[str, list[float]] = {}
    for r in COMPARED:
        gaps[r] = [(final[f"{r}-s{s}"] - final[f"bf16-s{s}"]) / final[f"bf16-s{s}"] for s in a.seeds]
    seed_noise = statistics.stdev(final[f"bf16-s{s}"] for s in a.seeds) / statistics.mean(
        final[f"bf16-s{s}"] for s in a.seeds) if len(a.seeds) > 1 else None
    return {
        "config": {k: getattr(a, k) for k in ("model", "steps", "seq_len", "batch_size", "eval_every",
                                              "eval_batches", "seeds")},
        "command": "python bench/fp8_loss_gap.py " + " ".join(x for x in sys.argv[1:] if x != "--no-train"),
        "machine": machine_info(), "final_val_loss": final, "curves": curves,
        "relative_gap": {r: {"per_seed": g, "mean": statistics.mean(g),
                             "stdev": statistics.stdev(g) if len(g) > 1 else 0.0} for r, g in gaps.items()},
        "bf16_seed_to_seed_rel_stdev": seed_noise, "target": 0.0025,
    }


def plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(fig)
    ax, axg, axo = fig.subplots(1, 3)
    colors = {"bf16": "tab:blue", "fp8-tile": "tab:green", "fp8-tensor": "tab:red", "fp32": "tab:gray"}
    for k, c in res["curves"].items():
        recipe = k.rsplit("-s", 1)[0]
        ax.plot([s for s, _ in c], [v for _, v in c], color=colors[recipe], alpha=0.7,
                label=recipe if k.endswith(f"-s{res['config']['seeds'][0]}") else None)
    ax.set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss, all seeds")
    ax.legend()
    for r in COMPARED:
        steps = [s for s, _ in res["curves"][f"bf16-s{res['config']['seeds'][0]}"]]
        for seed in res["config"]["seeds"]:
            b, f = dict(res["curves"][f"bf16-s{seed}"]), dict(res["curves"][f"{r}-s{seed}"])
            axg.plot(steps, [100 * (f[s] - b[s]) / b[s] for s in steps if s in f], color=colors[r], alpha=0.7,
                     label=r if seed == res["config"]["seeds"][0] else None)
    axg.axhline(0.25, color="k", ls="--", lw=1, label="V3's 0.25%")
    axg.axhline(-0.25, color="k", ls="--", lw=1)
    axg.set(xlabel="step", ylabel="(recipe − bf16) / bf16, %", title="relative validation-loss gap per seed")
    axg.legend()
    o = res.get("outliers")
    if o:
        amax = o["worst_channel_amax"]
        axo.bar(range(len(amax)), amax, width=1.0, color="tab:gray")
        axo.set(xlabel="channel", ylabel="max |x| over a validation batch", yscale="log",
                title=f"input of {o['worst_layer']} (bf16 run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res: dict[str, Any]) -> str:
    """The BENCHMARKS.md block: what ran, the per-seed final losses and gaps, and the outlier table."""
    c, m = res["config"], res["machine"]
    seeds = c["seeds"]
    lines = [f"`{res['command']}` — {m['date']}; {m['cpu']}, {m['cores']} cores ({m['matrix_isa']}), torch "
             f"{m['torch']}; each run on 1 thread, niced, 2 at a time on a machine shared with other jobs.",
             "",
             f"`{c['model']}` preset, {c['steps']} steps × {c['batch_size']} sequences × {c['seq_len']} tokens "
             f"({c['steps'] * c['batch_size'] * c['seq_len']:,} training tokens, the built-in corpus), WSD schedule; "
             f"validation loss on the same {c['eval_batches']} × {c['batch_size']} × {c['seq_len']} held-out tokens "
             f"every {c['eval_every']} steps. bf16 and both FP8 recipes run under `--dtype bfloat16`, the control "
             "under `--dtype float32`; for a seed all share the initialisation and the batches.", ""]
    rows = []
    for s in seeds:
        b = res["final_val_loss"][f"bf16-s{s}"]
        row = [str(s), f"{b:.4f}"]
        for r in COMPARED:
            f = res["final_val_loss"][f"{r}-s{s}"]
            row += [f"{f:.4f}", f"{100 * (f - b) / b:+.3f}%"]
        rows.append(row)
    g = res["relative_gap"]
    rows.append(["mean ± sd", ""] + [x for r in COMPARED for x in
                                     ("", f"{100 * g[r]['mean']:+.3f}% ± {100 * g[r]['stdev']:.3f}%")])
    lines.append(markdown_table(["seed", "bf16 val loss", "fp8 tile (V3)", "gap", "fp8 per-tensor", "gap",
                                 "fp32 (control)", "gap"], rows))
    noise = res.get("bf16_seed_to_seed_rel_stdev")
    if noise is not None:
        lines += ["", f"Seed-to-seed spread of the bf16 runs' final loss (relative sd): {100 * noise:.3f}% (a different "
                  "seed changes the initialisation and the batches)."]
    o = res["outliers"]
    lines += ["", f"What the quantizers see in the trained bf16 run (seed {seeds[0]}), one validation batch: the "
              "activations entering each FP8 linear and the gradient arriving at its output (Dgrad/Wgrad's dY). "
              "Per-channel max-abs (largest over median channel), each channel's RMS error relative to its own RMS "
              "(averaged over channels) with 1×128 tiles vs one scale per tensor, and the share of non-zero values per-tensor scaling flushes to zero. The "
              "last row scales the largest channel of the worst input by 100, as the 'massive activations' of "
              "large LLMs do.", ""]
    top = sorted(o["layers"].items(), key=lambda kv: -kv[1]["outlier_ratio"])

    def row(name: str, v: dict[str, Any]) -> list[str]:
        return [name, str(v["channels"]), f"{v['amax_max']:.3g} / {v['amax_median']:.3g} = {v['outlier_ratio']:.1f}",
                f"{100 * v['rel_rms_err_tile']:.2f}%", f"{100 * v['rel_rms_err_tensor']:.2f}%",
                f"{100 * v['flushed_tile']:.3f}%", f"{100 * v['flushed_tensor']:.3f}%"]
    rows = [row(f"{k} input", v) for k, v in top[:6]]
    gtop = sorted(o["layers"].items(), key=lambda kv: -kv[1]["grad"]["flushed_tensor"])
    rows += [row(f"{k} output grad", v["grad"]) for k, v in gtop[:6]]
    mo = o["massive_outlier"]
    rows.append(row(f"{mo['layer']} input, one channel × {mo['scale']}", mo))
    lines.append(markdown_table(["tensor", "channels", "channel max-abs: largest / median", "rel. RMS err, tile",
                                 "per tensor", "flushed to 0, tile", "per tensor"], rows))
    lines += ["", "![FP8 loss gap](docs/fp8_loss_gap.png)"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--eval_batches", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (each on one thread)")
    p.add_argument("--work", default="runs/fp8_loss_gap", help="where the runs live (resumable)")
    p.add_argument("--out", default="docs/fp8_loss_gap", help="writes OUT.json and OUT.png")
    p.add_argument("--no-train", action="store_true", help="only summarise the runs already there")
    p.add_argument("--write", default=None, metavar="MD", help="write the results into this markdown file "
                   "(BENCHMARKS.md), between <!-- fp8_loss_gap:begin/end --> markers")
    a = p.parse_args()
    work = Path(a.work) / f"{a.model}-{a.steps}x{a.batch_size}x{a.seq_len}"
    if not a.no_train:
        train_all(a, work)
    res = summarise(a, work)
    res["outliers"] = outliers(work / f"bf16-s{a.seeds[0]}", a.seq_len)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    plot(res, Path(a.out + ".png"))
    for r, g in res["relative_gap"].items():
        print(f"{r}: relative val-loss gap {100 * g['mean']:+.3f}% ± {100 * g['stdev']:.3f}% "
              f"(per seed {', '.join(f'{100 * x:+.3f}%' for x in g['per_seed'])}); target < 0.25%")
    print(f"wrote {a.out}.json and {a.out}.png")
    if a.write:
        write_section(a.write, "fp8_loss_gap", "FP8 training: loss gap against bf16 (`python bench/fp8_loss_gap.py "
                      "--write BENCHMARKS.md`)", markdown(res))
        print(f"wrote the fp8_loss_gap section of {a.write}")


if __name__ == "__main__":
    main()
