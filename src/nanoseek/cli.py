"""The `nanoseek` command. Each subcommand parses its arguments and calls into the package; no logic lives here.

Subcommands register themselves with `@command(name, help)`: a function that receives the subparser to add its
arguments to, and returns the function that runs them.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

Runner = Callable[[argparse.Namespace], int | None]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], Runner]]] = []


def command(name: str, help: str):
    def register(setup: Callable[[argparse.ArgumentParser], Runner]):
        _COMMANDS.append((name, help, setup))
        return setup
    return register


def load_config(name_or_dir: str):
    from .config import ModelConfig
    return ModelConfig.from_name_or_path(name_or_dir)


# ---------------------------------------------------------------------------------------------------- info
@command("info", "parameters, activated parameters, KV-cache bytes and FLOPs of a preset or model directory")
def _info(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("model", help="preset name or model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length for the attention FLOPs")

    def run(a: argparse.Namespace) -> int:
        from .info import count, format_info
        info = count(load_config(a.model), seq_len=a.seq_len)
        print(json.dumps(info) if a.json else format_info(a.model, info))
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- tokenizer
@command("tokenizer", "tokenizer tools: `tokenizer train` trains a byte-level BPE with DeepSeek's special tokens")
def _tokenizer(p: argparse.ArgumentParser) -> Runner:
    sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")
    tp = sub.add_parser("train", help="train a byte-level BPE tokenizer on text files",
                        description="Train a byte-level BPE (DeepSeek's pre-tokenizer) with BOS/EOS/pad, <｜User｜>, "
                        "<｜Assistant｜>, <think>, </think> and the tool-call markers, and write tokenizer.json + "
                        "tokenizer_config.json (with the R1 chat template) that nanoseek and transformers load.")
    tp.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files or directories (*.txt)")
    tp.add_argument("--vocab-size", type=int, required=True, help="total ids, special tokens included")
    tp.add_argument("--out", required=True, metavar="DIR", help="output directory")
    tp.add_argument("--min-frequency", type=int, default=2, help="minimum count of a merged pair")
    tp.add_argument("--model-max-length", type=int, default=4096, help="model_max_length in tokenizer_config.json")
    tp.add_argument("--max-digits", type=int, default=3, choices=(1, 2, 3),
                    help="most digits one token holds: 3 as DeepSeek-V3, 1 for one token per digit (arithmetic)")

    def run(a: argparse.Namespace) -> int:
        import time

        from .tokenizer import train_tokenizer
        t0 = time.perf_counter()
        tok = train_tokenizer(a.input, a.vocab_size, a.out, min_frequency=a.min_frequency,
                              model_max_length=a.model_max_length, max_digits=a.max_digits,
                              show_progress=sys.stderr.isatty())
        print(f"{a.out}: {tok.vocab_size}-token byte-level BPE trained in {time.perf_counter() - t0:.1f}s")
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- data
@command("data", "data pipeline: `data clean` dedups, filters and decontaminates documents; `data prepare` "
         "tokenizes files or a built-in corpus into token shards")
def _data(p: argparse.ArgumentParser) -> Runner:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    pp = sub.add_parser("prepare", help="tokenize into resumable token shards with a train/validation split",
                        description="Tokenize .txt (blank lines separate documents), .jsonl (`text` or chat "
                        "`messages`) or .parquet (`text` column) files, or a built-in corpus, into token shards "
                        "plus manifest.json. Rerun the same command to resume an interrupted run.")
    src = pp.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help="input files (.txt, .jsonl, .jsonl.gz, .parquet) or directories of them (e.g. the kept/ "
                          "directory of `data clean`)")
    src.add_argument("--corpus", choices=["builtin", "pydoc", "tasks"],
                     help="built-in offline corpus (default: builtin = pydoc + tasks)")
    pp.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (tokenizer.json)")
    pp.add_argument("--out", required=True, metavar="DIR", help="output directory")
    pp.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents for validation")
    pp.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard (documents stay whole)")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")

    cl = sub.add_parser("clean", help="exact and near dedup, quality filters and decontamination (datatrove)",
                        description="Clean pretraining documents: exact dedup (hash of normalized text), near "
                        "dedup (MinHash LSH over word n-grams), Gopher / FineWeb / C4 quality filters, and "
                        "decontamination against evaluation prompts. Writes OUT/kept/ (read it with `data prepare "
                        "--input OUT/kept`), OUT/removed/STAGE/, OUT/report.json and OUT/report.md. Rerun the same "
                        "command to resume an interrupted run.")
    cl.add_argument("--input", nargs="+", required=True, metavar="PATH",
                    help="files (.txt, .jsonl with `text` and optional `id`, .jsonl.gz, .parquet) or directories")
    cl.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cl.add_argument("--decontaminate", nargs="+", default=[], metavar="TASK_OR_FILE",
                    help="evaluation prompts to remove from the corpus: built-in task test splits (arithmetic, "
                         "countdown, linear; levels as arithmetic:1,2,3) and/or jsonl files of prompts")
    cl.add_argument("--steps", default=None,
                    help="comma-separated stages to run, from exact,near,quality,decontaminate (default: all; "
                         "decontaminate runs when --decontaminate is given)")
    cl.add_argument("--near-ngram", type=int, default=5, help="word n-gram size of the MinHash shingles")
    cl.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard similarity of near duplicates")
    cl.add_argument("--decont-ngram", type=int, default=13, help="word n-gram shared with a prompt that marks a "
                                                                 "document contaminated")
    cl.add_argument("--decont-limit", type=int, default=10_000,
                    help="test problems per built-in task (the first ones `nanoseek eval` draws)")
    cl.add_argument("--workers", type=int, default=2, help="worker processes (and input shards)")
    cl.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(a: argparse.Namespace) -> int:
        if a.data_command == "clean":
            from .data.clean import clean, summary as clean_summary
            steps = [s.strip() for s in a.steps.split(",") if s.strip()] if a.steps else None
            report = clean(a.input, a.out, steps=steps, decontaminate=a.decontaminate, near_ngram=a.near_ngram,
                           near_threshold=a.near_threshold, decont_ngram=a.decont_ngram,
                           decont_limit=a.decont_limit, workers=a.workers, progress=not a.no_progress)
            print(f"{a.out}: {clean_summary(report)}; report: {a.out}/report.md")
            return 0
        from .data import prepare, summary
        manifest = prepare(a.input or a.corpus or "builtin", a.tokenizer, a.out, val_fraction=a.val_fraction,
                           shard_tokens=a.shard_tokens, progress=not a.no_progress)
        print(f"{a.out}: {summary(manifest)}")
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- convert
@command("convert", "rewrite a Hugging Face checkpoint (e.g. the official FP8 weights) dequantised to --dtype")
def _convert(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("src", help="model directory to read (config.json + safetensors)")
    p.add_argument("dst", help="model directory to write (replaced atomically if it exists)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the weights")
    p.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")

    def run(a: argparse.Namespace) -> int:
        from .checkpoint import convert_checkpoint
        out = convert_checkpoint(a.src, a.dst, dtype=a.dtype, max_shard_size=a.max_shard_size)
        print(f"wrote {out} ({a.dtype})")
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- demo
@command("demo", "the main job: tokenizer, pretraining, SFT, GRPO, evaluation and report on the built-in default")
def _demo(p: argparse.ArgumentParser) -> Runner:
    from .demo import STAGES
    p.add_argument("--out", default="runs/demo", help="run directory (reruns resume and skip finished stages)")
    p.add_argument("--preset", default="tiny", help="model preset to pretrain (tiny or small)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (0.1: a smoke run)")
    p.add_argument("--skip", default="", help=f"comma-separated stages to leave out: {','.join(STAGES)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--eval-limit", type=int, default=500, help="distinct held-out problems per evaluation")
    p.add_argument("--seed", type=int, default=0, help="seeds every stage (the held-out problems stay the same)")
    p.add_argument("--with", dest="include", default="",
                   help="comma-separated optional stages to run: distill (the GRPO model's traces into a fresh "
                        "student, compared with SFT at the same budget)")

    def run(a: argparse.Namespace) -> int:
        from .demo import run as demo_run
        if a.eval_limit < 1:
            raise ValueError(f"demo: --eval-limit must be >= 1 (got {a.eval_limit})")
        demo_run(a.out, a.preset, a.scale, tuple(s for s in a.skip.split(",") if s), a.threads, a.eval_limit,
                 a.seed, tuple(s for s in a.include.split(",") if s))
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- train, sft, grpo
def settings_args(p: argparse.ArgumentParser, settings: type, example: str, more: str = "") -> None:
    """A training command's arguments: `--config FILE` and `--key value` for every field of its dataclass of
    settings, which `--help` lists with their defaults and comments."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = settings.help() + (f"\n\n{more}" if more else "") + f"\n\nexample: {example}"
    p.add_argument("--config", help="TOML or JSON file of settings (the keys listed below)")
    p.set_defaults(_overrides_help="--key value for any setting listed below")


