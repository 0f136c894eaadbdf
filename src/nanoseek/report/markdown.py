"""The report as markdown: one section per quantity, tables first, charts below them."""
from __future__ import annotations

from typing import Any

from .accounting import human, human_bytes


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _img(name: str, images: list[str]) -> list[str]:
    return [f"![{name.removesuffix('.png')}]({name})", ""] if name in images else []


def _params(acc: dict[str, Any], images: list[str]) -> list[str]:
    p = acc["params"]
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    lines = ["## Parameters", ""]
    lines += _table(["", "parameters", "share of total"], [
        ["total (main model)", f"{p['total']:,} ({human(p['total'])})", "100%"],
        ["activated per token, input embedding included", f"{p['active']:,} ({human(p['active'])})",
         pct(p["active_fraction"])],
        ["activated per token, DeepSeek's convention (no input embedding)",
         f"{p['active_no_embedding']:,} ({human(p['active_no_embedding'])})", pct(p["active_fraction_no_embedding"])],
        ["MTP modules (outside the totals)", f"{p['mtp']:,} ({human(p['mtp'])})", "—"],
    ])
    lines.append("")
    if p["routed_experts"]:
        lines += [f"Each MoE layer has {p['routed_experts']} routed experts, {p['experts_per_token']} chosen per "
                  f"token, plus {p['shared_experts']} shared expert(s); the input embedding "
                  f"({human(p['embedding'])}) is a table lookup, which is why DeepSeek leaves it out of the "
                  f"activated count.", ""]
    pub = acc.get("published")
    if pub:
        total_b, active_b = f"{pub['total_params'] / 1e9:g}B", f"{pub['active_params'] / 1e9:g}B"
        lines += [f"**Published figures ({pub['source']}):** {total_b} total, {active_b} activated, "
                  f"{100 * pub['active_fraction']:.1f}%. From the config: "
                  f"{human(p['total'])} total; DeepSeek's {active_b} is "
                  f"{human(p['active_no_embedding'])} (the output head counted, the input embedding not), "
                  f"{pct(p['active_fraction_no_embedding'])} of the total, which rounds to the published "
                  f"{100 * pub['active_fraction']:.1f}%; counting the embedding too it is {human(p['active'])} "
                  f"({pct(p['active_fraction'])}).", ""]
    return lines + _img("params.png", images)


def _kv(acc: dict[str, Any], images: list[str]) -> list[str]:
    kv = acc["kv_cache"]
    g = kv["gqa_kv_heads"]
    names = {"mla_latent": "MLA latent c_kv + RoPE key (what nanoseek caches)",
             f"gqa_{g}": f"GQA, {g} KV heads of the same head dims", "mha": "MHA of the same width"}
    mla = kv["bytes_per_token"]["mla_latent"]
    rows = [[label, f"{kv['elements_per_token_per_layer'][k]:,}", f"{kv['bytes_per_token'][k]:,} B "
             f"({human_bytes(kv['bytes_per_token'][k])})", human_bytes(kv["bytes_per_context"][k]),
             f"{kv['bytes_per_token'][k] / mla:.1f}x"] for k, label in names.items()]
    lines = ["## KV cache", "", f"All decoder layers, bf16 ({kv['dtype_bytes']} bytes per element); one context of "
             f"{kv['context_tokens']:,} tokens.", ""]
    lines += _table(["cache", "elements / token / layer", "bytes / token", f"per {kv['context_tokens'] // 1024}K "
                     "context", "vs MLA"], rows)
    if kv["gqa_capped"]:
        lines += ["", f"(The model has only {g} attention heads, so GQA with 8 KV heads is capped at {g}: it equals "
                  "MHA here.)"]
    return lines + [""] + _img("kv_cache.png", images)


def _flops(acc: dict[str, Any], images: list[str]) -> list[str]:
    f = acc["flops"]
    lines = ["## Training FLOPs per token", "",
             f"6 FLOPs per activated matrix parameter (forward 2, backward 4) plus causal attention at sequence "
             f"length {f['seq_len']:,} ({human(f['attention_per_token'])} of it).", ""]
    lines += _table(["", "FLOPs / token", "share"], [
        ["this model", f"{f['per_token']:.4g} ({human(f['per_token'])})", f"{100 * f['fraction_of_dense']:.1f}%"],
        ["dense model of the same total size", f"{f['dense_equivalent_per_token']:.4g} "
         f"({human(f['dense_equivalent_per_token'])})", "100%"],
    ])
    return lines + [""] + _img("flops.png", images)


