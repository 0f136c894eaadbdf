r"""Rule-based rewards for reasoning RL, and the answer convention shared by SFT data, GRPO and evaluation.

The answer convention (used by every built-in task, reward and evaluation in nanoseek): the assistant writes its
reasoning in exactly one think block, then the final answer in `\boxed{}`, as DeepSeek-R1 is asked to::

    <think>
    7+5=12, carry 1
    4+8+1=13
    47+85=132
    </think>

    \boxed{132}

`format_response(reasoning, answer)` writes it; `extract_answer(text)` reads it back. `extract_answer` also reads
GSM8K's `#### 72`, "The answer is 72" and "Answer: 72", and the **last** answer in the text wins (a model that
writes several answers is judged by its last one), so evaluation of other models' outputs uses the same code. It is
nanoseek's one answer extractor: majority voting (`nanoseek.infer.voting`) reads answers with it too.

A reward is a plain function `f(completion: str, **fields_of_the_example) -> float | None`. `completion` is the
assistant's text only (a string, or an OpenAI-style assistant message / list of messages, whose
`reasoning_content` is put back into a think block). `None` means "skip this example" (its gold cannot be parsed),
never "correct". The built-ins never raise on any completion, however long or hostile (huge powers such as
`9**9**9`, deep parentheses, megabytes of text): an unparseable or unsafe answer scores 0.0. A missing field is a
dataset error, not a completion problem: the call raises TypeError naming the field (see `required_fields`).

Built-ins (`REWARDS`): `format`, `accuracy`, `math`, `countdown`, `length_penalty`. `resolve_reward(spec)` accepts
a built-in name, `"package.module:function"`, a callable, and keyword parameters in either string form:
`"length_penalty(max_length=256, cache=64)"`.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

RewardFn = Callable[..., "float | None"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ASSISTANT_MARK = "<｜Assistant｜>"  # DeepSeek chat-template marker: only the text after the last one is scored
_END_MARKS = ("<｜end▁of▁sentence｜>",)

MAX_ANSWER_CHARS = 500  # an answer longer than this is not parsed at all (bounds every parser below)
MAX_DIGITS = 10_000  # a symbolic answer whose value could exceed 10**MAX_DIGITS is rejected before sympy sees it


# ------------------------------------------------------------------------------------------------ the convention
def format_response(reasoning: str, answer: str) -> str:
    r"""`<think>\n{reasoning}\n</think>\n\n\boxed{answer}`: the one answer format of nanoseek's tasks."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n\\boxed{{{answer}}}"


