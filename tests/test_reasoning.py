"""Reasoning parser: whole-text rules, and the stream parser agreeing with them over random delta boundaries."""
import random

import pytest

from nanoseek.reasoning import ReasoningParser, ReasoningSplit

R1 = ReasoningParser()
V3 = ReasoningParser(starts_in_reasoning=False)


@pytest.mark.parametrize("text, reasoning, content", [
    # R1 after its `<think>\n` pre-fill: no opening tag, reasoning until `</think>`.
    ("Let me add.\n</think>\n\n2", "Let me add.\n", "\n\n2"),
    # An opening tag (older template) is dropped, with any whitespace before it.
    ("<think>\nhmm\n</think>answer", "\nhmm\n", "answer"),
    ("\n <think>x</think>y", "x", "y"),
    # Generation stopped before `</think>`: everything is reasoning.
    ("still thinking", "still thinking", None),
    ("<think>still", "still", None),
    ("thinking </th", "thinking </th", None),
    # Only the first `</think>` ends the reasoning; later tags are content.
    ("a</think>b</think>c<think>d", "a", "b</think>c<think>d"),
    # A `<think>` that does not open the output is ordinary reasoning text.
    ("a <think> b</think>c", "a <think> b", "c"),
    ("</think>only content", None, "only content"),
    ("<think></think>", None, None),
    ("", None, None),
    ("   ", "   ", None),
])
def test_r1_whole_text(text, reasoning, content):
    assert R1.parse(text) == ReasoningSplit(reasoning, content)


@pytest.mark.parametrize("text, reasoning, content", [
    ("plain answer", None, "plain answer"),
    ("answer with </think> inside", None, "answer with </think> inside"),
    ("<think>r</think>c", "r", "c"),
    ("  <think>r", "r", None),
    ("  <thi", None, "  <thi"),
])
def test_no_prefill_whole_text(text, reasoning, content):
    assert V3.parse(text) == ReasoningSplit(reasoning, content)


def test_for_prompt():
    assert ReasoningParser.for_prompt("<｜User｜>q<｜Assistant｜><think>\n").starts_in_reasoning
    assert not ReasoningParser.for_prompt("<｜User｜>q<｜Assistant｜>").starts_in_reasoning


def run_stream(parser: ReasoningParser, deltas: list[str]) -> tuple[list[ReasoningSplit], ReasoningSplit]:
    s = parser.stream()
    pieces = [s.feed(d) for d in deltas] + [s.finish()]
    reasoning = "".join(p.reasoning_content or "" for p in pieces)
    content = "".join(p.content or "" for p in pieces)
    return pieces, ReasoningSplit(reasoning or None, content or None)


def test_tag_split_across_deltas():
    pieces, joined = run_stream(R1, ["I think", " so</", "thi", "nk>\n\nYes"])
    assert joined == ReasoningSplit("I think so", "\n\nYes")
    assert pieces[1] == ReasoningSplit(" so", None)  # `</` is held back, not emitted as reasoning
    assert pieces[2] == ReasoningSplit(None, None)
    assert pieces[3] == ReasoningSplit(None, "\n\nYes")


def test_tag_only_delta_is_swallowed():
    s = R1.stream()
    assert s.feed("<think>") == ReasoningSplit(None, None)
    assert s.feed("r") == ReasoningSplit("r", None)
    assert s.in_reasoning
    assert s.feed("</think>") == ReasoningSplit(None, None)
    assert not s.in_reasoning
    assert s.feed("c") == ReasoningSplit(None, "c")
    assert s.finish() == ReasoningSplit(None, None)


def test_truncated_stream_releases_held_text():
    s = R1.stream()
    assert s.feed("a </thi") == ReasoningSplit("a ", None)
    assert s.finish() == ReasoningSplit("</thi", None)
    with pytest.raises(ValueError, match="after finish"):
        s.feed("x")


PIECES = ["<think>", "</think>", "<", "</", "</th", "think>", "<thi", "nk>", "a", "bc ", "\n", "\n\n", " ", "你好",
          "😀", "</think", ">"]


@pytest.mark.parametrize("parser", [R1, V3], ids=["prefilled", "no-prefill"])
def test_stream_equals_whole_text_random_splits(parser):
    rng = random.Random(1234)
    for _ in range(1500):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            text = rng.choice(["", " ", "\n"]) + "<think>" + text
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        deltas = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        pieces, joined = run_stream(parser, deltas)
        assert joined == parser.parse(text), (text, deltas)
        # Once content has started, no later delta carries reasoning.
        seen_content = False
        for p in pieces:
            assert not (seen_content and p.reasoning_content)
            seen_content = seen_content or p.content is not None


def test_character_by_character():
    text = "<think>\nStep 1: 2+2.\n</think>\n\nThe answer is 4."
    pieces, joined = run_stream(R1, list(text))
    assert joined == ReasoningSplit("\nStep 1: 2+2.\n", "\n\nThe answer is 4.")
    assert not any("<" in (p.reasoning_content or "") for p in pieces)


def test_bad_input():
    with pytest.raises(ValueError, match="delta must be a string"):
        R1.stream().feed(None)
    with pytest.raises(ValueError, match="non-empty"):
        ReasoningParser(end_token="")
