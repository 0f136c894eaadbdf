"""nanoseek as a model of EleutherAI's lm-evaluation-harness (the optional extra `pip install nanoseek[lm_eval]`).

    python -m nanoseek.lm_eval_model --model nanoseek --model_args pretrained=DIR --tasks hellaswag
    python -m nanoseek.lm_eval_model --model nanoseek --model_args pretrained=DIR,dtype=bf16 \\
        --include_path tests/fixtures/lm_eval_task --tasks nanoseek_arith_mc,nanoseek_arith_gen

`python -m nanoseek.lm_eval_model` is the `lm_eval` command with this module imported first: lm-eval 0.4.13 finds
models only in its own registry (no entry-point discovery), and importing this module registers the class as
`nanoseek` with lm-eval's documented `@register_model`. From Python, pass an instance instead:

    import lm_eval
    from nanoseek.lm_eval_model import NanoseekLM
    lm_eval.simple_evaluate(model=NanoseekLM(pretrained=DIR), tasks=["hellaswag"])

The three request types:
* loglikelihood: log p(continuation | context) and whether it is the greedy continuation, by a forward pass over
  the model (nanoseek.evaluate.scoring); contexts start with BOS, as training documents do.
* loglikelihood_rolling: a document's log-likelihood, every token scored once in windows of `max_length`.
* generate_until: the inference engine (nanoseek.LLM, paged latent cache, continuous batching), greedy unless the
  task asks for sampling, stopped at the task's `until` strings.

model_args: pretrained (model directory, required), dtype (fp32/bf16/fp16; default the checkpoint's), device
(cpu/cuda), batch_size (forward batch for loglikelihood), max_length (context; default the model's, at most
4096), max_gen_toks (default 256), seed, speculative (MTP draft tokens per step for generation, default 0).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise ImportError("nanoseek.lm_eval_model needs lm-eval: pip install 'nanoseek[lm_eval]'") from e
from tqdm import tqdm

from .evaluate.accuracy import sample
from .evaluate.scoring import continuation_logprobs, rolling_requests


def _int_arg(name: str, value: Any, default: int, minimum: int = 1) -> int:
    """model_args arrive as strings ("8", "auto:4"); "auto" means the default."""
    if value is None or value == "" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"nanoseek lm_eval model: {name} must be an integer (got {value!r})") from None
    if v < minimum:
        raise ValueError(f"nanoseek lm_eval model: {name} must be >= {minimum} (got {value!r})")
    return v


@register_model("nanoseek")
class NanoseekLM(TemplateLM):
    def __init__(self, pretrained: str | None = None, dtype: str | None = None, device: str | None = None,
                 batch_size: int | str | None = 8, max_length: int | str | None = None,
                 max_gen_toks: int | str = 256, seed: int | str = 0, speculative: int | str = 0,
                 **kwargs: Any):
        super().__init__()
        if not pretrained:
            raise ValueError("nanoseek lm_eval model: model_args needs pretrained=DIR (a nanoseek/HF model directory)")
        path = os.fspath(pretrained)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise FileNotFoundError(f"{path}: no tokenizer.json (lm-eval sends text)")
        from .checkpoint import load_pretrained
        from .tokenizer import Tokenizer
        import torch
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval passes device="cuda" unless told otherwise; on a machine without CUDA run on the CPU
            warnings.warn(f"nanoseek lm_eval model: device {device!r} is not available, using the CPU", stacklevel=2)
            device = "cpu"
        self.speculative = _int_arg("speculative", speculative, 0, minimum=0)
        self.model = load_pretrained(path, dtype=dtype, device=device, mtp=self.speculative > 0).eval()
        self.tokenizer = Tokenizer.from_pretrained(path)
        self.path = path
        self._device = next(self.model.parameters()).device
        self.batch_size = _int_arg("batch_size", batch_size, 8)
        limit = min(self.model.config.max_position_embeddings, 4096)
        self._max_length = min(_int_arg("max_length", max_length, limit), self.model.config.max_position_embeddings)
        self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, 256)
        self.seed = _int_arg("seed", seed, 0, minimum=0)
        self._llm = None
        self.unused_args = {k: v for k, v in kwargs.items() if v is not None}  # e.g. lm-eval's max_batch_size

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Text to ids; with add_special_tokens None or True the ids start with BOS (once, even when the text
        already begins with the BOS token, as a rendered chat template does)."""
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if add_special_tokens is not False and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return self.tokenizer.get_chat_template(chat_template if isinstance(chat_template, str) else None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt, tokenize=False)

    # ------------------------------------------------------------------ loglikelihood
    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        with tqdm(total=len(requests), desc="nanoseek loglikelihood", disable=disable_tqdm or self.rank != 0) as bar:
            out = continuation_logprobs(self.model, [(ctx, cont) for _, ctx, cont in requests],
                                        max_length=self.max_length, batch_size=self.batch_size, progress=bar.update)
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            w = rolling_requests(self.tok_encode(text, add_special_tokens=False), self.prefix_token_id,
                                 self.max_length)
            windows += w
            owner += [i] * len(w)
        totals = [0.0] * len(requests)
        if windows:
            with tqdm(total=len(windows), desc="nanoseek loglikelihood_rolling",
                      disable=disable_tqdm or self.rank != 0) as bar:
                scores = continuation_logprobs(self.model, windows, max_length=self.max_length,
                                               batch_size=self.batch_size, progress=bar.update)
            for i, (s, _) in zip(owner, scores):
                totals[i] += s
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    @property
    def llm(self) -> Any:
        if self._llm is None:
            from .infer import LLM
            self._llm = LLM(self.model, self.tokenizer, max_model_len=self.max_length, seed=self.seed,
                            speculative=self.speculative or None)
        return self._llm

    def _sampling_params(self, gen_kwargs: dict[str, Any]) -> Any:
        from .infer import SamplingParams
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_tokens = _int_arg("max_gen_toks", kw.pop("max_gen_toks", None), self.max_gen_toks)
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0))
        if not do_sample:
            temperature = 0.0
        return SamplingParams(temperature=temperature, top_p=float(kw.pop("top_p", 1.0)),
                              top_k=int(kw.pop("top_k", 0) or 0), max_tokens=max_tokens, stop=until or None)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        params, prompts = [], []
        room = self.llm.engine.max_model_len
        for req in requests:
            context, gen_kwargs = req.args
            sp = self._sampling_params(gen_kwargs)
            ids = self.tok_encode(context)
            keep = max(1, room - sp.max_tokens - 1)  # left-truncate long contexts, as lm-eval's HF model does
            prompts.append({"prompt": context, "prompt_token_ids": ids[-keep:]})
            params.append(sp)
        texts = [c[0] for c in sample(self.llm, prompts, params, seed=self.seed,
                                      progress=not disable_tqdm and self.rank == 0, desc="nanoseek generate_until")]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.path, "model_dtype": str(next(self.model.parameters()).dtype),
                "model_num_parameters": sum(p.numel() for p in self.model.parameters())}


def main(argv: list[str] | None = None) -> None:
    """The `lm_eval` command line with the `nanoseek` model registered."""
    from lm_eval.__main__ import cli_evaluate
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