def completion_text(completion: Any) -> str:
    """The assistant's text of a completion: a string, a message dict, or a list of messages (last assistant one).

    A message's `reasoning_content` is written back as a think block; text before the last `<｜Assistant｜>` (a
    prompt accidentally left in) and end-of-sentence markers are dropped.
    """
    if isinstance(completion, Mapping):
        text = _message_text(completion)
    elif isinstance(completion, Sequence) and not isinstance(completion, str):
        msgs = [m for m in completion if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"]
        text = _message_text(msgs[-1]) if msgs else ""
    else:
        text = completion if isinstance(completion, str) else ""
    if _ASSISTANT_MARK in text:
        text = text.rsplit(_ASSISTANT_MARK, 1)[1]
    for mark in _END_MARKS:
        text = text.replace(mark, "")
    return text


def _message_text(msg: Mapping) -> str:
    content = msg.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    content = content if isinstance(content, str) else ""
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{content}"
    return content


def answer_region(text: str) -> str:
    """Where the final answer may be: after the last `</think>`; nothing if a think block never closed; else all."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return ""  # truncated or unfinished thinking: no answer was given
    return text


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[ \t:]*([^\n]*?)(?=\.[ \t]|\.?[ \t]*$|\.?[ \t]*\n)",
                        re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each `{` -> position of its closing `}`, in one pass (unclosed ones are absent)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def extract_answer(text: str, *, last_number: bool = False) -> str | None:
    r"""The last answer in `text`: `\boxed{X}`, `#### X` (GSM8K) or "The answer is X", whichever comes last (a box
    left unclosed or empty is no answer).

    With `last_number=True`, the last number in the text (thousands commas dropped) is the answer when none of
    those markers is present: lenient reading of models that do not follow the convention, as majority voting
    does; rewards do not use it. None if no answer.
    """
    found: list[tuple[int, str]] = []
    boxes = list(_BOXED.finditer(text))
    if boxes:
        closing = _matching_braces(text)
        found += [(m.start(), text[m.end():closing[m.end() - 1]]) for m in boxes if m.end() - 1 in closing]
    found += [(m.start(), m.group(1)) for m in _HASHES.finditer(text)]
    found += [(m.start(), m.group(1).strip().rstrip(".")) for m in _ANSWER_IS.finditer(text)]
    found = [(pos, ans.strip()) for pos, ans in found if ans.strip()]
    if found:
        return max(found)[1]
    if last_number:
        numbers = _NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    return None


def final_answer(completion: Any) -> str | None:
    """The answer a completion gives after its thinking (the last one), or None: what every reward scores."""
    return extract_answer(answer_region(completion_text(completion)))


# ------------------------------------------------------------------------------------------------ numbers
_LATEX_FRAC = re.compile(r"^\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")


def _clean(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("−", "-")
    return s.rstrip(".").strip()


def parse_number(s: str) -> Fraction | None:
    r"""An exact number from `42`, `-3.5`, `1,000`, `7/3`, `\frac{7}{3}`; None for anything else."""
    if not isinstance(s, str) or len(s) > 100:
        return None
    s = _clean(s)
    m = _LATEX_FRAC.match(s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/-?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _gold(answer: Any) -> str | None:
    """The gold answer as text: GSM8K's `... #### 72` and `\\boxed{}` golds are reduced to their answer."""
    if answer is None or isinstance(answer, bool):
        return None
    s = str(answer).strip()
    if "####" in s or "\\boxed" in s or "\\fbox" in s:
        s = extract_answer(s) or ""
    return s or None


# ------------------------------------------------------------------------------------------------ safe arithmetic
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}
_LATEX_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/", "−": "-",
              "\\left": "", "\\right": "", "[": "(", "]": ")"}


def evaluate_expression(expr: str, *, max_chars: int = 200, max_bits: int = 4096) -> tuple[Fraction, list[int]] | None:
    """Exact value and the integer literals of an arithmetic expression with + - * / and parentheses only.

    Parsed with `ast` and evaluated node by node with `fractions.Fraction` (never `eval`): no names, calls,
    powers, unary signs or non-integer literals. None if the text is longer than `max_chars`, does not parse,
    divides by zero, or a value grows beyond `max_bits` (so no input can make it slow).
    """
    if not isinstance(expr, str) or len(expr) > max_chars:
        return None
    for k, v in _LATEX_OPS.items():
        expr = expr.replace(k, v)
    if not re.fullmatch(r"[\d+\-*/() \t]+", expr):  # also rules out 0x10, 1_000, 1e3, 2j
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except Exception:  # SyntaxError, RecursionError, MemoryError on hostile nesting
        return None
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            value = _BINOPS[type(node.op)](walk(node.left), walk(node.right))
            if value.numerator.bit_length() > max_bits or value.denominator.bit_length() > max_bits:
                raise OverflowError
            return value
        raise ValueError(type(node).__name__)

    try:
        return walk(tree.body), literals
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


# ------------------------------------------------------------------------------------------------ sympy guard
_FACTORIAL_LIKE = ("factorial", "factorial2", "subfactorial", "binomial", "gamma", "RisingFactorial",
                   "FallingFactorial", "fibonacci", "lucas")


