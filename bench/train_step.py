"""Training-step throughput: nanoseek.Transformer against transformers' DeepseekV3ForCausalLM.

One training step = forward, loss, backward, AdamW(fused=True) step, zero_grad. Both models get the `small` preset
with MTP off (num_nextn_predict_layers = num_mtp_layers = 0), the same weights (nanoseek's init copied into
transformers' names; the fp32 logits are checked to agree) and the same batch (default 8 x 256 tokens: the batch
the `small` pretraining demo trains on, big enough that the optimizer step is a small part of the step). One
phase per precision; inside a phase the contenders run interleaved (one step of each per round, order rotated),
warm-up rounds first, and we report the median. At the end the two best modes, and the two best fp32 modes, run again
head to head, each pair alone (contenders of a phase disturb each other: these pairs give the headline ratios).

Precisions: fp32; bf16 = bf16 weights, gradients and AdamW state (no fp32 master copy: a throughput measure, not a
training recipe); amp = fp32 weights with torch.autocast("cpu", bfloat16) around the forward and the loss.
Losses: `logits` = F.cross_entropy(logits.float()) on the model's full (tokens, vocab) logits, what both sides
do by default; `fused` = nanoseek.model.layers.linear_cross_entropy (same value and gradients, chunked).
transformers' experts implementations: grouped_mm (torch._grouped_mm, transformers 5's default where it can
dispatch: checked and printed) and, in the fp32 phase, eager (the loop over experts). batched_mm is left out: it
gathers one weight matrix per (token, expert) pair, gigabytes at this batch size.

MFU = tokens/s · FLOPs/token / peak; FLOPs/token from nanoseek.info.count (6 · activated matmul parameters +
causal attention); peak = median over the rounds of a 2048³ matmul in the mode's compute dtype (fp32, or bf16 on
the CPU's matrix units), timed in the same rounds as the steps.

    python bench/train_step.py --write BENCHMARKS.md           # 2 threads, wall clock (a quiet machine)
    python bench/train_step.py --threads 1 --clock cpu         # a busy shared machine: CPU time at one thread
    python bench/train_step.py --quick                          # smoke run (batch 2 x 128)
    python bench/train_step.py --compile --compile-hf           # add torch.compile'd contenders
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine_info, markdown_table, matmul_seconds, median, write_section  # noqa: E402

import nanoseek  # noqa: E402
from nanoseek.info import count  # noqa: E402
from nanoseek.model.layers import linear_cross_entropy  # noqa: E402

PEAK_N = 2048
PRECISIONS = ("fp32", "bf16", "amp")


# ---------------------------------------------------------------------------------------------- transformers side
def hf_config(cfg: nanoseek.ModelConfig):
    from transformers import DeepseekV3Config

    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.yarn is not None:
        rope = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, **cfg.yarn}
    names = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts",
             "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
             "qk_nope_head_dim", "n_group", "topk_group", "num_experts_per_tok", "first_k_dense_replace",
             "norm_topk_prob", "rms_norm_eps", "max_position_embeddings", "initializer_range",
             "tie_word_embeddings", "attention_bias", "bos_token_id", "eos_token_id")
    return DeepseekV3Config(**{n: getattr(cfg, n) for n in names}, rope_parameters=rope, rope_interleave=True,
                            num_mtp_layers=0, use_cache=False)


# nanoseek module path -> transformers module path, inside one decoder layer
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn.wq": "self_attn.q_proj", "attn.wq_a": "self_attn.q_a_proj", "attn.q_norm": "self_attn.q_a_layernorm",
    "attn.wq_b": "self_attn.q_b_proj", "attn.wkv_a": "self_attn.kv_a_proj_with_mqa",
    "attn.kv_norm": "self_attn.kv_a_layernorm", "attn.wkv_b": "self_attn.kv_b_proj", "attn.wo": "self_attn.o_proj",
    "ffn.w1": "mlp.gate_proj", "ffn.w2": "mlp.down_proj", "ffn.w3": "mlp.up_proj",
    "ffn.gate": "mlp.gate", "ffn.experts": "mlp.experts",
    "ffn.shared_experts.w1": "mlp.shared_experts.gate_proj", "ffn.shared_experts.w2": "mlp.shared_experts.down_proj",
    "ffn.shared_experts.w3": "mlp.shared_experts.up_proj",
}
_LEAF_NAMES = {"gate.bias": "gate.e_score_correction_bias", "experts.w13": "experts.gate_up_proj",
               "experts.w2": "experts.down_proj"}


def hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanoseek state dict (MTP off) in transformers' DeepseekV3ForCausalLM names."""
    out = {}
    for key, t in sd.items():
        top = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
               "head.weight": "lm_head.weight"}
        if key in top:
            out[top[key]] = t
            continue
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(\w+)", key)
        if m is None:
            raise KeyError(f"no transformers name for nanoseek parameter {key!r}")
        layer, module, leaf = m.groups()
        name = f"{_LAYER_NAMES[module]}.{leaf}"
        for a, b in _LEAF_NAMES.items():
            name = name.replace(f"mlp.{a}", f"mlp.{b}")
        out[f"model.layers.{layer}.{name}"] = t
    return out


