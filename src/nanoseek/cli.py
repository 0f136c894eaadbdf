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


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2, no traceback."""


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
        from .fp8 import convert_checkpoint
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


# ---------------------------------------------------------------------------------------------------- train
@command("train", "pretrain a model (defaults: the tiny preset on the built-in data, about 10 minutes on 2 CPU cores)")
def _train(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--config", help="TOML or JSON file of training settings")
    p.set_defaults(_overrides_help="--key value for any setting of nanoseek.train.TrainConfig; "
                                   "--model.<field> value for a model config field")

    def run(a: argparse.Namespace) -> int:
        from .train.config import build, load_file
        from .train.pretrain import run as train_run
        cfg = build(load_file(a.config) if a.config else None, a._extra)
        train_run(cfg)
        return 0
    return run


# ---------------------------------------------------------------------------------------------------- sft
def _levels(text: str | None) -> list[int] | None:
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        raise CLIError(f"levels: expected comma-separated integers such as 1,2,3 (got {text!r})") from None


@command("sft", "chat supervised fine-tuning (assistant-only loss, packing) of a model directory on chat jsonl "
                "or a built-in task's worked solutions")
def _sft(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--config", help="TOML or JSON file of training settings")
    p.add_argument("--task", help="built-in task (e.g. arithmetic) whose worked solutions are the data, "
                                  "instead of --data FILE.jsonl")
    p.add_argument("--task-examples", type=int, default=2000, help="worked solutions generated for --task")
    p.add_argument("--task-levels", help="comma-separated difficulty levels for --task (default: all)")
    p.add_argument("--task-shortcuts", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of --task's solutions that show only the result, not the work (default 0)")
    p.set_defaults(_overrides_help="--model DIR, --data FILE.jsonl[,FILE2...] and --key value for any setting "
                                   "of nanoseek.train.TrainConfig")

    def run(a: argparse.Namespace) -> int:
        from .train.config import build, load_file
        from .train.sft import SFT_DEFAULTS, run as sft_run
        cfg = build({**SFT_DEFAULTS, **(load_file(a.config) if a.config else {})}, a._extra)
        sft_run(cfg, task=a.task, task_examples=a.task_examples, task_levels=_levels(a.task_levels),
                task_shortcuts=a.task_shortcuts)
        return 0
    return run


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
@command("grpo", "reasoning RL with rule-based rewards (GRPO, the DeepSeek-R1 recipe) on a task or prompt file")
def _grpo(p: argparse.ArgumentParser) -> Runner:
    import dataclasses

    from .train.grpo_config import GRPOConfig
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("settings, as --key value (defaults in parentheses; --preset paper|modern sets the algorithm):\n  " +
                "\n  ".join(f"--{f.name} ({getattr(GRPOConfig(), f.name)!r})"
                            for f in dataclasses.fields(GRPOConfig)) +
                "\n\nexample: nanoseek grpo --model runs/sft/model --task arithmetic --levels 1,2 "
                "--reward accuracy,format --reward-weights 1,0.2")
    p.add_argument("--config", help="TOML or JSON file of GRPO settings")
    p.set_defaults(_overrides_help="--model DIR, --task NAME or --data FILE.jsonl, --reward accuracy,format, "
                                   "--reward-weights 1,0.2, --preset paper|modern and --key value for any field "
                                   "of nanoseek.train.grpo_config.GRPOConfig")

    def run(a: argparse.Namespace) -> int:
        from .train.config import load_file
        from .train.grpo import run as grpo_run
        from .train.grpo_config import build
        grpo_run(build(load_file(a.config) if a.config else None, a._extra))
        return 0
    return run


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
    p.add_argument("--teacher", required=True, metavar="DIR", help="teacher model directory (with its tokenizer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="built-in task whose train prompts are sampled (its verifier judges)")
    src.add_argument("--data", metavar="FILE", help="jsonl of prompt rows (`prompt` or `messages`, and `answer`)")
    p.add_argument("--out", required=True, metavar="FILE", help="chat jsonl to write (reasoning_content form)")
    p.add_argument("--student", metavar="DIR|PRESET", help="then fine-tune this model on the kept traces")
    p.add_argument("--k", type=int, default=4, help="completions sampled per prompt")
    p.add_argument("--num-prompts", type=int, default=256, help="prompts to sample from")
    p.add_argument("--levels", help="comma-separated task levels (default: all)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest completion")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (R1's recommendation)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-per-prompt", type=int, default=2, help="distinct correct traces kept per prompt")
    p.add_argument("--no-require-format", action="store_true",
                   help="keep correct answers even without a well-formed think block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for sampling and the student's SFT")
    p.add_argument("--config", help="TOML or JSON file of the student's SFT settings")
    p.set_defaults(_overrides_help="--key value for the student's SFT (nanoseek.train.TrainConfig)")

    def run(a: argparse.Namespace) -> int:
        from .train.config import load_file
        from .train.distill import run as distill_run
        if a._extra and not a.student:
            raise CLIError(f"unrecognized arguments: {' '.join(a._extra)} (SFT settings need --student)")
        if a.threads:
            import torch
            torch.set_num_threads(a.threads)
        distill_run(a.teacher, a.out, task=a.task, data=a.data, num_prompts=a.num_prompts,
                    levels=_levels(a.levels), k=a.k, max_tokens=a.max_tokens, temperature=a.temperature,
                    top_p=a.top_p, seed=a.seed, require_format=not a.no_require_format,
                    max_per_prompt=a.max_per_prompt, device=a.device, student=a.student, sft_overrides=a._extra,
                    sft_file=load_file(a.config) if a.config else None)
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
        from .train.trainer import TrainingError
        if not isinstance(e, TrainingError):
            raise
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