def _load(path: str):
    """`package.module:name` imported when a command runs (the CLI starts without the training code)."""
    import importlib
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_command(name: str, help: str, settings: str, runner: str, example: str, more: str = "") -> None:
    """Register a training command whose settings are the dataclass `settings` and that runs `runner(cfg)`."""
    def setup(p: argparse.ArgumentParser) -> Runner:
        cls = _load(settings)
        settings_args(p, cls, example, more)

        def run(a: argparse.Namespace) -> int:
            from .train.settings import load_file
            _load(runner)(cls.build(load_file(a.config) if a.config else None, a._extra))
            return 0
        return run
    command(name, help)(setup)


settings_command("train", "pretrain a model (defaults: the tiny preset on the built-in data, about 10 minutes on 2 CPU "
                          "cores)", "nanoseek.train.config:TrainConfig", "nanoseek.train.pretrain:run",
                 "nanoseek train --model small --max_steps 2000 --run_dir runs/small",
                 "--model.<field> value overrides a field of the model's config (e.g. --model.n_routed_experts 8).")
settings_command("sft", "chat supervised fine-tuning (assistant-only loss, packing) of a model directory on chat "
                        "jsonl or a built-in task's worked solutions", "nanoseek.train.config:SFTConfig",
                 "nanoseek.train.sft:run",
                 "nanoseek sft --model runs/train/model --task arithmetic --task_levels 1,2")


