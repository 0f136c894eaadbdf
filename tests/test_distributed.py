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


# ---------------------------------------------------------------------------------------------- expert parallelism
@pytest.fixture(scope="module")
def one_process_8_steps(prepared, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("ep") / "one"
    return run, run_train(prepared, run, 1, "--max_steps", "8", "--export", "true")


def same_losses(ref: list[dict], rows: list[dict], steps: list[int]) -> None:
    assert [r["step"] for r in rows] == steps
    by_step = {r["step"]: r for r in ref}
    for r in rows:
        assert r["loss"] == pytest.approx(by_step[r["step"]]["loss"], rel=1e-4), r["step"]
        assert r["grad_norm"] == pytest.approx(by_step[r["step"]]["grad_norm"], rel=1e-3), r["step"]


def test_expert_parallel_matches_one_process_and_resumes_at_other_sizes(tmp_path, prepared,  # noqa: F811
                                                                         one_process_8_steps):
    """Issue 15: 2 processes, the routed experts split 4 + 4 and dispatched with all-to-all, follow the 1-process
    run on the same global batch for 8 steps (losses within 1e-4, gradient norms within 1e-3), export the same
    weights in the official layout (whole experts), and the checkpoint of step 4 resumes with 4 processes at expert-parallel size 4
    and with 1 process, each continuing the same trajectory."""
    import shutil

    import torch
    from safetensors.torch import load_file

    import nanoseek
    ref_dir, ref = one_process_8_steps
    run = tmp_path / "ep2"
    rows = run_train(prepared, run, 2, "--max_steps", "8", "--export", "true", "--expert_parallel", "2")
    same_losses(ref, rows, list(range(1, 9)))
    assert rows[-1]["val_loss"] == pytest.approx(ref[-1]["val_loss"], rel=1e-4)
    a, b = load_file(str(ref_dir / "model/model.safetensors")), load_file(str(run / "model/model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-3 * a[name].abs().max() + 1e-7, name
    assert nanoseek.load_pretrained(run / "model").config.n_routed_experts == 8
    for nproc, ep in ((4, 4), (1, 1)):  # resume step 4's checkpoint (whole experts) at other sizes
        again = tmp_path / f"resume{nproc}"
        shutil.copytree(run, again, ignore=shutil.ignore_patterns("model", "step_0000008.pt"))
        rows = run_train(prepared, again, nproc, "--max_steps", "8", "--resume", "true",
                         *(["--expert_parallel", str(ep), "--batch_size", "2"] if ep > 1 else []))
        same_losses(ref, rows, list(range(1, 9)))
        assert torch.load(again / "checkpoints/step_0000008.pt", weights_only=True)["model"][
            "model.layers.1.ffn.experts.w13"].shape[0] == 8  # checkpoints hold whole experts


def test_expert_parallel_with_fsdp_and_replicated_shards(tmp_path, prepared, one_process_8_steps):  # noqa: F811
    """4 processes as 2 expert-parallel groups of 2 (each shard on two ranks, its gradient summed over both) with
    FSDP2 sharding everything else: the same trajectory as one process."""
    _, ref = one_process_8_steps
    rows = run_train(prepared, tmp_path / "ep", 4, "--max_steps", "8", "--batch_size", "2", "--expert_parallel", "2",
                     "--parallel", "fsdp")
    same_losses(ref, rows, list(range(1, 9)))


def test_expert_parallel_refuses_what_it_cannot_split():
    from nanoseek import ModelConfig, Transformer
    from nanoseek.train.distributed import DistEnv
    from nanoseek.train.expert_parallel import ExpertParallel
    tiny = ModelConfig.preset("tiny")  # 8 routed experts
    with pytest.raises(ValueError, match=r"n_routed_experts 8 is not divisible by 3"):
        ExpertParallel(Transformer(tiny), DistEnv(world_size=3), 3)
    with pytest.raises(ValueError, match="has no MoE layers"):
        ExpertParallel(Transformer(tiny.replace(n_routed_experts=0)), DistEnv(world_size=2), 2)
    with pytest.raises(ValueError, match=r"2 does not divide the 3 process"):
        ExpertParallel(Transformer(tiny), DistEnv(world_size=3), 2)


def test_node_limited_routing_caps_the_ranks_a_token_reaches():
    """V3's node-limited routing with the expert groups mapped to expert-parallel ranks (n_group = EP size, each
    rank holding one group): every token's top-k experts live on at most topk_group ranks, so its dispatch goes to
    at most that many. Without the group limit the same scores send tokens to more ranks."""
    import torch

    from nanoseek import ModelConfig
    from nanoseek.model.moe import Gate
    cfg = ModelConfig.preset("tiny").replace(n_routed_experts=16, num_experts_per_tok=6, n_group=4, topk_group=2)
    torch.manual_seed(0)
    gate = Gate(cfg)
    torch.nn.init.normal_(gate.weight, std=0.5)
    gate.bias.normal_(0, 0.1)
    x = torch.randn(512, cfg.hidden_size)
    per_rank = cfg.n_routed_experts // cfg.n_group
    ranks = lambda idx: torch.stack([torch.unique(r).numel() * torch.ones(()) for r in idx // per_rank])  # noqa: E731
    _, idx = gate(x)
    assert ranks(idx).max() <= cfg.topk_group
    free = Gate(cfg.replace(n_group=1, topk_group=1))
    free.load_state_dict(gate.state_dict())
    _, idx = free(x)
    assert ranks(idx).max() > cfg.topk_group