def _measured(m: dict[str, Any], images: list[str]) -> list[str]:
    lines = ["## Measured on this machine", ""]
    if "skipped" in m:
        return lines + [m["skipped"], ""]
    tr = m["training"]
    rows = [["training tokens/s", f"{tr['tokens_per_s']:,.0f}", f"fp32, batch {tr['batch']} x {tr['seq_len']}, "
             f"median of {tr['steps']} steps ({tr['step_s'] * 1e3:.0f} ms/step)"],
            ["training MFU", f"{100 * tr['mfu']:.1f}%", f"{tr['flops_per_token']:.3g} FLOPs/token against a "
             f"measured matmul peak of {tr['peak_flops'] / 1e9:,.1f} GFLOP/s"]]
    for d in m["decode"]:
        rows.append([f"decode tokens/s, batch {d['batch']}", f"{d['decode_tokens_per_s']:,.1f}",
                     f"greedy, {d['prompt_len']}-token prompts, {d['new_tokens']} new tokens, time to first token "
                     f"{d['time_to_first_token_s'] * 1e3:.0f} ms"])
    s = m.get("speculative")
    if s:
        rate = s["acceptance_rate"]
        note = "" if m["trained_weights"] else " (untrained weights: the MTP head has learned nothing, so this " \
                                               "acceptance means nothing)"
        rows.append(["speculative decode tokens/s, batch 1", f"{s['decode_tokens_per_s']:,.1f}",
                     f"one MTP draft per step, {s['tokens_per_step']:.2f} tokens per step"])
        rows.append(["MTP draft acceptance", "—" if rate is None else f"{100 * rate:.1f}%",
                     f"{s['accepted_tokens']} of {s['draft_tokens']} drafts{note}"])
    lines += [f"Device {m['device']}, {m['threads']} threads; "
              f"{'the trained weights' if m['trained_weights'] else 'random weights (a preset)'}; a few steps each, "
              "so expect noise on a shared machine.", ""]
    lines += _table(["measurement", "value", "how"], rows)
    return lines + [""] + _img("throughput.png", images)


def _money(x: float) -> str:
    return f"${x / 1e6:,.3f}M" if x >= 1e5 else f"${x:,.2f}" if x >= 0.01 else f"${x:.2e}"


def _hours(h: float) -> str:
    return f"{h / 1e6:,.3f}M" if h >= 1e5 else f"{h:,.1f}" if h >= 1 else f"{h:.3g}"


def _run_cost_row(label: str, r: dict[str, Any]) -> list[str]:
    mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"
    return [label, r["precision"], f"{r['tokens']:,}", f"{r['tokens_per_s']:,.0f}", mfu, _hours(r["device_hours"]),
            _money(r["price_usd"])]


def _cost(c: dict[str, Any]) -> list[str]:
    lines = ["## Training cost", "",
             "FLOPs = (6 × activated matrix parameters + causal attention, + the MTP module) × tokens; device-hours "
             "= FLOPs / (MFU × peak × 3600); price = device-hours × the rate.", ""]
    p = c.get("paper")
    if p:
        d = p["device"]
        lines += ["### DeepSeek-V3's published arithmetic", "",
                  f"{p['source']}: {p['tokens'] / 1e12:g}T tokens; {p['pretrain_gpu_hours'] / 1e6:.3f}M H800 "
                  f"GPU-hours of pre-training + {p['context_extension_gpu_hours'] / 1e6:.3f}M context extension + "
                  f"{p['post_training_gpu_hours'] / 1e6:.3f}M post-training = {p['total_gpu_hours'] / 1e6:.3f}M; "
                  f"× ${p['price_per_gpu_hour']:g}/GPU-hour = {_money(p['price_check_usd'])} "
                  f"(published: {_money(p['cost_usd'])}).", ""]
        lines += _table(["", "value"], [
            ["training FLOPs per token (seq 4,096, MTP included)", f"{p['flops_per_token']:.4g} "
             f"({human(p['flops_per_token'])}; {human(p['flops_per_token_no_mtp'])} without MTP)"],
            ["pre-training FLOPs (× 14.8T tokens)", f"{p['pretrain_flops']:.3e}"],
            ["achieved per GPU (÷ 2.664M GPU-hours)", f"{p['achieved_flops_per_gpu'] / 1e12:.0f} TFLOP/s"],
            ["implied MFU vs the FP8 peak", f"{100 * p['implied_mfu_fp8_peak']:.1f}% of "
             f"{d['fp8_flops'] / 1e12:g} TFLOP/s"],
            ["implied MFU vs the BF16 peak", f"{100 * p['implied_mfu_bf16_peak']:.1f}% of "
             f"{d['bf16_flops'] / 1e12:g} TFLOP/s"],
        ])
        lines.append("")
    s = c.get("stated")
    if s:
        lines += ["### At a stated MFU", "",
                  f"{s['tokens']:.3g} tokens at sequence length {s['seq_len']:,}: {s['flops']:.3e} FLOPs "
                  f"({human(s['flops_per_token'])}/token), on {s['device']} at MFU {100 * s['bf16']['mfu']:.1f}% "
                  f"and ${s['price_per_hour']:g}/device-hour. FP8 doubles the peak, so at the same MFU the FP8 row "
                  "is the most FP8 can save (V3 keeps the embedding, head, attention core and norms out of FP8).", ""]
        lines += _table(["precision of the GEMMs", "peak", "device-hours", "price"], [
            [k.upper(), f"{s[k]['peak_flops'] / 1e12:g} TFLOP/s", _hours(s[k]["device_hours"]),
             _money(s[k]["price_usd"])] for k in ("bf16", "fp8")])
        lines.append("")
    rows = []
    if c.get("run"):
        rows.append(_run_cost_row("this run", c["run"]))
    if c.get("compare"):
        rows.append(_run_cost_row(f"compared run `{c['compare']['run']}`", c["compare"]))
    if rows:
        lines += ["### This run, from its measured throughput", "",
                  f"Tokens trained ÷ the median logged tokens/s, as device-hours of the machine it ran on, at "
                  f"${c['price_per_hour']:g}/hour.", ""]
        lines += _table(["run", "precision", "tokens", "tokens/s", "MFU (logged)", "device-hours", "price"], rows)
        if "speed_ratio" in c:
            lines += ["", f"This run trained at {c['speed_ratio']:.2f}× the compared run's tokens/s. (On a CPU the "
                      "FP8 GEMMs are emulated — quantize, dequantize, multiply in fp32 — so FP8 is slower there; the "
                      "saving needs FP8 tensor cores.)"]
        lines.append("")
    return lines


