"""Rewards and answer extraction: the convention, the last-answer rule, hostile completions, resolution."""
from __future__ import annotations

import threading

import pytest

from nanoseek import rewards
from nanoseek.rewards import (
    REWARDS, accuracy_reward, answer_region, completion_text, countdown_reward, evaluate_expression, extract_answer,
    format_response, format_reward, length_penalty, math_reward, parse_number, required_fields, resolve_reward,
)


def r(answer: str, think: str = "steps") -> str:
    return format_response(think, answer)


# ------------------------------------------------------------------------------------------------ extraction
def test_extract_answer_conventions_and_last_wins():
    assert extract_answer(r"x \boxed{\frac{1}{2}} y") == r"\frac{1}{2}"
    assert extract_answer("Natalia sold 72 clips.\n#### 72") == "72"
    assert extract_answer("So the answer is 3.5.") == "3.5"
    assert extract_answer("The answer is: 12\nmore text") == "12"
    assert extract_answer(r"The answer is 3. Wait, \boxed{4}") == "4"
    assert extract_answer(r"\boxed{4} Hmm, the answer is 5.") == "5"
    assert extract_answer(r"The answer is \boxed{6}.") == "6"
    assert extract_answer(r"\boxed{1} \boxed{2} \boxed{3") == "2"  # an unclosed box is not an answer
    assert extract_answer("no marker, 12 and 13") is None
    assert extract_answer("no marker, 12 and 13", last_number=True) == "13"
    assert extract_answer(r"\boxed{}") is None


def test_answer_region_and_completion_text():
    assert answer_region("<think>a</think>b") == "b"
    assert answer_region("<think>unfinished 42") == ""
    assert answer_region("plain 42") == "plain 42"
    msg = {"role": "assistant", "content": r"\boxed{7}", "reasoning_content": "3+4=7"}
    assert completion_text(msg) == "<think>\n3+4=7\n</think>\n\n\\boxed{7}"
    assert completion_text([{"role": "user", "content": "q"}, msg]) == completion_text(msg)
    assert completion_text("<｜User｜>\\boxed{1}<｜Assistant｜>\\boxed{2}<｜end▁of▁sentence｜>") == r"\boxed{2}"
    assert completion_text(None) == "" and completion_text(42) == ""


def test_parse_number():
    assert parse_number("1,234") == 1234 and parse_number("0.50") == parse_number("1/2") == parse_number(r"\frac{1}{2}")
    assert parse_number("$-7/3$") == parse_number(r"\dfrac{-7}{3}")
    for bad in ["x", "1/0", "1e5", "", "1" * 200, "12,34"]:
        assert parse_number(bad) is None


# ------------------------------------------------------------------------------------------------ format
def test_format_reward():
    assert format_reward(r("42")) == 1.0
    assert format_reward(r"\boxed{42}") == 0.0  # no think block
    assert format_reward(r("1") + "\n" + r("2")) == 0.0  # two think blocks
    assert format_reward(r"<think>\boxed{42}</think>") == 0.0  # answer inside think only
    assert format_reward(r"<think> </think>\boxed{42}") == 0.0  # empty thinking
    assert format_reward(r"hello <think>x</think>\boxed{42}") == 0.0  # text before the think block
    assert format_reward("<think>x</think>\n\n42") == 0.0  # no extractable answer ...
    assert format_reward("<think>x</think>\n\n42", require_answer=False) == 1.0  # ... unless not required
    assert format_reward("<think>x</think>\n\n", require_answer=False) == 0.0
    assert format_reward("<think>x\n\\boxed{4") == 0.0  # truncated
    assert format_reward("x\n</think>\n\n\\boxed{4}") == 0.0
    assert format_reward("x\n</think>\n\n\\boxed{4}", think_prefilled=True) == 1.0