def build_hf(cfg: nanoseek.ModelConfig, sd: dict[str, torch.Tensor], experts: str | None):
    from transformers import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM(hf_config(cfg))
    model.load_state_dict(hf_state_dict(sd), strict=True)
    if experts is not None:
        model.set_experts_implementation(experts)
    return model


# ---------------------------------------------------------------------------------------------- contenders
@dataclasses.dataclass(frozen=True)
class Spec:
    side: str  # "nanoseek" or "transformers"
    experts: str  # transformers' experts implementation; "" for nanoseek (it picks its own)
    precision: str  # fp32 | bf16 | amp
    compiled: bool = False
    loss: str = "logits"  # logits: head -> (tokens, vocab) logits -> F.cross_entropy; fused: linear_cross_entropy

    @property
    def compute_dtype(self) -> str:
        return "fp32" if self.precision == "fp32" else "bf16"


def make_step(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              ids: torch.Tensor, labels: torch.Tensor, amp: bool) -> Callable[[], float]:
    # fused=True: one kernel per parameter, ~4x faster than foreach on CPU; the same optimizer on both sides
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    model.train()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # here rather than first: gradients do not sit in memory between steps
        return loss.item()

    return step


def nanoseek_experts_impl(precision: str) -> str:
    """Which expert kernel nanoseek's MoE uses for this compute dtype (its own dispatch rule)."""
    from nanoseek.model import moe

    probe = torch.empty(1, 512, dtype=torch.float32 if precision == "fp32" else torch.bfloat16)
    use = getattr(moe, "_use_grouped_mm", None)
    return "grouped_mm" if use is not None and use(probe) else "loop"


def label(spec: Spec) -> str:
    experts = nanoseek_experts_impl(spec.precision) if spec.side == "nanoseek" else spec.experts
    return experts + ("+compile" if spec.compiled else "")


def build_step(spec: Spec, cfg: nanoseek.ModelConfig, sd: dict[str, torch.Tensor], ids: torch.Tensor,
               labels: torch.Tensor) -> Callable[[], float]:
    dtype = torch.bfloat16 if spec.precision == "bf16" else torch.float32
    if spec.side == "nanoseek":
        m = nanoseek.Transformer(cfg)
        m.load_state_dict(sd)
        m.to(dtype)
        fwd = torch.compile(m) if spec.compiled else m
        hidden = torch.compile(m.forward_hidden) if spec.compiled else m.forward_hidden
        if spec.loss == "fused":
            def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return linear_cross_entropy(hidden(x), m.head.weight, y)
        else:
            def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(fwd(x).flatten(0, 1).float(), y.flatten())
    else:
        m = build_hf(cfg, sd, spec.experts).to(dtype)
        run = torch.compile(m) if spec.compiled else m

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = run(input_ids=x, use_cache=False).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    return make_step(m, loss_fn, ids, labels, spec.precision == "amp")


def specs(args: argparse.Namespace) -> list[Spec]:
    want = set(args.only.split(",")) if args.only else None
    out = []
    for precision in PRECISIONS:
        cands = [Spec("nanoseek", "", precision, False, loss) for loss in ("logits", "fused")]
        if args.compile:
            cands.append(Spec("nanoseek", "", precision, True, "fused"))
        experts = args.hf_experts.split(",") if args.hf_experts else ["grouped_mm"] + ["eager"] * (precision == "fp32")
        cands += [Spec("transformers", e, precision) for e in experts]
        if args.compile_hf:
            cands.append(Spec("transformers", "grouped_mm", precision, True))
        out += [c for c in cands if want is None or want & {c.side, c.experts, c.precision,
                                                              f"{c.side}:{c.precision}"}]
    return out


