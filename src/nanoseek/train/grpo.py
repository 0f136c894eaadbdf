"""`nanoseek grpo`: reasoning RL with rule-based rewards (DeepSeekMath's GRPO, the DeepSeek-R1 recipe).

    nanoseek grpo --model runs/sft/model --task arithmetic --reward accuracy,format --reward-weights 1,0.2
    nanoseek grpo --model DIR --data prompts.jsonl --preset paper       # rows: prompt|messages + reward fields

One step: `num_prompts` prompts (a built-in task's train split, or the rows of a jsonl file in a seeded order), G =
`num_generations` completions each, sampled by the inference engine from the live policy (no reload); every reward
function scores each completion (the prompt's `<think>\\n` pre-fill is put back so the format reward sees the whole
answer); the weighted sum gives group-relative advantages; then `num_iterations` optimizer steps on the clipped
objective of `grpo_loss.py`, with a k3 KL to a frozen copy of the starting model when beta != 0. Per step
metrics.jsonl gets the mean reward per function, accuracy (the task's verifier), frac_reward_zero_std, completion
length and truncation, KL, clip fractions and entropy; checkpoints resume exactly (the prompts and sampling seeds of
step s depend only on the seed and s); the final policy is exported to run_dir/model with its tokenizer.

The prompts, their rendering, the sampler and the reward functions are in `rollouts.py`; the checkpoint/resume/
metrics loop is `loop.py`'s. A reward that raises is counted (`reward_errors`) and scores None; a completion whose every reward is None is
skipped (advantage 0, masked out of the loss). Rows missing a field a reward needs are an error naming the row.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable

import torch

from ..files import write_json
from ..rewards import resolve_reward
from . import distributed
from .balance import LoadBalancer
from .grpo_config import GRPOConfig
from .grpo_loss import grpo_loss, group_advantages
from .loop import TrainingError, TrainingLoop
from .optim import build_optimizer, lr_at
from .rollouts import EngineSampler, Prompts, Rewards, Rollout, render_prompt
from .trainer import autocast_dtype


# ------------------------------------------------------------------------------------------------ log-probabilities
def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, temperature: float,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(x_{t+1} | x_≤t) of logits / temperature, (B, L−1) float32, and the per-position entropy if asked."""
    logits = model(input_ids)[:, :-1].float() / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1) - logz
    ent = None
    if with_entropy:
        with torch.no_grad():
            p = torch.softmax(logits, dim=-1)
            ent = logz - (p * logits).sum(-1)
    return logp, ent


