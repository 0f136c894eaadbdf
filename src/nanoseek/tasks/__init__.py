r"""Built-in verifiable tasks: generators with difficulty levels, exact verifiers and worked solutions.

    from nanoseek import tasks
    task = tasks.get("countdown")                       # tasks.names() -> ['arithmetic', 'countdown', 'linear']
    rows = task.examples(1000, split="train", level=[1, 2], seed=0)   # {"prompt", "answer", ...fields}
    task.messages(rows[0])                              # [{"role": "user", "content": prompt}]  (RL, eval)
    task.solution(rows[0])                              # "<think>\n...\n</think>\n\n\\boxed{...}"  (SFT)
    task.sft_messages(rows[0]); task.document(rows[0])  # chat SFT row; plain pretraining text
    task.score(completion, rows[0])                     # 1.0 / 0.0 via the reward named task.reward

The answer convention is that of `nanoseek.rewards`: one think block, then `\boxed{answer}`. Splits are by a
hash of the canonical problem (see `tasks.base`), so train and test never share a problem, at any seed.
"""
from __future__ import annotations

import importlib
from typing import Any

from .arithmetic import ArithmeticTask
from .base import SPLITS, TEST_FRACTION, Task
from .countdown import CountdownTask
from .linear import LinearTask

_TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ArithmeticTask, CountdownTask, LinearTask)}


def names() -> list[str]:
    """The built-in task names."""
    return sorted(_TASKS)


def get(name: str, **kwargs: Any) -> Task:
    """A task by built-in name or as `"package.module:Class"` (a `Task` subclass); kwargs go to its constructor."""
    if name in _TASKS:
        return _TASKS[name](**kwargs)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"task {name!r}: cannot load it: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ValueError(f"task {name!r} is not a nanoseek.tasks.Task subclass")
        return cls(**kwargs)
    raise ValueError(f"unknown task {name!r}: use one of {', '.join(names())} or 'package.module:Class'")


__all__ = ["Task", "ArithmeticTask", "CountdownTask", "LinearTask", "SPLITS", "TEST_FRACTION", "get", "names"]
