"""Scale-out: the same `nanoseek train` under torchrun with 2 CPU processes (gloo) follows the 1-process loss
trajectory at the same global batch, with DDP and with FSDP2."""
import json
import os
import subprocess
import sys

import pytest

from test_train import prepared  # noqa: F401  (module-scoped fixture: tokenizer + shards)


def run_train(prepared, run_dir, nproc: int, *extra: str) -> list[dict]:
    args = ["-m", "nanoseek.cli", "train", "--data", str(prepared / "data"), "--tokenizer", str(prepared / "tok"),
            "--max_steps", "4", "--seq_len", "32", "--batch_size", "4", "--global_batch_size", "8",
            "--eval_every", "4", "--ckpt_every", "4", "--warmup_steps", "2", "--model.vocab_size", "400",
            "--run_dir", str(run_dir), "--progress", "false", "--export", "false", "--threads", "1", *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp+fp8", "fsdp+fp8"])
def test_two_processes_match_one(tmp_path, prepared, mode):  # noqa: F811
    # +fp8: FP8 training (issue 16) composes with both: the 1x128 tiles are per token, and each process's
    # micro-batch holds the same tokens as one of the single process's accumulation steps
    fp8 = ["--fp8", "true"] if mode.endswith("+fp8") else []
    one = run_train(prepared, tmp_path / "one", 1, *fp8)
    two = run_train(prepared, tmp_path / "two", 2, "--parallel", mode.removesuffix("+fp8"), *fp8)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-4)