def pack(prompts: list[list[int]], completions: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids (B, L) and the mask (B, L−1) of positions that predict a completion
    token (causal attention: padding at the end changes nothing before it)."""
    L = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), L - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, len(p) - 1:len(p) + len(c) - 1] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------ the trainer
class GRPOTrainer(TrainingLoop):
    cfg: GRPOConfig
    label = "grpo"

    def __init__(self, cfg: GRPOConfig, model: torch.nn.Module | None = None, tokenizer: Any = None,
                 sampler: Callable[..., list[list[Rollout]]] | None = None, log: Callable[[str], None] = print):
        from ..checkpoint import load_pretrained
        from ..tokenizer import Tokenizer
        cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = distributed.pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model = model if model is not None else load_pretrained(cfg.model, dtype=torch.float32)
        super().__init__(cfg, model.to(self.device), log)
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer.from_pretrained(cfg.model)
        self.ref = None
        if cfg.beta != 0:  # frozen reference: the starting policy
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.prompts = Prompts(cfg)
        self.rewards = Rewards(cfg.reward_list(self.prompts.task), cfg.reward_weight_list(), log)
        # accuracy: the task's verifier; for a prompt file whose rows all have an `answer`, exact/numeric match
        self.verifier = resolve_reward(self.prompts.task.reward) if self.prompts.task else \
            (resolve_reward("accuracy") if all("answer" in r for r in self.prompts.rows) else None)
        self.rewards.check(self.prompts.peek())
        self.balancer = LoadBalancer(self.model, cfg.bias_update_speed, 0.0)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                         self.device.type)
        self.amp = autocast_dtype(cfg, self.device)  # type: ignore[arg-type]
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if sampler is None:
            longest = max(len(render_prompt(self.tokenizer, self.prompts.messages(r))[0])
                          for r in self.prompts.peek())
            max_len = min(self.model.config.max_position_embeddings,
                          2 * longest + cfg.max_completion_length + 64)
            sampler = EngineSampler(self.model, self.tokenizer, max_len,
                                    min(cfg.num_prompts * cfg.num_generations, 512))
        self.sampler = sampler
        self._summary: dict[str, Any] = {}
        self._rewards: list[float | None] = []

    # ------------------------------------------------------------------ rollouts and scoring
    def rollout(self, rows: list[dict[str, Any]], seed_base: int, greedy: bool = False, n: int | None = None
                ) -> tuple[list[list[int]], list[str], list[Rollout]]:
        """(prompt ids, pre-fills, rollouts), one entry per completion (prompt-major: G in a row per prompt).
        The model samples in eval mode: rollouts are not training forwards (no routing statistics)."""
        cfg = self.cfg
        n = n or cfg.num_generations
        rendered = [render_prompt(self.tokenizer, self.prompts.messages(r)) for r in rows]
        seeds = [hash((cfg.seed, seed_base, i)) & 0x7FFF_FFFF for i in range(len(rows))]
        was_training = self.model.training
        self.model.eval()
        try:
            groups = self.sampler([ids for ids, _ in rendered], n, cfg.max_completion_length,
                                  0.0 if greedy else cfg.temperature, cfg.top_p, cfg.top_k, seeds)
        finally:
            self.model.train(was_training)
        prompts, prefills, flat = [], [], []
        for (ids, prefill), group in zip(rendered, groups):
            for r in group:
                prompts.append(ids)
                prefills.append(prefill)
                flat.append(r)
        return prompts, prefills, flat

    def text(self, prefill: str, r: Rollout) -> str:
        return prefill + self.tokenizer.decode(r.token_ids, skip_special_tokens=True)

    @torch.no_grad()
    def evaluate(self, n: int | None = None) -> dict[str, Any] | None:
        """Held-out greedy accuracy on the task's test split: the same evaluation, on the same distinct problems, as
        `nanoseek eval` and the demo's stages (`evaluate.runner.evaluate`). None without a task."""
        n = self.cfg.eval_prompts if n is None else n
        if self.prompts.task is None or n <= 0:
            return None
        from ..evaluate.runner import evaluate
        was_training = self.model.training
        try:
            res = evaluate(self.model, [self.cfg.task], tokenizer=self.tokenizer, limit=n, levels=self.prompts.levels,
                           max_tokens=self.cfg.max_completion_length)
        finally:
            self.model.train(was_training)
        return res["results"][self.cfg.task]

    def evaluation(self) -> dict[str, Any]:
        """eval_accuracy, eval_ci95 and eval_examples for metrics.jsonl (empty without a held-out set, or with
        eval_prompts 0)."""
        res = self.evaluate()
        if res is None or "accuracy" not in res:
            return {}
        return {"eval_accuracy": res["accuracy"], "eval_ci95": res.get("ci95"), "eval_examples": res["examples"]}

    def _score(self, rows: list[dict[str, Any]], prefills: list[str], rolls: list[Rollout]):
        """(texts, per-function rewards (N, F) with NaN for None, weighted totals (N,), verifier scores (N,))."""
        G = self.cfg.num_generations
        texts = [self.text(p, r) for p, r in zip(prefills, rolls)]
        per_fn = torch.tensor([[float("nan") if v is None else v for v in
                                self.rewards.score(t, rows[i // G], len(r.token_ids))]
                               for i, (t, r) in enumerate(zip(texts, rolls))], dtype=torch.float32)
        total = (per_fn.nan_to_num(0.0) * torch.tensor(self.rewards.weights)).sum(dim=1)
        correct = torch.tensor([float(self.verifier(t, **rows[i // G]) or 0.0) if self.verifier else float("nan")
                                for i, t in enumerate(texts)])
        return texts, per_fn, total, correct

    def group_rewards(self, per_fn: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards with skipped completions, those whose every reward is None, replaced by their group's mean so that
        their advantage is ~0; the skipped mask). The same filled rewards decide which groups have zero spread."""
        G = self.cfg.num_generations
        skipped = per_fn.isnan().all(dim=1)
        grouped = total.masked_fill(skipped, float("nan")).view(-1, G)
        fill = grouped.nanmean(dim=1, keepdim=True).nan_to_num(0.0).expand_as(grouped)
        return torch.where(grouped.isnan(), fill, grouped).flatten(), skipped

    def sample_groups(self) -> dict[str, Any]:
        """Rollouts for one step: `num_prompts` groups of G. With dynamic sampling (DAPO), groups whose rewards are all
        equal are dropped (no advantage, no gradient) and more prompts are drawn, up to `max_sampling_rounds`
        rounds, until `num_prompts` informative groups are collected; the curriculum sees every group."""
        cfg, G = self.cfg, self.cfg.num_generations
        keep: dict[str, list[Any]] = {k: [] for k in ("rows", "prompts", "rolls", "texts", "per_fn", "total")}
        sampled = dropped = rounds = 0
        all_correct: list[torch.Tensor] = []
        all_zero: list[torch.Tensor] = []
        informative = 1.0  # fraction of informative groups so far (sizes the next draw)
        level_acc: dict[int, list[float]] = {}  # group accuracies of this step, per level
        while len(keep["rows"]) < cfg.num_prompts and rounds < cfg.max_sampling_rounds:
            need = cfg.num_prompts - len(keep["rows"])
            if rounds:
                need = min(int(need / max(informative, 0.25)) + 1, 4 * cfg.num_prompts)
            seed_base = self.prompts.cursor
            rows = self.prompts.draw(need)
            prompts, prefills, rolls = self.rollout(rows, seed_base)
            texts, per_fn, total, correct = self._score(rows, prefills, rolls)
            _, zero = group_advantages(self.group_rewards(per_fn, total)[0], G, cfg.scale_rewards)
            rounds += 1
            sampled += len(rows)
            all_correct.append(correct)
            all_zero.append(zero)
            informative = 1.0 - float(torch.cat(all_zero).float().mean())
            for g, row in enumerate(rows):
                if "level" in row and not correct.isnan().any():
                    level_acc.setdefault(row["level"], []).append(float(correct[g * G:(g + 1) * G].mean()))
                if (cfg.dynamic_sampling and bool(zero[g])) or len(keep["rows"]) >= cfg.num_prompts:
                    dropped += int(bool(zero[g]) and cfg.dynamic_sampling)
                    continue
                sl = slice(g * G, (g + 1) * G)
                keep["rows"].append(row)
                for k, v in (("prompts", prompts), ("rolls", rolls), ("texts", texts)):
                    keep[k] += v[sl]
                for k, v in (("per_fn", per_fn), ("total", total)):
                    keep[k].append(v[sl])
        if self.prompts.curriculum is not None:  # one update per level and step: the mean over its groups
            for lv, accs in level_acc.items():
                self.prompts.curriculum.update(lv, sum(accs) / len(accs))
        out = {k: keep[k] for k in ("rows", "prompts", "rolls", "texts")}
        for k in ("per_fn", "total"):
            out[k] = torch.cat(keep[k]) if keep[k] else torch.zeros((0, len(self.rewards.fns)) if k == "per_fn" else 0)
        out.update(groups_sampled=sampled, groups_dropped=dropped, sampling_rounds=rounds,
                   sampled_correct=torch.cat(all_correct), frac_zero_std=float(torch.cat(all_zero).float().mean()))
        return out

    # ------------------------------------------------------------------ one step
    def _forward(self, model: torch.nn.Module, ids: torch.Tensor, entropy: bool = False):
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast("cpu", enabled=False)
        with ctx:
            return token_logprobs(model, ids, self.cfg.temperature, entropy)

    def train_step(self) -> dict[str, Any]:
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.perf_counter()
        batch = self.sample_groups()
        t_roll = time.perf_counter() - t0
        rows, prompts, rolls, texts = batch["rows"], batch["prompts"], batch["rolls"], batch["texts"]
        per_fn, total = batch["per_fn"], batch["total"]
        m: dict[str, Any] = {"step": self.step + 1}
        sums: dict[str, float] = {}
        lr = lr_at(self.step, cfg.max_steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio)
        grad_norm = torch.tensor(0.0)
        if rows:
            filled, skipped = self.group_rewards(per_fn, total)  # skipped completions also leave the loss
            adv, _ = group_advantages(filled, G, cfg.scale_rewards)
            truncated = torch.tensor([r.truncated for r in rolls])
            keep = ~skipped & ~(truncated if cfg.mask_truncated_completions else torch.zeros_like(truncated))

            ids, mask = pack(prompts, [r.token_ids for r in rolls], self.pad)
            lengths = torch.tensor([len(p) + len(r.token_ids) for p, r in zip(prompts, rolls)])
            real = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # not right-padding
            mask = mask * keep[:, None].float()
            ids, mask, adv, real = ids.to(self.device), mask.to(self.device), adv.to(self.device), real.to(self.device)
            n_seq, n_tok = ids.shape[0], float(mask.sum())
            chunks = [slice(i, i + cfg.micro_batch_size) for i in range(0, n_seq, cfg.micro_batch_size)]
            with torch.no_grad():
                old = [self._forward(self.model, ids[c])[0] for c in chunks] if cfg.num_iterations > 1 else None
                ref = [self._forward(self.ref, ids[c])[0] for c in chunks] if self.ref is not None else None
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            for it in range(cfg.num_iterations):
                for k, c in enumerate(chunks):
                    self.balancer.begin_forward(ids[c].shape[0], token_mask=real[c])
                    logp, ent = self._forward(self.model, ids[c], entropy=it == 0)
                    loss, st = grpo_loss(logp, adv[c], mask[c], old_logp=None if old is None else old[k],
                                         ref_logp=None if ref is None else ref[k], beta=cfg.beta,
                                         epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                                         max_completion_length=cfg.max_completion_length, num_sequences=n_seq,
                                         num_tokens=n_tok)
                    loss.backward()
                    share = float(mask[c].sum()) / max(n_tok, 1.0) / cfg.num_iterations  # token-weighted means
                    vals = {"loss": float(loss.detach()) / cfg.num_iterations,
                            "clip_ratio": float(st.clip_region) * share, "clip_low": float(st.clip_low) * share,
                            "clip_high": float(st.clip_high) * share}
                    if st.kl is not None:
                        vals["kl"] = float(st.kl) * share
                    if ent is not None:
                        vals["entropy"] = float((ent * mask[c]).sum()) / max(n_tok, 1.0)
                    for key, v in vals.items():
                        sums[key] = sums.get(key, 0.0) + v
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if not torch.isfinite(grad_norm):
                    raise TrainingError(f"non-finite gradient norm at GRPO step {self.step}; the last checkpoint in "
                                        f"{self.ckpt_dir} is intact (lower --lr)")
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            load = self.balancer.step()
            if load:
                m["load"] = {k: round(v["max_over_mean"], 4) for k, v in load.items()}
            lengths_c = torch.tensor([len(r.token_ids) for r in rolls], dtype=torch.float32)
            valid = ~skipped
            m.update(reward=float(total[valid].mean()) if valid.any() else None,
                     reward_std=float(filled.view(-1, G).std(dim=1).mean()) if G > 1 else 0.0,
                     completion_length=float(lengths_c.mean()), completion_length_max=float(lengths_c.max()),
                     truncated_frac=float(truncated.float().mean()), skipped=int(skipped.sum()))
            for j, name in enumerate(self.rewards.names):
                col = per_fn[:, j]
                m[f"rewards/{name}"] = float(col.nanmean()) if not col.isnan().all() else None
            m["_sample"] = {"prompt": self.prompts.messages(rows[0])[-1]["content"], "completion": texts[0],
                            "reward": float(total[0])}
        else:  # every sampled group was all-equal: nothing to learn from this step
            m.update(reward=None, _sample=None)
        self.step += 1
        sampled_correct = batch["sampled_correct"]
        if self.verifier is not None:
            m["accuracy"] = float(sampled_correct.mean())  # over every sampled completion, dropped groups too
        m.update(frac_reward_zero_std=batch["frac_zero_std"], groups_sampled=batch["groups_sampled"],
                 groups_dropped=batch["groups_dropped"], groups_trained=len(rows),
                 sampling_rounds=batch["sampling_rounds"], reward_errors=sum(self.rewards.errors), **sums, lr=lr,
                 grad_norm=float(grad_norm), rollout_s=t_roll, step_s=time.perf_counter() - t0)
        if self.prompts.curriculum is not None:
            m["curriculum"] = {str(k): None if v is None else round(v, 4)
                               for k, v in self.prompts.curriculum.acc.items()}
        return m

    # ------------------------------------------------------------------ the loop's hooks
    def run_step(self) -> dict[str, Any]:
        return self.train_step()

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "prompts": self.prompts.state_dict(), "config": self.cfg.to_dict()}

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "prompts" in ckpt:
            self.prompts.load_state_dict(ckpt["prompts"])

    def begin(self) -> None:
        """A fresh run measures the held-out accuracy it starts from (the row of step 0)."""
        self._summary, self._rewards = {}, []
        if self.step == 0 and self.cfg.eval_prompts > 0:
            ev = self.evaluation()
            self._summary["eval_accuracy_start"] = ev.get("eval_accuracy")
            if ev:
                self.write_row({"step": 0, **ev})

    def after_step(self, row: dict[str, Any]) -> None:
        sample = row.pop("_sample")
        if self.step % self.cfg.log_every == 0 and sample is not None:
            self.write_row({"step": self.step, **sample}, os.path.join(self.cfg.run_dir, "samples.jsonl"))
        self._rewards.append(row["reward"])
        self._summary["eval_accuracy"] = row.get("eval_accuracy", self._summary.get("eval_accuracy"))

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        post = {"reward": f"{row['reward']:.3f}" if row["reward"] is not None else "-"}
        if "accuracy" in row:
            post["acc"] = f"{row['accuracy']:.2f}"
        return post

    def summary(self) -> dict[str, Any]:
        return {**self._summary, "step": self.step, "rewards": self._rewards}


def run(cfg: GRPOConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    write_json(os.path.join(cfg.run_dir, "grpo_config.json"), cfg.to_dict())
    trainer = GRPOTrainer(cfg, log=log)
    log(f"grpo: {cfg.model}, {'task ' + cfg.task if cfg.task else cfg.data}; rewards "
        f"{', '.join(f'{n}×{w:g}' for n, w in zip(trainer.rewards.names, trainer.rewards.weights))}; "
        f"{cfg.num_prompts} prompts × G={cfg.num_generations}, loss {cfg.loss_type}, beta {cfg.beta}, "
        f"scale_rewards {cfg.scale_rewards}, num_iterations {cfg.num_iterations}")
    summary = trainer.fit()
    if summary.get("eval_accuracy_start") is not None:
        log(f"held-out pass@1 (greedy, {cfg.eval_prompts} test prompts): {summary['eval_accuracy_start']:.3f} -> "
            f"{summary['eval_accuracy']:.3f}")
    if cfg.export:
        summary["model_dir"] = trainer.export(tokenizer=trainer.tokenizer)
        log(f"model exported to {summary['model_dir']}")
    return summary