# ------------------------------------------------------------------------------------------------ accuracy, math
def test_accuracy_reward():
    assert accuracy_reward(r("632"), answer="632") == 1.0
    assert accuracy_reward(r("632"), answer=632) == 1.0
    assert accuracy_reward(r("633"), answer="632") == 0.0
    assert accuracy_reward(r("0.50"), answer="1/2") == 1.0
    assert accuracy_reward(r("1,234"), answer="Natalia ... #### 1234") == 1.0  # GSM8K gold
    assert accuracy_reward("<think>x</think>The answer is Paris.", answer="paris") == 1.0
    assert accuracy_reward(r"<think>\boxed{632}</think>", answer="632") == 0.0  # inside think only
    assert accuracy_reward(r"<think>\boxed{632}</think>\boxed{1}", answer="632") == 0.0
    assert accuracy_reward(r"<think>x</think>\boxed{1} no, \boxed{632}", answer="632") == 1.0  # last counts
    assert accuracy_reward(r"<think>x</think>\boxed{632} no, \boxed{1}", answer="632") == 0.0
    assert accuracy_reward(r"<think>truncated \boxed{632}", answer="632") == 0.0
    assert accuracy_reward(r"\boxed{632}", answer="632") == 1.0  # no thinking: the whole text is the answer
    assert accuracy_reward(r("632"), answer=None) is None and accuracy_reward(r("1"), answer="  ") is None
    with pytest.raises(TypeError, match="answer"):
        accuracy_reward(r("1"))  # a dataset row without the field is an error, not a zero


def test_math_reward():
    for spelling in ["0.5", "1/2", r"\frac{1}{2}", r"\dfrac{1}{2}", "$0.5$"]:
        assert math_reward(r(spelling), answer=r"\frac{1}{2}") == 1.0, spelling
    assert math_reward(r("1+x"), answer="x+1") == 1.0
    assert math_reward(r("x=7/3"), answer="7/3") == 1.0
    assert math_reward(r(r"\sqrt{\sqrt{\sqrt{2}}}"), answer="2^{1/8}") == 1.0
    assert math_reward(r("0.6"), answer="1/2") == 0.0
    assert math_reward(r("x+2"), answer="x+1") == 0.0
    assert math_reward(r"<think>\boxed{1/2}</think>", answer="1/2") == 0.0
    assert math_reward(r("3"), answer=r"\frac{") is None  # unparseable gold: skip, never 1.0
    assert math_reward(r("3"), answer="???") is None
    assert math_reward(r("3"), answer="") is None


