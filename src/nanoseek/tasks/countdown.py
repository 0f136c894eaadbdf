"""Countdown: reach a target from given numbers with + - * /, each number used at most once (TinyZero's task).

Instances are generated backwards, so every one is solvable with a known solution: the numbers are combined two
at a time, as a player would (a larger minus a smaller, exact divisions only, so every intermediate value is a
positive integer), until one value, the target, is left. The worked solution lists those combinations; the answer
is the equation with as few parentheses as precedence allows. Any other correct equation scores too: the
verifier is `nanoseek.rewards.countdown_reward`, which evaluates the answer exactly with fractions.

    Make 81 from 25, 5, 4, 1 using + - * /, each number at most once.
    <think>
    25-5=20
    20*4=80
    80+1=81
    </think>

    \\boxed{(25-5)*4+1}
"""
from __future__ import annotations

import random
from typing import Any, NamedTuple

from .base import Task


class CountdownLevel(NamedTuple):
    count: int  # how many numbers are given
    max_number: int  # numbers are drawn from 1..max_number
    max_target: int  # the target is in 2..max_target


LEVELS = (
    CountdownLevel(2, 10, 100),
    CountdownLevel(3, 10, 100),
    CountdownLevel(3, 25, 100),
    CountdownLevel(4, 25, 100),
    CountdownLevel(4, 100, 100),  # TinyZero's setting: 3-4 numbers and targets up to 100
    CountdownLevel(5, 100, 1000),
    CountdownLevel(6, 100, 1000),
)

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
Node = Any  # an int leaf, or (op, left, right)


def render(node: Node, parent: str = "", right: bool = False) -> str:
    """The expression of a tree with only the parentheses precedence needs: a-(b-c) keeps them, (a*b)+c does not."""
    if isinstance(node, int):
        return str(node)
    op, left, rhs = node
    text = f"{render(left, op)}{op}{render(rhs, op, right=True)}"
    if parent and (_PREC[op] < _PREC[parent] or (right and _PREC[op] == _PREC[parent] and parent in "-/")):
        return f"({text})"
    return text


class CountdownTask(Task):
    name = "countdown"
    reward = "countdown"
    instruction = "Put the final equation in \\boxed{}."

    def __init__(self, levels: tuple[CountdownLevel, ...] = LEVELS):
        self.levels = tuple(CountdownLevel(*lv) for lv in levels)

    def sample(self, rng: random.Random, level: int) -> dict[str, Any] | None:
        spec = self.levels[level - 1]
        nums = [rng.randint(1, spec.max_number) for _ in range(spec.count)]
        pool: list[tuple[int, Node]] = [(n, n) for n in nums]
        steps: list[str] = []
        while len(pool) > 1:
            (a, ta), (b, tb) = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
            if a < b:
                (a, ta), (b, tb) = (b, tb), (a, ta)
            choices = ["+"]
            if a != b:
                choices.append("-")
            if b > 1 and a * b <= 10 * spec.max_target:
                choices.append("*")
            if b > 1 and a % b == 0:
                choices.append("/")
            op = rng.choice(choices)
            value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
            steps.append(f"{a}{op}{b}={value}")
            pool.append((value, (op, ta, tb)))
        target, tree = pool[0]
        if not 2 <= target <= spec.max_target or target in nums:  # out of range, or trivially one of the numbers
            return None
        return {"nums": nums, "target": target, "solution": render(tree), "work": steps}

    def key(self, problem: dict[str, Any]) -> str:
        return f"{sorted(problem['nums'])}->{problem['target']}"  # the order the numbers are listed in is irrelevant

    def prompt(self, problem: dict[str, Any]) -> str:
        nums = ", ".join(map(str, problem["nums"]))
        return f"Make {problem['target']} from {nums} using + - * /, each number at most once."

    def answer(self, problem: dict[str, Any]) -> str:
        return problem["solution"]

    def steps(self, problem: dict[str, Any]) -> list[str]:
        return list(problem["work"])
