"""nanoseek eval: pass@k against hand values and brute force, majority vote, answer extraction on messy outputs,
log-likelihood windows against a full forward, bits per byte, and the command end to end on the tiny preset."""
from __future__ import annotations

import itertools
import json
import math
import random
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nanoseek import ModelConfig, Transformer, save_pretrained, train_tokenizer
from nanoseek.cli import main
from nanoseek.evaluate import (AnswerMatcher, bits_per_byte, continuation_logprobs, evaluate, mean_pass_at_k,
                               parse_task, pass_at_k, rolling_requests, score_documents)
from nanoseek.evaluate.accuracy import Problem, score_problems


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from nanoseek.data import task_documents
    docs = list(itertools.islice(task_documents(per_task=60), 150)) + ["The answer is 72. Café 東京 🙂"] * 3
    return train_tokenizer(iter(docs), 512, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny").replace(vocab_size=512)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tok):
    out = tmp_path_factory.mktemp("m") / "model"
    save_pretrained(model, out, tokenizer=tok.name_or_path)
    return out


# ------------------------------------------------------------------------------------------------ pass@k
def test_pass_at_k_hand_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(3, 1, 3) == 1.0  # n - c < k: every draw of 3 holds the correct one
    # huge binomials stay finite and exact enough: C(199,100)/C(200,100) = 1/2
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(1000, 3, 1) == pytest.approx(0.003, abs=1e-12)
    assert mean_pass_at_k([(4, 0), (4, 2), (4, 4)], 2) == pytest.approx((0 + 5 / 6 + 1) / 3)
    for bad in [(4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_pass_at_k_equals_brute_force_over_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_confidence_intervals_of_known_binomial_cases():
    from nanoseek.evaluate.metrics import accuracy_ci95, mean_interval, wilson_interval
    # Wilson (1927) / Newcombe (1998) table values: 81 of 263 -> (0.2553, 0.3662); 0 of 10 -> (0, 0.2775)
    lo, hi = wilson_interval(81, 263)
    assert (lo, hi) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    # coverage: for p = 0.7 and n = 500 the interval holds the true p in about 95% of draws
    rng = random.Random(0)
    hits = sum(lo <= 0.7 <= hi for lo, hi in (wilson_interval(sum(rng.random() < 0.7 for _ in range(500)), 500)
                                              for _ in range(400)))
    assert 0.92 <= hits / 400 <= 0.98
    # 500 problems at 0.75: half-width about 0.038 (why the demo evaluates hundreds of problems, not 50)
    lo, hi = accuracy_ci95([(1, 1)] * 375 + [(1, 0)] * 125)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.75 * 0.25 / 500), abs=2e-3)
    # several samples per problem: the normal interval of the per-problem fractions
    assert accuracy_ci95([(4, 1), (4, 3)]) == mean_interval([0.25, 0.75])
    half = 1.96 * math.sqrt(0.125) / math.sqrt(2)  # sample sd sqrt(0.125), n = 2
    assert mean_interval([0.25, 0.75]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# ------------------------------------------------------------------------------------------------ answers
def test_answer_extraction_on_messy_outputs():
    m = AnswerMatcher()
    gsm_gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,234"
    assert m.score("blah blah so the answer is 1234.", gsm_gold) == 1.0
    assert m.score("#### 1234\n\nwait, recheck\n#### 1235", gsm_gold) == 0.0  # the last answer counts
    # an answer inside the reasoning does not count; the boxed one after it does
    assert m.score("<think>\n#### 5\n</think>\n\n\\boxed{7}", "7") == 1.0
    assert m.score("<think>\nthe answer is 7, I think... still thinking", "7") == 0.0  # unfinished thinking
    assert m.score("\\boxed{0.50}", "1/2") == 1.0 and m.score("\\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert m.score("\\boxed{ Paris }", "paris") == 1.0
    assert m.score("no answer here 42", "42") == 0.0  # a bare number is not a final answer
    assert m.score("anything", None) is None and m.score("anything", "  ") is None
    # chat messages: reasoning_content is put back in a think block, so only `content` answers
    assert m.score({"role": "assistant", "reasoning_content": "\\boxed{3}", "content": "\\boxed{4}"}, "4") == 1.0
    custom = AnswerMatcher(r"ANSWER:\s*(-?\d+)")
    assert custom.score("ANSWER: 3 ... corrected ANSWER: 12 done", "#### 12") == 1.0
    assert custom.extract("ANSWER 12") is None
    assert AnswerMatcher(r"\d+").extract("a 1 b 22") == "22"  # no group: the whole last match
    with pytest.raises(ValueError, match="answer_pattern"):
        AnswerMatcher("(unclosed")


def _problems(golds):
    return [Problem(str(i), f"q{i}", g) for i, g in enumerate(golds)]


def test_accuracy_pass_at_k_and_majority_vote_on_scripted_samples():
    m = AnswerMatcher()
    probs = _problems(["1", "2", "3", "4"])
    comps = [["\\boxed{9}"] * 4,  # never right
             ["\\boxed{5}", "\\boxed{5}", "\\boxed{2}", "\\boxed{6}"],  # 1/4 right, majority wrong
             ["\\boxed{3}", "nothing", "\\boxed{3.0}", "\\boxed{8}"],  # 2/4 right, majority (3 == 3.0) right
             ["\\boxed{4}"] * 4]
    prompts = [{"prompt": p.question} for p in probs]
    res = score_problems(probs, prompts, comps, lambda c, p: m.score(c, p.gold), m.extract, [1, 2, 4], chat=False,
                         log_samples=True)
    assert res["examples"] == 4 and res["samples_per_example"] == 4 and res["unscorable"] == 0
    assert res["accuracy"] == pytest.approx((0 + 0.25 + 0.5 + 1) / 4)
    assert res["pass@1"] == pytest.approx(res["accuracy"])
    assert res["ci95"][0] < res["accuracy"] < res["ci95"][1] and "by_level" not in res
    assert res["pass@2"] == pytest.approx((0 + pass_at_k(4, 1, 2) + pass_at_k(4, 2, 2) + 1) / 4)
    assert res["pass@4"] == pytest.approx(3 / 4)
    assert res["maj@4"] == pytest.approx(2 / 4)
    # maj@2 votes over the first two samples: [5, 5] wrong, [3, no answer] right, [4, 4] right
    assert res["maj@2"] == pytest.approx(2 / 4)
    assert "maj@1" not in res and res["samples"][2]["answers"] == ["3", None, "3.0", "8"]
    # an unparseable gold is left out and counted
    res = score_problems(_problems([None, "1"]), prompts[:2], [["\\boxed{1}"]] * 2,
                         lambda c, p: m.score(c, p.gold), m.extract, [1], chat=False)
    assert res["unscorable"] == 1 and res["examples"] == 1 and res["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------------ log-likelihood
def test_rolling_windows_predict_every_token_once_with_the_true_context():
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(3, 100) for _ in range(rng.randrange(1, 60))]
        max_len = rng.randrange(1, 20)
        stride = rng.randrange(1, max_len + 1)
        seq = [0, *ids]
        windows = rolling_requests(ids, 0, max_len, stride)
        assert [t for _, cont in windows for t in cont] == ids
        at = 1
        for ctx, cont in windows:
            assert seq[at - len(ctx):at] == ctx and len(ctx) + len(cont) <= max_len + 1
            assert len(cont) <= stride
            # full context unless the document start is nearer
            assert len(ctx) + len(cont) == min(max_len + 1, at + len(cont))
            at += len(cont)
    with pytest.raises(ValueError, match="stride"):
        rolling_requests([1, 2], 0, 4, 5)


def _direct_logprob(model, ids, n_cont):
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])).float()[0], -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(len(ids) - n_cont, len(ids))))


