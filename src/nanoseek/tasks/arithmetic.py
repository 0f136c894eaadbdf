"""Multi-digit arithmetic (+, -, *) with column-by-column worked solutions.

Difficulty is the number of operands and the digits of each. Two-operand problems are worked the school way
(column addition with carries, column subtraction with borrows, multiplication digit by digit or by partial
products); longer expressions are worked one operation at a time, `*` first, then left to right. Every
intermediate value is non-negative (draws that go negative are rejected), so the answer is a natural number.

    What is 347+85?
    <think>
    7+5=12, carry 1
    4+8+1=13, carry 1
    3+0+1=4
    347+85=432
    </think>

    \\boxed{432}
"""
from __future__ import annotations

import random
from typing import Any, NamedTuple

from .base import Task


class ArithmeticLevel(NamedTuple):
    operands: int
    digits: tuple[int, ...]  # digits of each operand (the last entry repeats for longer expressions)
    ops: str  # operators drawn from, e.g. "+-" or "+-*"


LEVELS = (
    ArithmeticLevel(2, (1, 1), "+-"),  # 1: 7+5
    ArithmeticLevel(2, (2, 2), "+-"),  # 2: 47+85
    ArithmeticLevel(2, (3, 3), "+-"),  # 3: 347-285
    ArithmeticLevel(2, (2, 1), "*"),  # 4: 47*8
    ArithmeticLevel(2, (4, 4), "+-"),  # 5: 3471+2856
    ArithmeticLevel(2, (3, 1), "*"),  # 6: 347*8
    ArithmeticLevel(3, (2, 1, 2), "+-*"),  # 7: 47+8*12
    ArithmeticLevel(2, (2, 2), "*"),  # 8: 47*28
    ArithmeticLevel(4, (2, 2, 2, 2), "+-*"),  # 9: 47-12+30*5
    ArithmeticLevel(2, (3, 2), "*"),  # 10: 347*28
)


def _digits(n: int) -> list[int]:
    """Least significant digit first."""
    return [int(c) for c in reversed(str(n))]


def add_steps(a: int, b: int) -> list[str]:
    da, db, lines, carry = _digits(a), _digits(b), [], 0
    width = max(len(da), len(db))
    for i in range(width):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        line = f"{x}+{y}{'+1' if carry else ''}={s}"
        carry = int(s >= 10 and i < width - 1)
        lines.append(line + (", carry 1" if carry else ""))
    return lines


def sub_steps(a: int, b: int) -> list[str]:
    """Column subtraction of b <= a with borrows."""
    da, db, lines, borrow = _digits(a), _digits(b), [], 0
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        line = f"{x}-1={x - 1}, " if borrow else ""
        x -= borrow
        borrow = int(x < y)
        line += f"{x + 10}-{y}={x + 10 - y}, borrow 1" if borrow else f"{x}-{y}={x - y}"
        lines.append(line)
    return lines


def mul_steps(a: int, b: int) -> list[str]:
    """Digit by digit when b has one digit; else one partial product per non-zero digit of b, then their sum."""
    if b < 10:
        da, lines, carry = _digits(a), [], 0
        for i, x in enumerate(da):
            p = x * b + carry
            line = f"{x}*{b}{f'+{carry}' if carry else ''}={p}"
            carry = p // 10 if i < len(da) - 1 else 0
            lines.append(line + (f", carry {carry}" if carry else ""))
        return lines
    partials = [(d * 10**i, a * d * 10**i) for i, d in enumerate(_digits(b)) if d]
    lines = [f"{a}*{m}={p}" for m, p in partials]
    total = partials[0][1]
    for _, p in partials[1:]:
        lines.append(f"{total}+{p}={total + p}")
        total += p
    return lines


def _apply(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y if op == "-" else x * y


def _binary_steps(operands: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """The operations in evaluation order (`*` first, then left to right) as (x, op, y, result)."""
    vals, ops, done = list(operands), list(ops), []
    while ops:
        i = ops.index("*") if "*" in ops else 0
        x, y = vals[i], vals[i + 1]
        r = _apply(x, ops[i], y)
        done.append((x, ops[i], y, r))
        vals[i:i + 2] = [r]
        del ops[i]
    return done


class ArithmeticTask(Task):
    name = "arithmetic"
    reward = "accuracy"

    def __init__(self, levels: tuple[ArithmeticLevel, ...] = LEVELS):
        self.levels = tuple(ArithmeticLevel(lv[0], (lv[1],) if isinstance(lv[1], int) else tuple(lv[1]), lv[2])
                            for lv in levels)  # digits may be one int for every operand

    def sample(self, rng: random.Random, level: int) -> dict[str, Any] | None:
        spec = self.levels[level - 1]
        digits = [spec.digits[min(i, len(spec.digits) - 1)] for i in range(spec.operands)]
        operands = [rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1) for d in digits]
        ops = [rng.choice(spec.ops) for _ in range(spec.operands - 1)]
        if any(r < 0 for *_, r in _binary_steps(operands, ops)):
            return None
        return {"operands": operands, "ops": ops}

    @staticmethod
    def expression(problem: dict[str, Any]) -> str:
        parts = [str(problem["operands"][0])]
        for op, x in zip(problem["ops"], problem["operands"][1:]):
            parts += [op, str(x)]
        return "".join(parts)

    def key(self, problem: dict[str, Any]) -> str:
        a, ops = problem["operands"], problem["ops"]
        if len(a) == 2 and ops[0] in "+*":  # 85+347 is the same problem as 347+85
            return f"{min(a)}{ops[0]}{max(a)}"
        return self.expression(problem)

    def prompt(self, problem: dict[str, Any]) -> str:
        return f"What is {self.expression(problem)}?"

    def answer(self, problem: dict[str, Any]) -> str:
        return str(_binary_steps(problem["operands"], problem["ops"])[-1][3])

    def steps(self, problem: dict[str, Any]) -> list[str]:
        operations = _binary_steps(problem["operands"], problem["ops"])
        if len(operations) > 1:
            return [f"{x}{op}{y}={r}" for x, op, y, r in operations]
        x, op, y, r = operations[0]
        if x < 10 and y < 10:
            return [f"{x}{op}{y}={r}"]
        work = add_steps(x, y) if op == "+" else sub_steps(x, y) if op == "-" else mul_steps(x, y)
        return [*work, f"{x}{op}{y}={r}"]