def test_math_reward_off_the_main_thread():
    # math-verify's timeout is signal-based and main-thread only; the reward must still work in a thread
    out: list = []
    t = threading.Thread(target=lambda: out.extend(
        [math_reward(r("0.5"), answer="1/2"), math_reward(r("1+x"), answer="x+1"),
         math_reward(r("9^{9^{9}}"), answer="x")]))
    t.start()
    t.join(60)
    assert out == [1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------------ countdown
def test_evaluate_expression():
    assert evaluate_expression("(25-5)*4+1") == (81, [25, 5, 4, 1])
    assert evaluate_expression("3/2*4") == (6, [3, 2, 4])  # exact rationals
    for bad in ["1/(2-2)", "2**3", "-3+5", "+3", "1.5*2", "0x10", "1_0", "abs(3)", "__import__('os')", "3 if 1 else 2",
                "(" * 300 + "1" + ")" * 300, ""]:
        assert evaluate_expression(bad, max_chars=1000) is None, bad


def test_countdown_reward():
    f = dict(nums=[25, 5, 4, 1], target=81)
    assert countdown_reward(r("(25-5)*4+1"), **f) == 1.0
    assert countdown_reward(r("(25-5)*4+1 = 81"), **f) == 1.0
    assert countdown_reward(r(r"(25-5) \times 4+1"), **f) == 1.0
    assert countdown_reward(r("(25-5)*4+1 = 80"), **f) == 0.0  # claims the wrong value
    assert countdown_reward(r("(25-5)*4"), **f) == 0.0  # wrong value
    assert countdown_reward(r("25*4-5-25+6"), nums=[25, 5, 4, 6], target=76) == 0.0  # 25 used twice
    assert countdown_reward(r("81"), **f) == 0.0  # a number that is not given
    assert countdown_reward(r("25*4/(5-5)"), **f) == 0.0  # division by zero
    assert countdown_reward(r("3/2*4"), nums=[3, 2, 4], target=6) == 1.0
    assert countdown_reward(r("20+4"), nums=[20, 4, 7], target=24) == 1.0  # each number at most once
    assert countdown_reward(r("2**3"), nums=[2, 3], target=8) == 0.0
    assert countdown_reward(r"<think>\boxed{(25-5)*4+1}</think>", **f) == 0.0
    assert countdown_reward(r("(25-5)*4+1"), nums=["a"], target=81) is None
    assert countdown_reward(r("(25-5)*4+1"), nums=[25, 5, 4, 1], target=None) is None


# ------------------------------------------------------------------------------------------------ length
def test_length_penalty():
    assert length_penalty("x" * 100, max_length=200, cache=50) == 0.0
    assert length_penalty("x" * 175, max_length=200, cache=50) == pytest.approx(-0.5)
    assert length_penalty("x" * 300, max_length=200, cache=50) == -1.0
    assert length_penalty("x", max_length=200, cache=50, completion_length=175) == pytest.approx(-0.5)
    assert resolve_reward("length_penalty(max_length=200, cache=50)")("x" * 175) == pytest.approx(-0.5)


# ------------------------------------------------------------------------------------------------ hostile input
HOSTILE = [
    r("9**9**9"), r("9^{9^{9}}"), r("10^{10^{10}}"), r("100000!"), r(r"\binom{10^{9}}{5000}"), r("2^{2^{2^{2^{2}}}}"),
    r("((10^{100})^{100})^{100}"), r("(" * 5000 + "1" + ")" * 5000), r("{" * 5000), "\\boxed{" * 20000,
    r("1" * 100_000), "x" * 2_000_000, "<think>" * 10_000, "</think>" * 10_000 + r"\boxed{1}", "The answer is " * 50_000,
    "#### " * 50_000, r("1/" * 5000 + "1"), r("-" * 10_000 + "1"), r(r"\frac{1}{0}"), r("1e999999"), r("nan"),
    r(r"\infty"), r("x" * 490), "\x00\udcff", r("__import__('os').system('echo pwned')"),
]


def _score_all(results: list) -> None:
    for c in HOSTILE:
        for name, fn in REWARDS.items():
            results.append((name, fn(c, answer="42", nums=[9, 9, 9], target=729)))


def test_rewards_never_raise_or_hang_on_hostile_completions():
    results: list = []
    worker = threading.Thread(target=_score_all, args=(results,), daemon=True)  # no signal-based timeouts here
    worker.start()
    worker.join(120)  # a hang guard, not a speed test: every input is bounded to milliseconds of work
    assert not worker.is_alive(), f"a reward hung after {len(results)} scores"
    assert len(results) == len(HOSTILE) * len(REWARDS)
    for name, value in results:
        assert isinstance(value, float) and -1.0 <= value <= 1.0, (name, value)
    assert all(v == 0.0 for n, v in results if n in ("accuracy", "math", "countdown"))


# ------------------------------------------------------------------------------------------------ resolution
def test_resolve_reward():
    assert resolve_reward("accuracy") is accuracy_reward
    assert resolve_reward("nanoseek.rewards:countdown_reward") is countdown_reward
    assert resolve_reward(format_reward) is format_reward
    bound = resolve_reward("format(think_prefilled=True)")
    assert bound("x</think>\\boxed{1}") == 1.0 and bound.__name__ == "format_reward"
    assert resolve_reward("format", think_prefilled=True)("x</think>\\boxed{1}") == 1.0
    for spec, msg in [("nope", "unknown reward 'nope'"), ("no_such_module_xyz:f", "cannot import module"),
                      ("nanoseek.rewards:nope", "has no attribute"), ("math:pi", "not callable"),
                      ("length_penalty(max_len=9)", "no parameter"), ("format(1)", "literal keywords"), ("format(x=os)", "literal keywords"),
                      ("", "a reward is a name")]:
        with pytest.raises(ValueError, match=msg):
            resolve_reward(spec)


def test_required_fields():
    assert required_fields(accuracy_reward) == ("answer",)
    assert required_fields(math_reward) == ("answer",)
    assert required_fields(countdown_reward) == ("nums", "target")
    assert required_fields(format_reward) == () and required_fields(length_penalty) == ()
    assert required_fields(resolve_reward("length_penalty(max_length=9)")) == ()
    assert set(REWARDS) == {"format", "accuracy", "math", "countdown", "length_penalty"}
    assert rewards.MAX_ANSWER_CHARS >= 100