def test_continuation_logprobs_match_a_full_forward_and_ignore_batching(model):
    g = torch.Generator().manual_seed(1)
    reqs = [(torch.randint(3, 512, (a,), generator=g).tolist(), torch.randint(3, 512, (b,), generator=g).tolist())
            for a, b in [(1, 5), (7, 3), (20, 12), (2, 1), (15, 15)]]
    one = continuation_logprobs(model, reqs, max_length=64, batch_size=1)
    many = continuation_logprobs(model, reqs, max_length=64, batch_size=3)
    for (ctx, cont), (s1, _), (s3, _) in zip(reqs, one, many):
        assert s1 == pytest.approx(_direct_logprob(model, ctx + cont, len(cont)), abs=1e-4)
        assert s3 == pytest.approx(s1, abs=1e-4)  # right padding of shorter rows changes nothing
    # left truncation to max_length: the same as scoring the last max_length + 1 tokens directly
    ctx, cont = reqs[2]
    (s, _), = continuation_logprobs(model, [(ctx, cont)], max_length=16)
    assert s == pytest.approx(_direct_logprob(model, (ctx + cont)[-17:], len(cont)), abs=1e-4)
    # is_greedy: true exactly for the argmax continuation
    ctx = reqs[1][0]
    greedy = []
    with torch.no_grad():
        for _ in range(4):
            greedy.append(int(model(torch.tensor([ctx + greedy]))[0, -1].argmax()))
    (_, g1), (_, g2) = continuation_logprobs(model, [(ctx, greedy), (ctx, greedy[:-1] + [(greedy[-1] + 1) % 512])],
                                             max_length=64)
    assert g1 and not g2
    with pytest.raises(ValueError, match="empty continuation"):
        continuation_logprobs(model, [([1], [])], max_length=8)


