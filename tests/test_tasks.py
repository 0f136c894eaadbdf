"""Built-in tasks: determinism, verifiers against worked solutions, countdown solvability, split disjointness."""
from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from nanoseek import tasks
from nanoseek.rewards import evaluate_expression, extract_answer, format_reward

ALL = [(name, level) for name in tasks.names() for level in range(1, tasks.get(name).num_levels + 1)]
RESERVED = {"prompt", "answer", "task", "level", "split", "id"}


def test_registry():
    assert set(tasks.names()) >= {"arithmetic", "countdown", "linear"}
    assert tasks.get("arithmetic").name == "arithmetic"
    assert isinstance(tasks.get("nanoseek.tasks.countdown:CountdownTask"), tasks.CountdownTask)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tasks.get("nope")
    with pytest.raises(ValueError, match="not a nanoseek.tasks.Task"):
        tasks.get("fractions:Fraction")
    with pytest.raises(ValueError, match="level must be in 1..10"):
        tasks.get("arithmetic").examples(1, level=11)
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.get("arithmetic").examples(1, split="validation")


@pytest.mark.parametrize("name", tasks.names())
def test_deterministic_and_seed_dependent(name):
    task = tasks.get(name)
    a = task.examples(50, level=[1, 2, 3], seed=7)
    assert a == tasks.get(name).examples(50, level=[1, 2, 3], seed=7)
    assert a != task.examples(50, level=[1, 2, 3], seed=8)
    json.dumps(a)  # JSON-serialisable rows, ready for a .jsonl file
    assert {e["level"] for e in a} == {1, 2, 3}


@pytest.mark.parametrize("name,level", ALL)
def test_worked_solutions_verify(name, level):
    task = tasks.get(name)
    rng = random.Random(0)
    problem = next(p for p in (task.sample(rng, level) for _ in range(10_000)) if p is not None)
    assert not RESERVED & set(problem)  # a problem field would shadow an example field
    for split in ("train", "test"):
        for ex in task.examples(40, split=split, level=level, seed=3):
            assert ex["split"] == split and ex["task"] == name and ex["level"] == level
            sol = task.solution(ex)
            assert sol.startswith("<think>\n") and extract_answer(sol) == ex["answer"]
            assert task.score(sol, ex) == 1.0, (ex, sol)
            assert format_reward(sol) == 1.0
            assert len(task.document(ex)) < 400  # a tiny model's 256-512 token context
            msgs = task.sft_messages(ex)
            assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == sol
            assert task.score(task.sft_messages(ex, reasoning_content=True)[1], ex) == 1.0
            assert task.messages(ex) == [{"role": "user", "content": ex["prompt"]}]


@pytest.mark.parametrize("name", tasks.names())
def test_wrong_answers_rejected(name):
    task = tasks.get(name)
    for ex in task.examples(100, level=[1, task.num_levels], seed=11):
        if name == "countdown":
            wrong = f"{ex['answer']}+1"  # off by one, and uses a number that may not be available
        else:
            wrong = str(Fraction(ex["answer"]) + 1)
        assert task.score(f"<think>\nx\n</think>\n\n\\boxed{{{wrong}}}", ex) == 0.0
        assert task.score(ex["prompt"], ex) == 0.0  # no answer at all


def test_arithmetic_answers_are_exact():
    task = tasks.get("arithmetic")
    for ex in task.examples(300, level=list(range(1, 11)), seed=0):
        expr = task.expression(ex)
        assert int(ex["answer"]) == eval(expr, {"__builtins__": {}})  # trusted: our own generated text
        assert ex["prompt"] == f"What is {expr}?"


def test_countdown_instances_are_solvable():
    task = tasks.get("countdown")
    for level in range(1, task.num_levels + 1):
        spec = task.levels[level - 1]
        for ex in task.examples(200, level=level, seed=level):
            value, used = evaluate_expression(ex["solution"])
            assert value == ex["target"] and sorted(used) == sorted(ex["nums"])
            assert len(ex["nums"]) == spec.count and 2 <= ex["target"] <= spec.max_target
            assert all(1 <= n <= spec.max_number for n in ex["nums"])


def test_linear_fraction_answers_accept_other_spellings():
    task = tasks.get("linear")
    ex = next(e for e in task.examples(50, level=6, seed=0) if "/" in e["answer"])
    num, den = ex["answer"].split("/")
    for spelling in (f"\\frac{{{num}}}{{{den}}}", f"x={ex['answer']}"):
        assert task.score(f"<think>\nx\n</think>\n\n\\boxed{{{spelling}}}", ex) == 1.0


@pytest.mark.parametrize("name", tasks.names())
def test_splits_never_overlap(name):
    task = tasks.get(name)
    levels = list(range(1, task.num_levels + 1))
    train = [e for seed in range(3) for e in task.examples(1500, split="train", level=levels, seed=seed)]
    test = [e for seed in range(3) for e in task.examples(300, split="test", level=levels, seed=seed)]
    train_keys, test_keys = {task.key(e) for e in train}, {task.key(e) for e in test}
    assert not train_keys & test_keys
    assert all(task.split_of(e) == "train" for e in train) and all(task.split_of(e) == "test" for e in test)
    assert len(train_keys) > 1000 and len(test_keys) > 200  # the check above compared real, varied sets
    # ids are per problem: the same problem always gets the same id, different problems different ids
    assert len({e["id"] for e in train}) == len(train_keys)


def test_small_level_split_is_exhaustive_and_disjoint():
    # one-digit + and -: a space of ~150 problems, so every one of them is drawn many times over
    task = tasks.get("arithmetic")
    train = {task.key(e) for e in task.examples(3000, split="train", level=1, seed=0)}
    test = {task.key(e) for e in task.examples(300, split="test", level=1, seed=0)}
    assert train and test and not train & test
    with pytest.raises(ValueError, match="problem space is too small"):
        task.examples(len(test) + 1, split="test", level=1, unique=True)
    assert len(task.examples(len(test), split="test", level=1, unique=True)) == len(test)


def test_instruction_and_documents():
    task = tasks.get("countdown")
    ex = task.examples(1, instruction=True)[0]
    assert ex["prompt"].endswith("Put the final equation in \\boxed{}.")
    doc = task.document(ex)
    assert doc.startswith(ex["prompt"] + "\n<think>\n") and doc.endswith("}\n")