def _log10_bound(e: Any, budget: list[int]) -> float:
    """An upper bound on log10|value| of a sympy expression's exact numbers, computing nothing big.

    Symbols count as magnitude 10. Raises ValueError when exact arithmetic on the expression could be slow: a power
    whose value could exceed 10**MAX_DIGITS (9**9**9), a factorial of a big number, or too many nodes.
    """
    import sympy

    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("too many nodes")
    if isinstance(e, sympy.Rational):  # Integer too
        bound = max(abs(e.p).bit_length(), e.q.bit_length()) * 0.30103
    elif isinstance(e, sympy.Float):
        v = abs(float(e))
        if not math.isfinite(v):
            raise ValueError("float too large")
        bound = math.log10(max(v, 1.0))
    elif isinstance(e, sympy.Pow):
        base, expo = e.args
        if isinstance(expo, sympy.Rational):
            if abs(expo.p).bit_length() > 64:
                raise ValueError("exponent too large")
            magnitude = abs(float(expo))
        else:
            expo_bound = _log10_bound(expo, budget)
            if expo_bound > 6:  # an exponent that may exceed a million: 9**9**9, 10**(10**10)
                raise ValueError("exponent too large")
            magnitude = 10 ** expo_bound
        bound = max(magnitude, 1.0) * max(_log10_bound(base, budget), 1.0)
    elif isinstance(e, sympy.Add):
        bound = max((_log10_bound(a, budget) for a in e.args), default=0.0) + math.log10(len(e.args) + 1)
    elif isinstance(e, sympy.Mul):
        bound = sum(_log10_bound(a, budget) for a in e.args)
    elif not e.args:  # symbols, pi, E, I, oo
        bound = 1.0
    else:  # functions, relations, sets, tuples: as large as their largest argument, unless factorial-like
        bound = max((_log10_bound(a, budget) for a in e.args if isinstance(a, sympy.Basic)), default=1.0)
        if type(e).__name__ in _FACTORIAL_LIKE:
            if bound > 3.5:  # 3000! has 9131 digits
                raise ValueError("factorial of a large number")
            bound = 10 ** bound * max(bound, 1.0)
    if bound > MAX_DIGITS:
        raise ValueError("value too large")
    return bound


def _bounded(parsed: list) -> bool:
    import sympy

    try:
        for p in parsed:
            if isinstance(p, sympy.Basic):
                _log10_bound(p, [2000])
        return True
    except Exception:
        return False


def _math_verify_timeout() -> int | None:
    # math-verify's timeout is signal.alarm: only usable in the main thread (elsewhere it raises); off there, and
    # `_bounded` plus MAX_ANSWER_CHARS keep the work small.
    return 2 if threading.current_thread() is threading.main_thread() else None


# ------------------------------------------------------------------------------------------------ rewards
def format_reward(completion: Any, *, think_prefilled: bool = False, require_answer: bool = True, **_: Any) -> float:
    r"""1.0 for exactly one non-empty `<think>...</think>` block at the start, then an answer; else 0.0.

    The answer must be one `extract_answer` finds (`\boxed{}` etc.) unless `require_answer=False`, in which case
    any non-blank text will do. `think_prefilled=True` is for chat templates that put `<think>\n` in the prompt:
    the completion then starts inside the think block.
    """
    text = completion_text(completion)
    if think_prefilled:
        text = THINK_OPEN + text
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return 0.0
    head, rest = text.split(THINK_CLOSE)
    if not head.lstrip().startswith(THINK_OPEN) or not head.lstrip()[len(THINK_OPEN):].strip():
        return 0.0
    if require_answer:
        return 1.0 if extract_answer(rest) is not None else 0.0
    return 1.0 if rest.strip() else 0.0


def accuracy_reward(completion: Any, *, answer: Any, **_: Any) -> float | None:
    """1.0 when the final answer equals the gold `answer`: as exact numbers when both are numbers (`0.50` == `1/2`),
    else as text (spaces, `$` and case ignored). None when the gold is empty."""
    gold = _gold(answer)
    if gold is None:
        return None
    pred = final_answer(completion)
    if pred is None or len(pred) > MAX_ANSWER_CHARS:
        return 0.0
    g, p = parse_number(gold), parse_number(pred)
    if g is not None and p is not None:
        return float(g == p)
    norm = lambda s: re.sub(r"\s+", "", _clean(s)).lower()  # noqa: E731
    return float(norm(gold) == norm(pred))