def test_perplexity_and_bits_per_byte_of_documents(model, tok):
    docs = ["What is 47+85?\n<think>\n7+5=12, carry 1\n</think>\n\n\\boxed{132}", "Café 東京 🙂 the answer is 72."]
    res = score_documents(model, tok, docs, max_length=64)
    nll = 0.0
    for d in docs:
        ids = [tok.bos_token_id, *tok.encode(d, add_special_tokens=False)]
        nll -= _direct_logprob(model, ids, len(ids) - 1)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert res["bytes"] == n_bytes and res["documents"] == 2
    assert res["nll"] == pytest.approx(nll, rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(bits_per_byte(res["nll"], n_bytes))
    assert res["perplexity"] == pytest.approx(math.exp(nll / res["tokens"]), rel=1e-5)
    # short windows with overlap: every token is still scored once
    short = score_documents(model, tok, docs, max_length=8, stride=4, batch_size=3)
    assert short["tokens"] == res["tokens"] and math.isfinite(short["nll"]) and short["nll"] != res["nll"]


# ------------------------------------------------------------------------------------------------ end to end
class ScriptedLLM:
    """The engine's add_request/step/abort_request, answering arithmetic prompts right (R1 chat format)."""

    def __init__(self, tok, wrong_every: int = 0):
        self.tok, self.queue, self.wrong_every, self.aborted = tok, [], wrong_every, []

    def add_request(self, prompt, params):
        assert params.output_kind == "final_only" and params.seed is not None
        self.queue.append((str(len(self.queue)), prompt, params))
        return self.queue[-1][0]

    def abort_request(self, ids):
        self.aborted += list(ids)

    def step(self):
        outs = []
        for rid, prompt, params in self.queue:
            expr = re.search(r"What is ([\d+\-*]+)\?", prompt["prompt"]).group(1)
            value = eval(expr)  # noqa: S307 - the test's own arithmetic prompts
            texts = []
            for i in range(params.n):
                ans = value + 1 if self.wrong_every and i % self.wrong_every == 0 else value
                texts.append(f"{expr}={ans}\n</think>\n\n\\boxed{{{ans}}}")
            outs.append(SimpleNamespace(request_id=rid, finished=True,
                                        outputs=[SimpleNamespace(text=t) for t in texts]))
        self.queue = []
        return outs


def test_evaluate_scores_scripted_generations(model, tok, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"What is {a}+{b}?", "answer": f"work\n#### {a + b}"})
                            for a, b in [(1, 2), (30, 12), (7, 7)]) + "\n")
    rep = evaluate(model, ["arithmetic", str(qa)], tokenizer=tok, llm=ScriptedLLM(tok, wrong_every=2), limit=5,
                   levels=[1, 2], n=4, k=[1, 2, 4])
    for name, count in (("arithmetic", 5), (str(qa), 3)):
        r = rep["results"][name]
        assert r["type"] == "accuracy" and r["examples"] == count and r["samples_per_example"] == 4
        assert r["accuracy"] == pytest.approx(0.5)  # samples 0 and 2 are off by one
        assert r["pass@2"] == pytest.approx(pass_at_k(4, 2, 2)) and r["pass@4"] == 1.0
        assert r["maj@4"] == 0.0  # a tie (2 wrong, 2 right) goes to the first answer seen: the wrong one
    assert rep["settings"]["chat"] is True and rep["settings"]["temperature"] == 0.6
    rep = evaluate(model, ["arithmetic"], tokenizer=tok, llm=ScriptedLLM(tok), limit=3)
    assert rep["results"]["arithmetic"]["accuracy"] == 1.0 and rep["settings"]["temperature"] == 0.0


def test_task_kinds_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "t.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "q.jsonl").write_text('\n{"question": "1+1?", "answer": "2"}\n')
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n')
    assert parse_task(str(tmp_path / "a.txt")).kind == "ppl"
    assert parse_task(str(tmp_path / "t.jsonl")).kind == "ppl"
    assert parse_task(str(tmp_path / "q.jsonl")).kind == "qa"
    assert parse_task(f"ppl:{tmp_path / 'q.jsonl'}").kind == "ppl"
    assert parse_task("countdown").kind == "task"
    with pytest.raises(ValueError, match="neither a `text` document"):
        parse_task(str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="not a file and not a built-in task"):
        parse_task("no-such-task")


def test_eval_command_writes_json_and_a_markdown_table(model, tok, model_dir, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("What is 3+4?\n<think>\n3+4=7\n</think>\n\\boxed{7}\n\nCafé 東京: the answer is 72.\n\nthird")
    out = tmp_path / "res" / "results.json"
    rc = main(["eval", str(model_dir), "--task", "arithmetic", "--task", str(text), "--limit", "2",
               "--max-tokens", "4", "--n", "2", "--k", "1,2", "--out", str(out), "--no-progress", "--dtype", "fp32"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| arithmetic | pass@2 |" in stdout and f"| {text} | bits_per_byte |" in stdout
    rep = json.loads(out.read_text())
    ar, pp = rep["results"]["arithmetic"], rep["results"][str(text)]
    assert ar["examples"] == 2 and ar["samples_per_example"] == 2 and 0 <= ar["accuracy"] <= 1
    direct = score_documents(model, tok, ["What is 3+4?\n<think>\n3+4=7\n</think>\n\\boxed{7}",
                                          "Café 東京: the answer is 72."], max_length=rep["settings"]["max_length"])
    assert pp["documents"] == 2 and pp["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-5)
    # bad input: one line naming the problem, exit status 2
    assert main(["eval", str(model_dir), "--task", "nope", "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", str(model_dir), "--task", "arithmetic", "--k", "4", "--no-progress"]) == 2
    assert "k: every k" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", "arithmetic"]) == 2
    assert "not a model directory" in capsys.readouterr().err
