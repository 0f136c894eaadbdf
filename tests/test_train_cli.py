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
