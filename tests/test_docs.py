"""Every `nanoseek ...` command shown in README.md and docs/ must parse with today's CLI (subcommand, flags, and for
the training commands every --key override), so the documentation cannot rot; cheap ones are run for real."""
import re
import shlex
from pathlib import Path

import pytest

from nanoseek.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        in_block = False
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")  # shell line continuations
        for line in text.splitlines():
            if line.startswith("```"):
                in_block = not in_block
                continue
            m = re.match(r"\s*(?:torchrun .*? -m nanoseek\.cli|nanoseek)\s+(.*)", line)
            if in_block and m:
                cmd = m.group(1).split("  #")[0].split(" # ")[0].strip()
                out.append((path.name, cmd))
    return out


CASES = commands()


def test_docs_show_every_command():
    """Every subcommand of the CLI appears in at least one documented command that the test below parses (a count
    of commands could not tell that one had vanished, or that the block parser had stopped finding them)."""
    import argparse
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    shown = {cmd.split()[0] for _, cmd in CASES}
    assert shown == set(sub.choices), f"not shown in README.md or docs/: {sorted(set(sub.choices) - shown)}"


@pytest.mark.parametrize("where,cmd", CASES, ids=[f"{w}:{c[:40]}" for w, c in CASES])
def test_documented_command_parses(where, cmd):
    argv = shlex.split(cmd.replace("...", ""))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "sft"):
        from nanoseek.train.config import SFTConfig, TrainConfig
        cls = TrainConfig if args.command == "train" else SFTConfig
        cls.build(None, extra)  # unknown keys raise
    elif args.command == "grpo" and extra:
        from nanoseek.train.grpo_config import build as gbuild
        given = {k.lstrip("-").replace("-", "_") for k in extra if k.startswith("--")}
        defaults = {} if given & {"task", "data"} else {"task": "arithmetic"}
        gbuild(None, extra, **({} if "model" in given else {"model": "m"}), **defaults)
    elif args.command == "distill":
        from nanoseek.train.config import SFTConfig
        from nanoseek.train.distill import DistillConfig
        from nanoseek.train.settings import parse_overrides
        for key, _ in parse_overrides(extra, "distill"):
            key = key.replace("-", "_")
            assert DistillConfig.owns(key) or SFTConfig.owns(key) or key.startswith("model."), f"{where}: {key}"
    else:
        assert not extra or hasattr(args, "_overrides_help"), f"{where}: unknown arguments {extra} in: {cmd}"


def test_info_commands_run(capsys):
    for _, cmd in CASES:
        if cmd.startswith("info "):
            assert main(shlex.split(cmd)) == 0
    assert "671" in capsys.readouterr().out