def math_reward(completion: Any, *, answer: Any, **_: Any) -> float | None:
    r"""1.0 when the final answer is mathematically equal to the gold (`1/2` == `0.5` == `\frac{1}{2}`,
    `x+1` == `1+x`), by math-verify (sympy); None when the gold cannot be parsed."""
    gold = _gold(answer)
    if gold is None or len(gold) > MAX_ANSWER_CHARS:
        return None
    pred = final_answer(completion)
    if pred is None or len(pred) > MAX_ANSWER_CHARS:
        return 0.0
    g, p = parse_number(gold), parse_number(pred)
    if g is not None and p is not None:  # fast, exact, no sympy
        return float(g == p)
    try:
        from math_verify import parse, verify
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ImportError("the `math` reward needs math-verify: pip install math-verify") from e
    timeout = _math_verify_timeout()
    try:
        gold_parsed = parse(_as_latex(gold), fallback_mode="no_fallback", parsing_timeout=timeout)
        if not gold_parsed or not _bounded(gold_parsed):
            return None
        pred_parsed = parse(_as_latex(pred), parsing_timeout=timeout)
        if not pred_parsed or not _bounded(pred_parsed):
            return 0.0
        return float(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify's own errors and timeouts: an unparseable answer is a wrong one
        return 0.0


def _as_latex(s: str) -> str:
    s = s.strip()
    return s if s.startswith("$") else f"${s}$"


def countdown_reward(completion: Any, *, nums: Any, target: Any, **_: Any) -> float | None:
    r"""1.0 when the final answer is an equation that uses only the given `nums`, each at most once, with
    + - * / and parentheses, and equals `target` exactly (rational arithmetic); else 0.0.

    The answer may end with `= target`; `\times`, `\div`, `\cdot` are accepted. None when `nums`/`target` are not
    integers.
    """
    try:
        pool = Counter(int(n) for n in nums)
        goal = Fraction(int(target))
    except (TypeError, ValueError):
        return None
    pred = final_answer(completion)
    if pred is None:
        return 0.0
    expr = _clean(pred)
    if "=" in expr:
        expr, _, rhs = expr.partition("=")
        if parse_number(rhs) != goal:
            return 0.0
    result = evaluate_expression(expr, max_chars=20 * sum(pool.values()) + 40)
    if result is None:
        return 0.0
    value, used = result
    return float(value == goal and not Counter(used) - pool)


def length_penalty(completion: Any, *, max_length: int = 512, cache: int = 128,
                   completion_length: int | None = None, **_: Any) -> float:
    """DAPO's soft overlong penalty, in [-1, 0]: 0 up to `max_length - cache`, then falling linearly to -1 at
    `max_length`, and -1 beyond. Length is `completion_length` (tokens) when the caller passes that field, else
    the completion's characters."""
    n = completion_length if isinstance(completion_length, int) else len(completion_text(completion))
    free = max_length - cache
    if n <= free:
        return 0.0
    if n >= max_length or cache <= 0:
        return -1.0
    return (free - n) / cache


REWARDS: Mapping[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "math": math_reward,
    "countdown": countdown_reward,
    "length_penalty": length_penalty,
}


# ------------------------------------------------------------------------------------------------ resolution
def resolve_reward(spec: str | RewardFn, **params: Any) -> RewardFn:
    """A reward function from a built-in name, `"package.module:function"` or a callable, with optional keyword
    parameters given as `params` or in the string: `"length_penalty(max_length=256)"` (literal values only)."""
    if callable(spec):
        fn = spec
    elif isinstance(spec, str) and spec.strip():
        name, str_params = _split_params(spec.strip())
        params = {**str_params, **params}
        if ":" in name:
            fn = _import(name)
        elif name in REWARDS:
            fn = REWARDS[name]
        else:
            raise ValueError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)} or 'package.module:function'")
    else:
        raise ValueError(f"a reward is a name, 'module:function' or a callable, not {spec!r}")
    if not params:
        return fn
    _check_params(fn, params, spec)
    bound = functools.partial(fn, **params)
    functools.update_wrapper(bound, fn)
    return bound


def _split_params(spec: str) -> tuple[str, dict[str, Any]]:
    if not spec.endswith(")") or "(" not in spec:
        return spec, {}
    name = spec[: spec.index("(")].strip()
    try:
        call = ast.parse(spec[len(name):].strip().join(["f", ""]), mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("only keyword parameters")
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"reward {spec!r}: parameters must be literal keywords, as in name(max_length=256): {e}") from None


def _import(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {spec!r} is not callable")
    return obj


def _check_params(fn: RewardFn, params: Mapping[str, Any], spec: Any) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    named = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = set(params) - named  # a typo (max_len=) would otherwise vanish into **fields
    if unknown:
        raise ValueError(f"reward {spec!r} has no parameter(s) {', '.join(sorted(unknown))}")


def required_fields(fn: RewardFn) -> tuple[str, ...]:
    """The example fields a reward needs (its keyword parameters without defaults), to check a dataset up front."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params[1:]
                 if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