# ---------------------------------------------------------------------------------------------------- generate, chat
@command("generate", "complete a prompt with a model directory (streamed; --n for several samples)")
def _generate(p: argparse.ArgumentParser) -> Runner:
    from .infer.cli import add_engine_args, run_generate
    add_engine_args(p)
    p.add_argument("--prompt", required=True, help="the prompt text (token ids with --ids)")
    p.add_argument("--ids", dest="raw_ids", action="store_true", help="--prompt holds token ids")
    p.add_argument("--n", type=int, default=1, help="number of completions")
    p.add_argument("--verbose", action="store_true", help="print the finish reason")
    return run_generate


@command("chat", "interactive chat with a model directory: reasoning shown apart from the answer, multi-turn")
def _chat(p: argparse.ArgumentParser) -> Runner:
    from .infer.cli import add_engine_args, run_chat
    add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    return run_chat


# ---------------------------------------------------------------------------------------------------- serve
@command("serve", "OpenAI/DeepSeek-compatible HTTP server for a model directory, with a chat page at /")
def _serve(p: argparse.ArgumentParser) -> Runner:
    from .serve.cli import add_serve_args, run_serve
    add_serve_args(p)
    return run_serve


# ---------------------------------------------------------------------------------------------------- grpo
settings_command("grpo", "reasoning RL with rule-based rewards (GRPO, the DeepSeek-R1 recipe) on a task or prompt "
                         "file", "nanoseek.train.grpo_config:GRPOConfig", "nanoseek.train.grpo:run",
                 "nanoseek grpo --model runs/sft/model --task arithmetic --levels 1,2 --reward accuracy,format "
                 "--reward_weights 1,0.2",
                 "--preset paper|modern sets the algorithm's settings; explicit settings win over it.")


# ---------------------------------------------------------------------------------------------------- eval, report
@command("eval", "evaluate a model directory: perplexity / bits per byte on text, accuracy, pass@k and maj@k on "
                 "built-in tasks and question/answer jsonl")
def _eval(p: argparse.ArgumentParser) -> Runner:
    from .evaluate.cli import add_eval_args, run_eval
    add_eval_args(p)
    return run_eval


@command("report", "efficiency report of a preset, model or run directory: total vs activated parameters, KV cache "
                   "vs MHA/GQA, FLOPs, measured throughput and MFU, expert load, MTP acceptance, run curves")
def _report(p: argparse.ArgumentParser) -> Runner:
    from .report.cli import add_report_args, run_report
    add_report_args(p)
    return run_report


# ---------------------------------------------------------------------------------------------------- plot
@command("plot", "PNG charts of a run's metrics.jsonl: loss, lr, expert load; reward, accuracy, KL, lengths for GRPO")
def _plot(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("run_dir", help="run directory (or its metrics.jsonl)")
    p.add_argument("--out", help="directory for the PNG files (default: the run directory)")

    def run(a: argparse.Namespace) -> int:
        from .plot import plot
        for path in plot(a.run_dir, a.out):
            print(path)
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- distill
@command("distill", "R1 distillation: sample reasoning traces from a teacher, keep the verified-correct ones "
                    "(rejection sampling) as chat jsonl, optionally SFT a student on them")
def _distill(p: argparse.ArgumentParser) -> Runner:
    from .train.distill import DistillConfig
    settings_args(p, DistillConfig, "nanoseek distill --teacher runs/grpo/model --task arithmetic --out traces.jsonl "
                                    "--student small --max_steps 300",
                  "Any other --key value (or key of the --config file) is a setting of the student's SFT (see "
                  "`nanoseek sft --help`).")

    def run(a: argparse.Namespace) -> int:
        from .train.distill import run as distill_run
        from .train.settings import load_file, parse_overrides
        own: dict[str, object] = {}
        sft: dict[str, object] = {}
        pairs = list((load_file(a.config) if a.config else {}).items()) + parse_overrides(a._extra, DistillConfig.what)
        for key, value in pairs:  # distillation's own settings, then the student's SFT's
            key = key.replace("-", "_")
            (own if DistillConfig.owns(key) else sft)[key] = value
        distill_run(DistillConfig.build(None, None, **own, **({"sft": sft} if sft else {})))
        return 0
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek", description="DeepSeek-V3/R1 in plain PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help, setup in _COMMANDS:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(_run=setup(sp))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "_overrides_help"):  # only commands that take --key value overrides
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    try:
        return args._run(args) or 0
    except (ValueError, OSError) as e:  # bad input: one line, no traceback
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train.loop import TrainingError
        if not isinstance(e, TrainingError):
            raise
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
