"""`nanoseek train` as a user runs it: a real SIGKILL mid-run, then --resume; one-line errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train import prepared  # noqa: F401

BASE = ["--max_steps", "8", "--seq_len", "32", "--batch_size", "4", "--eval_every", "4", "--ckpt_every", "2",
        "--warmup_steps", "2", "--model.vocab_size", "400", "--progress", "false", "--threads", "1"]


def cmd(prepared, run_dir, *extra):
    return [sys.executable, "-m", "nanoseek.cli", "train", "--data", str(prepared / "data"),
            "--tokenizer", str(prepared / "tok"), "--run_dir", str(run_dir), *BASE, *extra]


def losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, prepared):  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(cmd(prepared, tmp_path / "ref", "--export", "false"), env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(prepared, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step_0000004.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "step_0000004.pt").exists()
    assert not (run / "model").exists()  # killed before the export
    res = subprocess.run(cmd(prepared, run, "--resume", "true"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout
    a, b = losses(tmp_path / "ref"), losses(run)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
    # the export loads back
    import nanoseek
    model = nanoseek.load_pretrained(run / "model")
    assert model.config.vocab_size == 400


@pytest.mark.parametrize("args,message", [
    (["--lerning_rate", "1"], "unknown key 'lerning_rate'"),
    (["--data", "/nonexistent"], "neither a built-in corpus"),
    (["--model", "no-such-preset"], "neither a preset"),
    (["--schedule", "linear"], "schedule"),
    (["--tokenizer_digits", "4"], "tokenizer_digits: expected 1, 2 or 3"),
])
def test_bad_input_one_line_errors(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "nanoseek.cli", "train", "--run_dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_that_cannot_fit_is_refused_before_training(tmp_path, prepared):  # noqa: F811
    huge = ["--model.num_hidden_layers", "1024", "--model.first_k_dense_replace", "1024",
            "--model.hidden_size", "65536", "--model.intermediate_size", "1048576"]
    proc = subprocess.run(cmd(prepared, tmp_path, *huge), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "num_hidden_layers=1024 layers of" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["train", "sft", "grpo", "distill"])
def test_help_lists_every_setting_with_its_default_and_what_it_does(command, capsys):
    """`--help` of a training command is generated from its dataclass: every field, its default, its comment."""
    from nanoseek.cli import main
    from nanoseek.train.config import SFTConfig, TrainConfig
    from nanoseek.train.distill import DistillConfig
    from nanoseek.train.grpo_config import GRPOConfig
    cls = {"train": TrainConfig, "sft": SFTConfig, "grpo": GRPOConfig, "distill": DistillConfig}[command]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    docs = cls.field_help()
    for name, default in cls.defaults().items():
        assert docs.get(name), f"{cls.__name__}.{name} has no comment to show in --help"
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"--{name} ")), None)
        assert line is not None, f"--{name} missing from `nanoseek {command} --help`"
        shown = default if isinstance(default, str) and default else json.dumps(default)
        assert line.split()[1] == shown
    assert TrainConfig.field_help()["lr"] == "peak learning rate"  # the comment itself, inherited from RunConfig
    assert SFTConfig.defaults()["lr"] == 3e-4 and GRPOConfig.defaults()["lr"] == 1e-4  # per-command defaults


def test_settings_flags_and_layers(tmp_path):
    """--key value, --key=value, a bare --flag (true), --no-flag (false); file < command line < arguments."""
    from nanoseek.train.config import SFTConfig, TrainConfig
    from nanoseek.train.distill import DistillConfig
    cfg = TrainConfig.build({"lr": 0.5, "max_steps": 7}, ["--lr=0.25", "--resume", "--no-progress", "--model.vocab_size",
                                                          "320"], max_steps=9)
    assert (cfg.lr, cfg.max_steps, cfg.resume, cfg.progress, cfg.model_overrides) == (0.25, 9, True, False,
                                                                                       {"vocab_size": 320})
    with pytest.raises(ValueError, match="unknown key 'no_model'"):
        TrainConfig.build(None, ["--no-model"])  # --no- only turns off a boolean setting
    with pytest.raises(ValueError, match="sft config: give --data or --task, not both"):
        SFTConfig.build(None, ["--task", "arithmetic", "--data", "x.jsonl"])
    d = DistillConfig.build(None, ["--teacher", "t", "--out", str(tmp_path / "o.jsonl"), "--task", "arithmetic",
                                   "--no-require-format"], student="tiny", sft={"max_steps": "3"})
    assert d.require_format is False
    student = d.student_config()  # the student's SFT: its defaults, distillation's run_dir, the given settings
    assert (student.max_steps, student.run_dir, student.data, student.model) == (3, "runs/distill",
                                                                                 str(tmp_path / "o.jsonl"), "tiny")
    with pytest.raises(ValueError, match="SFT settings need --student"):
        DistillConfig.build(None, None, teacher="t", out="o", task="arithmetic", sft={"lr": 1})