def _load(load: dict[str, float], title: str, note: str) -> list[str]:
    rows = [[k, f"{v:.3f}"] for k, v in load.items()]
    return [f"### {title}", "", note, ""] + _table(["MoE layer", "max / mean tokens per expert"], rows) + [""]


def _run(run: dict[str, Any], images: list[str]) -> list[str]:
    lines = ["## Training run", "", f"{run['rows']} logged steps, last step {run['last_step']}.", ""]
    rows = []
    for key, label in (("loss", "loss"), ("ce", "cross-entropy"), ("mtp1", "MTP loss (depth 1)"),
                       ("val_loss", "validation loss"), ("reward", "reward"), ("accuracy", "accuracy (train)"),
                       ("eval_accuracy", "accuracy (held-out)"), ("kl", "KL"), ("completion_length",
                                                                                 "completion length")):
        if key in run:
            v = run[key]
            rows.append([label, f"{v['first']:.4g}", f"{v['last']:.4g}", f"{v['min']:.4g} .. {v['max']:.4g}"])
    if rows:
        lines += _table(["metric", "first", "last", "range"], rows) + [""]
    if "tokens_per_s" in run:
        lines += [f"Throughput logged during training: median {run['tokens_per_s']['median']:,.0f} tokens/s"
                  + (f", MFU {100 * run['mfu']['median']:.1f}%" if "mfu" in run else "") + ".", ""]
    for name in ("loss.png", "reward.png", "accuracy.png", "kl.png", "lr.png", "completion_length.png",
                 "grpo_stats.png", "expert_load.png"):
        lines += _img(name, images)
    return lines


def render(rep: dict[str, Any], images: list[str]) -> str:
    lines = [f"# nanoseek efficiency report: {rep['name']}", "",
             f"{rep['kind']} `{rep['target']}`, {rep['date']}; {rep['machine']['platform']}, "
             f"{rep['machine']['cpus']} CPUs, torch {rep['machine']['torch']}.", ""]
    acc = rep.get("accounting")
    if acc:
        lines += _params(acc, images) + _kv(acc, images) + _flops(acc, images)
    else:
        lines += ["No model config found (no `model/` in the run directory): only the run's curves.", ""]
    if "measured" in rep:
        lines += _measured(rep["measured"], images)
    loads = []
    m = rep.get("measured", {})
    if m.get("training", {}).get("expert_load_max_over_mean"):
        loads += _load(m["training"]["expert_load_max_over_mean"], "measured during the training steps above",
                       "1.0 is perfect balance; the MTP module's layer is listed too.") + \
            _img("expert_load_measured.png", images)
    run = rep.get("run")
    if run and run.get("expert_load_last"):
        first_last = run.get("load_max_over_mean")
        note = "The last logged step of the run" + (
            f"; worst layer {first_last['first']:.2f} at the first logged step, {first_last['last']:.2f} at the last."
            if first_last else ".")
        loads += _load(run["expert_load_last"], "from the run's metrics", note)
    if loads:
        lines += ["## Expert-load balance", ""] + loads
    if rep.get("cost"):
        lines += _cost(rep["cost"])
    if run:
        lines += _run(run, images)
    return "\n".join(lines).rstrip() + "\n"
