"""GRPO: the pure loss on hand-computed tensors, the trainer on a tiny model (one step, bad input), and reward going
up within a handful of steps on CPU."""
import json
import math

import pytest
import torch

from nanoseek import Transformer, save_pretrained, tasks
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.tokenizer import train_tokenizer
from nanoseek.train.grpo import GRPOTrainer, pack, token_logprobs
from nanoseek.train.rollouts import LevelCurriculum, Rollout, render_prompt
from nanoseek.train.grpo_config import PRESETS, build
from nanoseek.train.grpo_loss import group_advantages, grpo_loss, k3_kl

STD = math.sqrt(1 / 3)  # sample std of (1, 0, 0, 1)


# ------------------------------------------------------------------------------------------------ advantages
def test_group_advantages_scalings():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, zero = group_advantages(r, 4, "group")
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (STD + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4)) and zero.tolist() == [False, True]
    adv, _ = group_advantages(r, 4, "none")  # Dr. GRPO: centred only
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    adv, _ = group_advantages(r, 4, "batch")
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (r.std() + 1e-4))
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(r[:7], 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(r, 4, "std")


def test_k3_kl_value():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    kl = k3_kl(logp, ref)
    assert kl[0].item() == pytest.approx(0.5 - math.log(0.5) - 1) and kl[1].item() == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    assert (k3_kl(torch.randn(100, generator=g), torch.randn(100, generator=g)) >= 0).all()


# ------------------------------------------------------------------------------------------------ the loss
def policy(B: int, T: int, V: int = 5, seed: int = 0):
    """Per-token log-probabilities of fixed tokens under free logits (a stand-in for a model)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return logits, logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def test_all_equal_rewards_give_zero_gradient():
    logits, logp = policy(8, 6)
    adv, zero = group_advantages(torch.full((8,), 0.7), 4)
    assert zero.all() and torch.equal(adv, torch.zeros(8))
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        logits.grad = None
        loss, _ = grpo_loss(logp, adv, torch.ones(8, 6), loss_type=loss_type)
        loss.backward(retain_graph=True)
        assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_one_update_ratio_is_one_and_loss_is_beta_kl():
    _, logp = policy(4, 3)
    ref = logp.detach() + torch.tensor([[0.1, -0.2, 0.3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.0]), 4)
    loss, st = grpo_loss(logp, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
    kl = k3_kl(logp.detach(), ref)
    expected = 0.04 * ((kl * mask).sum(-1) / mask.sum(-1)).mean()  # -mean(A) vanishes: group advantages sum to 0
    assert st.ratio.item() == pytest.approx(1.0) and st.clip_region.item() == 0.0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert st.kl.item() == pytest.approx(((kl * mask).sum() / mask.sum()).item())
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, adv, mask, beta=0.1)


def test_token_vs_sequence_normalisation():
    """Two completions of 1 and 3 tokens with advantages +1 and -1, ratio 1: per-token term = -A."""
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    expected = {"grpo": (0.0, [[-0.5, 0, 0], [1 / 6] * 3]),  # (-1 + 1) / 2; per-token grads -A / (|o_i| G)
                "dapo": (0.5, [[-0.25, 0, 0], [0.25] * 3]),  # (-1 + 3) / 4 tokens
                "dr_grpo": (0.25, [[-0.125, 0, 0], [0.125] * 3])}  # (-1 + 3) / (G · L_max = 2 · 4)
    for loss_type, (value, grad) in expected.items():
        logp.grad = None
        loss, _ = grpo_loss(logp, adv, mask, loss_type=loss_type, max_completion_length=4)
        loss.backward()
        assert loss.item() == pytest.approx(value), loss_type
        assert torch.allclose(logp.grad, torch.tensor(grad)), loss_type
    # micro-batches with the whole batch's normalisers add up to the whole batch's loss
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        whole, _ = grpo_loss(logp, adv, mask, loss_type=loss_type, max_completion_length=4)
        parts = sum(grpo_loss(logp[i:i + 1], adv[i:i + 1], mask[i:i + 1], loss_type=loss_type,
                              max_completion_length=4, num_sequences=2, num_tokens=4)[0] for i in range(2))
        assert parts.item() == pytest.approx(whole.item()), loss_type


def test_clipping_on_hand_built_ratios():
    ratios = torch.tensor([[0.5], [1.5], [1.1], [0.7]])
    old = torch.zeros(4, 1)
    logp = torch.log(ratios).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, st = grpo_loss(logp, adv, torch.ones(4, 1), old_logp=old, epsilon=0.2, epsilon_high=0.3)
    # terms: -min(0.5, 0.8)=-0.5 | -min(1.5, 1.3)=-1.3 (clipped) | -min(-1.1, -1.1)=1.1 | -min(-0.7, -0.8)=0.8 (clipped)
    assert loss.item() == pytest.approx((-0.5 - 1.3 + 1.1 + 0.8) / 4)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5 / 4], [0.0], [1.1 / 4], [0.0]]))  # d(-ρA)/dlogp = -ρA
    assert (st.clip_low.item(), st.clip_high.item(), st.clip_region.item()) == (0.25, 0.25, 0.5)


def test_truncated_and_skipped_completions_drop_out_through_the_mask():
    _, logp = policy(2, 4)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(logp, adv, torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]), loss_type="grpo")
    alone, _ = grpo_loss(logp[:1], adv[:1], torch.tensor([[1.0, 1, 0, 0]]), loss_type="grpo")
    assert loss.item() == pytest.approx(alone.item() / 2)  # still averaged over G sequences


def test_presets_and_config_errors():
    paper = build(None, ["--model", "m", "--task", "arithmetic", "--preset", "paper"])
    assert (paper.loss_type, paper.beta, paper.num_generations, paper.scale_rewards) == ("grpo", 0.04, 16, "group")
    modern = build(None, ["--model", "m", "--task", "arithmetic", "--preset", "modern", "--beta", "0.01"])
    assert (modern.loss_type, modern.beta, modern.num_generations, modern.epsilon, modern.num_iterations) == \
        ("dapo", 0.01, 8, 0.2, 1)  # the command line overrides the preset
    cfg = build(None, ["--model", "m", "--task", "countdown", "--reward", "countdown,length_penalty(max_length=64, "
                       "cache=16)", "--reward-weights", "1,0.5", "--mask_truncated_completions"])
    assert cfg.reward_list() == ["countdown", "length_penalty(max_length=64, cache=16)"]
    assert cfg.reward_weight_list() == [1.0, 0.5] and cfg.mask_truncated_completions is True
    assert set(PRESETS) == {"paper", "modern"}
    for args, msg in ((["--task", "arithmetic"], "model"), (["--model", "m"], "exactly one"),
                      (["--model", "m", "--task", "t", "--loss_type", "ppo"], "loss_type"),
                      (["--model", "m", "--task", "t", "--preset", "x"], "preset"),
                      (["--model", "m", "--task", "t", "--bogus", "1"], "unknown key")):
        with pytest.raises(ValueError, match=msg):
            build(None, args)


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.fixture(autouse=True)
def _restore_threads():
    """GRPOTrainer applies --threads process-wide; give other tests their thread count back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny random model whose tokenizer (R1 template) was trained on worked arithmetic."""
    task = tasks.get("arithmetic")
    root = tmp_path_factory.mktemp("grpo")
    tok = train_tokenizer(iter(task.document(e) for e in task.examples(300, level=[1, 2], seed=1)),
                          vocab_size=300, out_dir=root / "tok")
    cfg = ModelConfig.preset("tiny").replace(vocab_size=320, hidden_size=64, intermediate_size=128,
                                             moe_intermediate_size=32, num_hidden_layers=2, q_lora_rank=32,
                                             kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                             v_head_dim=16, num_nextn_predict_layers=0)
    torch.manual_seed(0)
    save_pretrained(Transformer(cfg), root / "model", tokenizer=tok)
    return str(root / "model")


def config(model_dir, tmp_path, *extra):
    return build(None, ["--model", model_dir, "--task", "arithmetic", "--levels", "1", "--run_dir", str(tmp_path),
                        "--progress", "false", "--num_prompts", "2", "--num_generations", "4",
                        "--max_completion_length", "12", "--eval_prompts", "0", "--threads", "1", *extra])


def digit_share(completion, **_):
    """A reward a random model can climb quickly: the share of digits in its answer."""
    text = completion.removeprefix("<think>\n")
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def test_one_step_raises_the_logprob_of_a_rewarded_completion(model_dir, tmp_path):
    """A fixed set of completions (one rewarded) instead of sampling: the step must make it more likely."""
    trainer = GRPOTrainer(config(model_dir, tmp_path, "--reward", "format", "--lr", "1e-3", "--num_prompts", "1"),
                          sampler=lambda *a, **k: [[Rollout(good, False)] + [Rollout(bad, False)] * 3])
    tok = trainer.tokenizer
    good = tok.encode("1+1=2\n</think>\n\n\\boxed{2}", add_special_tokens=False) + [tok.eos_token_id]
    bad = tok.encode("so", add_special_tokens=False) + [tok.eos_token_id]
    prompt, _ = render_prompt(tok, trainer.prompts.messages(trainer.prompts.peek()[0]))

    def logp_good() -> float:
        ids, mask = pack([prompt], [good], 0)
        with torch.no_grad():
            return float((token_logprobs(trainer.model, ids, 1.0)[0] * mask).sum())
    before = logp_good()
    m = trainer.train_step()
    assert m["rewards/format"] == 0.25 and m["frac_reward_zero_std"] == 0.0
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert logp_good() > before + 0.1


def test_reward_errors_are_counted_and_bad_rows_named(model_dir, tmp_path, capsys):
    def broken(completion, **_):
        raise ZeroDivisionError("boom")
    trainer = GRPOTrainer(config(model_dir, tmp_path, "--reward", "format"), log=print)
    trainer.rewards.fns.append(broken)
    trainer.rewards.names.append("broken")
    trainer.rewards.weights.append(1.0)
    trainer.rewards.errors.append(0)
    m = trainer.train_step()  # the run continues
    assert m["reward_errors"] == 8 and m["rewards/broken"] is None and m["skipped"] == 0
    assert "reward 'broken' raised ZeroDivisionError: boom" in capsys.readouterr().out
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "What is 2+2?", "answer": "4"}) + "\n" +
                    json.dumps({"prompt": "What is 3+3?"}) + "\n")
    with pytest.raises(ValueError, match=r"prompt row 1 .*reward 'accuracy' needs field\(s\) answer"):
        GRPOTrainer(build(None, ["--model", model_dir, "--data", str(rows), "--reward", "accuracy",
                                 "--run_dir", str(tmp_path)]))


def test_model_without_chat_template_is_a_clear_error(model_dir, tmp_path, capsys):
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    cfg_file = bare / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template")
    cfg_file.write_text(json.dumps(cfg))
    assert main(["grpo", "--model", str(bare), "--task", "arithmetic", "--run_dir", str(tmp_path / "r"),
                 "--progress", "false"]) == 2
    assert "needs a tokenizer_config.json with a chat_template" in capsys.readouterr().err


def test_grpo_raises_mean_reward_on_cpu(model_dir, tmp_path):
    """From a random tiny model: 20 steps of GRPO (engine rollouts) on arithmetic prompts raise a reward the model
    can reach by chance (measured: 0.05 -> 0.84 with seed 0, 0.03 -> 0.94 with seed 3; the climb starts after 8-10
    steps). Deterministic seeds; about 15 s on 2 cores."""
    cfg = config(model_dir, tmp_path, "--reward", "test_grpo:digit_share", "--lr", "1e-2", "--num_prompts", "4",
                 "--num_generations", "8", "--max_steps", "20", "--ckpt_every", "10", "--eval_prompts", "0")
    trainer = GRPOTrainer(cfg)
    assert trainer.sampler.llm.model is trainer.model  # rollouts see the live weights, nothing is reloaded
    summary = trainer.fit()
    r = summary["rewards"]
    assert sum(r[-2:]) / 2 > sum(r[:2]) / 2 + 0.4, r
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    for key in ("reward", "rewards/digit_share", "accuracy", "frac_reward_zero_std", "completion_length",
                "truncated_frac", "clip_ratio", "entropy", "loss", "grad_norm", "load"):
        assert key in rows[-1], key
    assert (tmp_path / "checkpoints" / "step_0000020.pt").exists()


def test_resume_is_exact(model_dir, tmp_path):
    """Stopped after step 2 (checkpoint), resumed: step 3 as in one uninterrupted run (beta > 0, two updates, dynamic
    sampling and the curriculum: the prompts drawn so far and the level estimates are in the checkpoint)."""
    def cfg(run, *extra):
        return config(model_dir, tmp_path / run, "--reward", "test_grpo:digit_share", "--lr", "1e-2",
                      "--max_steps", "3", "--ckpt_every", "2", "--beta", "0.04", "--num_iterations", "2",
                      "--levels", "1,2", "--dynamic_sampling", "true", "--curriculum", "true", *extra)
    full = GRPOTrainer(cfg("a")).fit()
    GRPOTrainer(cfg("b")).fit(stop_after=2)
    resumed = GRPOTrainer(cfg("b", "--resume", "true"))
    assert resumed.fit()["step"] == 3 and resumed.step == 3
    a = {r["step"]: r for r in map(json.loads, open(tmp_path / "a" / "metrics.jsonl"))}
    b = {r["step"]: r for r in map(json.loads, open(tmp_path / "b" / "metrics.jsonl"))}
    assert b[3]["reward"] == pytest.approx(a[3]["reward"]) and b[3]["loss"] == pytest.approx(a[3]["loss"])
    assert b[3]["kl"] == pytest.approx(a[3]["kl"], abs=1e-6) and b[3]["kl"] > 0
    assert full["rewards"][-1] == pytest.approx(a[3]["reward"])


# ------------------------------------------------------------------------------------------------ issue 12
def test_curriculum_weights_levels_at_the_frontier():
    """w_l = max(1 - p^G - (1 - p)^G, floor): the chance that a group of G holds a right and a wrong answer."""
    c = LevelCurriculum([1, 2, 3, 4], group_size=8, momentum=0.5, floor=0.05)
    assert c.weights() == [pytest.approx(1 - 2 * 0.5 ** 8)] * 4  # unknown levels count as p = 0.5
    c.update(1, 1.0)  # always solved
    c.update(2, 0.0)  # never solved
    c.update(3, 0.5)
    c.update(4, 0.9)
    w = c.weights()
    assert w[0] == w[1] == 0.05 and w[2] == pytest.approx(1 - 2 * 0.5 ** 8)
    assert w[3] == pytest.approx(1 - 0.9 ** 8 - 0.1 ** 8) and w[3] < w[2]
    c.update(4, 0.5)  # a moving average: 0.5 * 0.9 + 0.5 * 0.5
    assert c.acc[4] == pytest.approx(0.7)
    c2 = LevelCurriculum([1, 2, 3, 4], group_size=8)
    c2.load_state_dict(c.state_dict())
    assert c2.weights() == c.weights()


def test_curriculum_draws_where_groups_are_informative(model_dir, tmp_path):
    """After the estimates say level 1 is always solved and level 2 half the time, nearly all prompts are level 2."""
    trainer = GRPOTrainer(config(model_dir, tmp_path, "--levels", "1,2", "--curriculum", "true"),
                          sampler=lambda *a, **k: [])
    trainer.prompts.curriculum.update(1, 1.0)
    trainer.prompts.curriculum.update(2, 0.5)
    levels = [row["level"] for row in trainer.prompts.draw(400)]
    share = levels.count(2) / len(levels)
    assert 0.9 < share < 0.99, share  # expected 0.992 / (0.992 + 0.05) = 0.952


def test_dynamic_sampling_drops_and_counts_groups_with_equal_rewards(model_dir, tmp_path):
    """DAPO's dynamic sampling: a group whose completions all score the same is not trained on; more prompts are
    drawn until num_prompts informative groups are collected, and the dropped groups are counted."""
    calls = []
    tok_holder = {}

    def sampler(prompts, n, *a, **k):
        """Prompt i of the whole run (by call order) gets all-equal completions when i is odd, else mixed."""
        tok = tok_holder["tok"]
        good = tok.encode("1\n</think>\n\n\\boxed{1}", add_special_tokens=False) + [tok.eos_token_id]
        bad = tok.encode("so", add_special_tokens=False) + [tok.eos_token_id]
        out = []
        for _ in prompts:
            i = sum(calls)
            calls.append(1)
            out.append([Rollout(bad, False)] * n if i % 2 else [Rollout(good, False)] + [Rollout(bad, False)] * (n - 1))
        return out

    cfg = config(model_dir, tmp_path, "--reward", "format", "--num_prompts", "4", "--dynamic_sampling", "true",
                 "--max_sampling_rounds", "3", "--lr", "1e-3")
    trainer = GRPOTrainer(cfg, sampler=sampler)
    tok_holder["tok"] = trainer.tokenizer
    m = trainer.train_step()
    assert m["groups_trained"] == 4 and m["groups_dropped"] >= 4 and m["groups_sampled"] == len(calls)
    assert m["groups_sampled"] == m["groups_trained"] + m["groups_dropped"] + (m["groups_sampled"] - 8)
    assert m["sampling_rounds"] >= 2 and m["frac_reward_zero_std"] == pytest.approx(m["groups_dropped"] /
                                                                                     m["groups_sampled"])
    assert m["rewards/format"] == pytest.approx(0.25)  # only the mixed groups were trained on
    # without dynamic sampling the first num_prompts groups are trained on, all-equal ones included
    calls.clear()
    plain = GRPOTrainer(config(model_dir, tmp_path / "plain", "--reward", "format", "--num_prompts", "4"),
                        sampler=sampler)
    m = plain.train_step()
    assert m["groups_trained"] == 4 and m["groups_dropped"] == 0 and m["sampling_rounds"] == 1
    assert m["frac_reward_zero_std"] == 0.5


def test_rollouts_run_in_eval_mode_and_routing_counts_only_real_tokens(model_dir, tmp_path):
    """Router load statistics (auxiliary-loss-free balancing) see the training forward's real tokens only: not
    the rollouts (sampled in eval mode) and not the right-padding of the packed batch."""
    modes, seen = [], []
    trainer = None

    def sampler(prompts, n, *a, **k):
        modes.append(trainer.model.training)
        tok = trainer.tokenizer
        short = tok.encode("1", add_special_tokens=False) + [tok.eos_token_id]
        long = tok.encode("1+1=2\n2+2=4\n</think>\n\n\\boxed{2}", add_special_tokens=False) + [tok.eos_token_id]
        seen.extend(len(p) + len(c) for p in prompts for c in [short] * (n - 1) + [long])
        return [[Rollout(short, False)] * (n - 1) + [Rollout(long, False)] for _ in prompts]

    cfg = config(model_dir, tmp_path, "--reward", "format", "--num_prompts", "2", "--micro_batch_size", "64")
    trainer = GRPOTrainer(cfg, sampler=sampler)
    name, moe = next(iter(trainer.balancer.moes.items()))
    counted = []
    moe.register_forward_hook(lambda mod, i, o: counted.append(float(trainer.balancer.load[name].sum())))
    trainer.model.train()
    trainer.train_step()
    assert modes == [False] and trainer.model.training  # sampled in eval mode, back to train mode after
    # one training forward of 8 right-padded sequences: k choices per real token, none for the padding
    k = trainer.model.config.num_experts_per_tok
    assert len(counted) == 1 and counted[0] == k * sum(seen) and max(seen) * 8 > sum(seen)