def run_phase(group: list[Spec], cfg: nanoseek.ModelConfig, sd: dict[str, torch.Tensor], ids: torch.Tensor,
              labels: torch.Tensor, args: argparse.Namespace,
              peaks: dict[str, list[float]]) -> dict[Spec, list[float]]:
    """Build the group's models, time them interleaved together with the two matmul peaks, free them."""
    fns: dict = {spec: build_step(spec, cfg, sd, ids, labels) for spec in group}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        fns[name] = lambda name=name, dt=dt: peaks[name].append(
            2 * PEAK_N ** 3 / matmul_seconds(PEAK_N, dt, clock=args.clock))
    times = interleaved(fns, rounds=args.steps, warmup=args.warmup, clock=args.clock)
    return {spec: times[spec] for spec in group}


def parity(cfg: nanoseek.ModelConfig, ids: torch.Tensor) -> float:
    """max |logits_nanoseek − logits_transformers| / max |logits|, fp32, same weights, before any step."""
    torch.manual_seed(0)
    ns = nanoseek.Transformer(cfg).eval()
    hf = build_hf(cfg, ns.state_dict(), "eager").eval()
    with torch.no_grad():
        a = ns(ids)
        b = hf(input_ids=ids, use_cache=False).logits
    return ((a - b).abs().max() / b.abs().max()).item()


