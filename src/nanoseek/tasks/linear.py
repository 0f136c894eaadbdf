"""Linear equations in one unknown, `a*x+b = c*x+d`, solved by moving terms and dividing.

Levels add terms (x+b=d, then a*x=d, a*x+b=d, x on both sides) and, at the top, non-integer solutions, whose
answer is a reduced fraction such as `-7/3`; the verifier is the `math` reward, so `\\frac{-7}{3}` or `-2.3333...`
style answers are judged by value, not by spelling.

    Solve for x: 5x+3=2x+12
    <think>
    5x-2x=12-3
    3x=9
    x=9/3
    x=3
    </think>

    \\boxed{3}
"""
from __future__ import annotations

import random
from fractions import Fraction
from typing import Any, NamedTuple

from .base import Task


class LinearLevel(NamedTuple):
    form: str  # "x+b=d", "ax=d", "ax+b=d" or "ax+b=cx+d"
    coef: int  # |a|, |c| <= coef
    const: int  # |b|, |d| <= const (|x| <= 10 when the solution is an integer)
    integer: bool  # whether the solution is an integer


LEVELS = (
    LinearLevel("x+b=d", 1, 20, True),
    LinearLevel("ax=d", 9, 0, True),
    LinearLevel("ax+b=d", 9, 20, True),
    LinearLevel("ax+b=cx+d", 9, 20, True),
    LinearLevel("ax+b=d", 9, 20, False),
    LinearLevel("ax+b=cx+d", 9, 30, False),
)


def _term(coef: int, first: bool) -> str:
    """`3x`, `-x`, `+x`: an x term with its sign (no sign when first and positive)."""
    body = "x" if abs(coef) == 1 else f"{abs(coef)}x"
    return ("-" if coef < 0 else "" if first else "+") + body


def _side(coef: int, const: int) -> str:
    if coef == 0:
        return str(const)
    return _term(coef, True) + (f"{const:+d}" if const else "")


def _minus(x: int | str, y: int) -> str:
    """`x-y` written so that a negative y reads `x+3`, not `x--3`."""
    return f"{x}-{y}" if y >= 0 else f"{x}+{-y}"


class LinearTask(Task):
    name = "linear"
    reward = "math"

    def __init__(self, levels: tuple[LinearLevel, ...] = LEVELS):
        self.levels = tuple(LinearLevel(*lv) for lv in levels)

    def sample(self, rng: random.Random, level: int) -> dict[str, Any] | None:
        spec = self.levels[level - 1]
        nonzero = [v for v in range(-spec.coef, spec.coef + 1) if v]
        a = 1 if spec.form == "x+b=d" else rng.choice(nonzero)
        c = rng.choice(nonzero) if spec.form == "ax+b=cx+d" else 0
        b = rng.randint(-spec.const, spec.const) if "b" in spec.form else 0
        if a == c or (spec.form == "ax=d" and a == 1) or ("b" in spec.form and b == 0):
            return None
        if spec.integer:  # pick x, then d so that x solves it
            x = rng.randint(-10, 10)
            d = (a - c) * x + b
        else:
            d = rng.randint(-spec.const, spec.const)
            if (d - b) % (a - c) == 0:
                return None
        return {"a": a, "b": b, "c": c, "d": d, "equation": f"{_side(a, b)}={_side(c, d)}"}

    def key(self, problem: dict[str, Any]) -> str:
        return problem["equation"]

    def prompt(self, problem: dict[str, Any]) -> str:
        return f"Solve for x: {problem['equation']}"

    def answer(self, problem: dict[str, Any]) -> str:
        return str(Fraction(problem["d"] - problem["b"], problem["a"] - problem["c"]))

    def steps(self, problem: dict[str, Any]) -> list[str]:
        a, b, c, d = problem["a"], problem["b"], problem["c"], problem["d"]
        k, r = a - c, d - b
        lines = []
        if c or b:  # move the x term to the left and the constant to the right, then collect
            left = _term(a, True) + (_term(-c, False) if c else "")
            lines += [f"{left}={_minus(d, b) if b else d}", f"{_term(k, True)}={r}"]
        if k != 1:
            division, value = f"x={r}/{k}" if k > 0 else f"x={r}/({k})", f"x={Fraction(r, k)}"
            lines += [division] if division == value else [division, value]
        return lines