def hf_defaults(cfg: nanoseek.ModelConfig) -> tuple[str, str]:
    """transformers' default (experts, attention) implementations for this config on this machine."""
    from transformers import DeepseekV3ForCausalLM

    small = dataclasses.replace(cfg, num_hidden_layers=2, vocab_size=256)
    with torch.device("meta"):
        c = DeepseekV3ForCausalLM(hf_config(small)).config
    return c._experts_implementation, c._attn_implementation


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (one step of every contender each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: time steps by this process's CPU time (for a busy shared machine; use with --threads 1)")
    p.add_argument("--quick", action="store_true", help="batch 2 x seq 128, 1 warm-up + 2 timed rounds")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd nanoseek (fused loss)")
    p.add_argument("--compile-hf", action="store_true", help="also time torch.compile'd transformers (grouped_mm)")
    p.add_argument("--hf-experts", default="", help="transformers experts implementations, comma-separated "
                                                    "(default: grouped_mm, and eager in the fp32 phase)")
    p.add_argument("--only", default="", help="comma list filtering contenders: nanoseek, transformers, "
                                              "fp32, bf16, amp, eager, grouped_mm, or side:precision")
    p.add_argument("--preset", default="small")
    p.add_argument("--write", type=Path, default=None, help="write the report (markdown) to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.steps, args.warmup = 2, 128, 2, 1
    if (args.compile or args.compile_hf) and args.warmup < 3:
        args.warmup = 3  # compilation, then one recompile when the padded expert rows change shape
    torch.set_num_threads(args.threads or torch.get_num_threads())

    cfg = dataclasses.replace(nanoseek.ModelConfig.preset(args.preset), num_nextn_predict_layers=0)
    flops_tok = count(cfg, seq_len=args.seq)["flops_per_token"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, threads {info['threads']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, load {info['load_avg']}", flush=True)

    drift = parity(cfg, ids[:1])
    default_experts, default_attn = hf_defaults(cfg)
    print(f"fp32 logits parity (same weights): max rel diff {drift:.2e}; transformers default experts: "
          f"{default_experts}", flush=True)
    torch.manual_seed(0)
    sd = {k: v.detach().clone() for k, v in nanoseek.Transformer(cfg).state_dict().items()}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    times: dict[Spec, list[float]] = {}
    all_specs = specs(args)
    for precision in PRECISIONS:  # one phase per precision keeps at most ~3 models (and optimizers) in memory
        group = [s for s in all_specs if s.precision == precision]
        if group:
            times.update(run_phase(group, cfg, sd, ids, labels, args, peaks))
            print(f"  {precision}: " + ", ".join(f"{s.side} {label(s)} {s.loss} {median(times[s]):.3f}s"
                                                 for s in group), flush=True)
    tokens = args.batch * args.seq
    tps = {s: tokens / median(t) for s, t in times.items()}

    def best(side: str, precision: str | None = None, loss: str | None = None) -> Spec | None:
        pool = [s for s in times if s.side == side and precision in (None, s.precision) and loss in (None, s.loss)]
        return max(pool, key=tps.get) if pool else None

    # Contenders of a phase disturb each other (caches, threads spinning after the previous step), so the
    # headline ratios come from pairs run alone: each side's best mode, and each side's best fp32 mode.
    pairs = {"best mode vs best mode": (best("nanoseek"), best("transformers")),
             "fp32 vs fp32, each side's best": (best("nanoseek", "fp32"), best("transformers", "fp32"))}
    h2h: dict[str, tuple[Spec, Spec, float, float]] = {}
    if not args.quick:
        for name, (a, b) in pairs.items():
            if a and b:
                t = run_phase([a, b], cfg, sd, ids, labels, args, peaks)
                h2h[name] = (a, b, tokens / median(t[a]), tokens / median(t[b]))
    peak = {k: median(v) for k, v in peaks.items()}

    hf_best = best("transformers")
    rows = []
    for s, t in times.items():
        mfu = tps[s] * flops_tok / peak[s.compute_dtype]
        rows.append([s.side, label(s), s.precision, s.loss, f"{median(t):.3f} ({min(t):.3f}–{max(t):.3f})",
                     f"{tps[s]:,.0f}", f"{100 * mfu:.1f}%", f"{tps[s] / tps[hf_best]:.2f}x" if hf_best else "-"])
    table = markdown_table(["model", "experts", "precision", "loss", "step s, median (min–max)", "tokens/s",
                            "MFU", "vs transformers best"], rows)

    summary = []
    hf_fp32 = best("transformers", "fp32")
    for text, a, b in (("fp32 vs fp32, the same loss (full logits + CE)", best("nanoseek", "fp32", "logits"), hf_fp32),
                       ("fp32 vs fp32, each side's best", best("nanoseek", "fp32"), hf_fp32),
                       ("best mode vs best mode", best("nanoseek"), best("transformers"))):
        if a and b:
            summary.append(f"- {text}: **{tps[a] / tps[b]:.2f}x** (nanoseek {label(a)} {a.precision} {a.loss} "
                           f"{tps[a]:,.0f} tok/s vs transformers {label(b)} {b.precision} {tps[b]:,.0f} tok/s)")
    for name, (a, b, ta, tb) in h2h.items():
        summary.append(f"- head to head, {name} (the two alone, interleaved, {args.steps} rounds): "
                       f"**{ta / tb:.2f}x** (nanoseek {label(a)} {a.precision} {a.loss} {ta:,.0f} tok/s vs "
                       f"transformers {label(b)} {b.precision} {tb:,.0f} tok/s)")
    setup = [
        f"- model: `{args.preset}` preset, MTP off on both sides; FLOPs/token (seq {args.seq}): "
        f"{flops_tok / 1e6:.1f} M (nanoseek.info.count)",
        f"- batch {args.batch} x seq {args.seq} = {tokens} tokens/step; {args.warmup} warm-up + {args.steps} timed "
        f"rounds per precision phase, contenders interleaved within a phase; {args.clock} clock; "
        "AdamW(fused=True) on both sides; loss `logits` = F.cross_entropy(logits.float()) on the model's full "
        "logits, `fused` = nanoseek.model.layers.linear_cross_entropy (same value and gradients, in chunks)",
        f"- matmul peak ({PEAK_N}³, median over rounds): fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s ({peak['bf16'] / peak['fp32']:.1f}x)",
        f"- fp32 logits parity with the same weights: max relative difference {drift:.1e}",
        f"- transformers: default experts implementation `{default_experts}`, attention `{default_attn}` (defaults "
        f"on this machine)",
        f"- machine: {info['cpu']} ({info['matrix_isa']}), {info['cores']} cores, torch.set_num_threads"
        f"({info['threads']}), torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, "
        f"load average at start {info['load_avg']}; {info['date']}",
    ]
    report = "\n".join([table, "", *summary, "", *setup])
    print(report)
    if args.write:
        cmd = "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(args.write, "train_step", "Training step: nanoseek vs transformers", f"```\n{cmd}\n```\n\n{report}\n")


if __name__ == "__main__":
    main()
