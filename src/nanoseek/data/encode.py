"""Documents to token ids, with the loss mask that SFT needs.

The tokenizer is duck-typed: any object with `encode(str) -> list[int]`, `eos_token_id`, `vocab_size` and optionally
`bos_token_id` and `apply_chat_template(messages, tokenize=False, add_generation_prompt=...) -> str` (the
transformers signature) works: `nanoseek.Tokenizer`, a transformers tokenizer, or a small test wrapper. `encode`
must not add BOS/EOS by itself, or must accept `add_special_tokens=False` (then it is called with it).

Layout of one document: `[BOS] tokens [EOS]` (BOS only when the tokenizer has one). A chat is rendered by the
tokenizer's chat template, which usually writes BOS and the end-of-turn EOS itself; the missing ones are added.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .corpora import DataError, Document, Message

# A probe whose token ids identify a tokenizer (vocabulary and merges) without access to its files.
_PROBE = "The quick brown fox: 3.14159 + 2**10 == 1027.14159?\n\tNaïve café, 東京, emoji 🙂 and <tags>."
_PROBE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello"}]


@dataclass
class Example:
    """One tokenized document. `loss_mask[i]` is 1 when token i is a training target (the model must learn to
    write it: assistant content in a chat, every token of plain text); None means all ones."""
    input_ids: list[int]
    loss_mask: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """`text -> ids` without special tokens added by the tokenizer's own post-processor."""
    try:
        params = inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        params = {}
    if "add_special_tokens" in params:
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    return lambda text: list(tokenizer.encode(text))


def vocab_size(tokenizer: Any) -> int:
    # transformers' `vocab_size` leaves out added tokens; `len()` counts them.
    n = int(tokenizer.vocab_size)
    try:
        n = max(n, len(tokenizer))
    except TypeError:
        pass
    return n


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What the manifest records about the tokenizer; `fingerprint` changes when its ids or chat template do."""
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise DataError("the tokenizer has no EOS token (eos_token_id); documents are separated by EOS")
    info = {"vocab_size": vocab_size(tokenizer), "bos_token_id": getattr(tokenizer, "bos_token_id", None),
            "eos_token_id": tokenizer.eos_token_id}
    h = hashlib.sha256(json.dumps([info, encoder(tokenizer)(_PROBE)]).encode())
    if hasattr(tokenizer, "apply_chat_template"):
        try:
            h.update(tokenizer.apply_chat_template(_PROBE_CHAT, tokenize=False, add_generation_prompt=False).encode())
        except Exception:  # a tokenizer without a template: chats fail later with a clear error
            h.update(b"no chat template")
    name = getattr(tokenizer, "name_or_path", None)
    return {**info, "name_or_path": str(name) if name else None, "fingerprint": h.hexdigest()}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_SENTINEL = "\x00nanoseek-assistant-content\x00"


def _trace(message: Message) -> tuple[str, str] | None:
    """(reasoning, answer) of an assistant message with a reasoning trace, else None."""
    content = message.get("content") or ""
    for key in _REASONING_KEYS:
        r = message.get(key)
        if isinstance(r, str) and r.strip():
            return r, content
    if isinstance(content, str) and "</think>" in content:
        head, _, answer = content.rpartition("</think>")
        head = head.strip()
        return (head[len("<think>"):] if head.startswith("<think>") else head), answer
    return None


def _with_trace(render: Callable[..., str], messages: Sequence[Message], k: int, prev: str) -> str:
    """The text assistant message k adds, with its reasoning trace in a think block: the template's assistant
    prefix and end-of-turn text (found by rendering a sentinel as the content) around `<think>...</think>answer`."""
    reasoning, answer = _trace(messages[k])
    bare = {key: v for key, v in messages[k].items() if key not in _REASONING_KEYS}
    probe = render([*messages[:k], {**bare, "content": _SENTINEL}])
    if not probe.startswith(prev) or probe.count(_SENTINEL) != 1:
        raise DataError(f"message {k}: cannot place its reasoning trace: the chat template does not write an "
                        "assistant message's content verbatim")
    before, after = probe[len(prev):].split(_SENTINEL)
    return f"{before}<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}{after}"


def encode_chat(tokenizer: Any, messages: Sequence[Message], encode: Callable[[str], list[int]] | None = None
                ) -> Example:
    """Render a chat with the tokenizer's template and mark the assistant's tokens.

    The template is rendered for messages[:k] for each k; the text message k adds is the difference (templates
    that rewrite earlier turns are rejected). In an assistant turn, the part the template would also write as
    the generation prompt (e.g. `<｜Assistant｜>`) is context; the rest (content and end-of-turn token) is what
    the model learns to write: loss_mask 1.

    Reasoning traces: DeepSeek-R1's template drops everything up to `</think>` from every assistant message (and
    ignores `reasoning_content`), so rendered as is, SFT on traces would never train the trace. The *last*
    assistant message that carries one (`reasoning_content`, or `<think>...</think>` in `content`) is therefore
    written as `<think>\n{reasoning}\n</think>\n\n{answer}` between the template's own assistant prefix and
    end-of-turn text; the generation prompt's part (`<｜Assistant｜><think>\n`) is context, the rest a target, so
    training matches what the model sees at inference. Earlier assistant turns stay as the template renders them
    (as they appear in later prompts).
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise DataError("chat 'messages' need a tokenizer with a chat template (apply_chat_template)")
    encode = encode or encoder(tokenizer)

    def render(msgs: Sequence[Message], generation_prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:
            if not msgs:  # some templates refuse an empty conversation
                return ""
            raise DataError(f"the chat template failed on a conversation: {e}") from e

    ids: list[int] = []
    mask: list[int] = []

    def add(text: str, target: int) -> None:
        if text:
            enc = encode(text)
            ids.extend(enc)
            mask.extend([target] * len(enc))

    traced = [k for k, m in enumerate(messages) if m.get("role") == "assistant" and _trace(m) is not None]
    prev = render([])
    for k, message in enumerate(messages):
        cur = render(messages[: k + 1])
        if not cur.startswith(prev):
            raise DataError(f"the chat template rewrites earlier turns when message {k} is added; cannot locate "
                            "the assistant tokens")
        segment = cur[len(prev):]
        if message["role"] == "assistant":
            prompt = render(messages[:k], generation_prompt=True)
            if traced and k == traced[-1] and _trace(message)[0].strip() not in segment:
                segment = _with_trace(render, messages, k, prev)  # the template dropped the trace: put it back
            n = _common_prefix(prompt[len(prev):], segment) if prompt.startswith(prev) else 0
            add(segment[:n], 0)
            add(segment[n:], 1)
        else:
            add(segment, 0)
        prev = cur
    return Example(ids, mask)


def encode_document(tokenizer: Any, doc: Document, encode: Callable[[str], list[int]] | None = None) -> Example:
    """One document as `[BOS] ... [EOS]`; a chat keeps its assistant loss mask (added BOS/EOS are not targets)."""
    encode = encode or encoder(tokenizer)
    bos, eos = getattr(tokenizer, "bos_token_id", None), tokenizer.eos_token_id
    if isinstance(doc, str):
        return Example(([bos] if bos is not None else []) + encode(doc) + [eos])
    ex = encode_chat(tokenizer, doc, encode)
    if bos is not None and (not ex.input_ids or ex.input_ids[0] != bos):
        ex = Example([bos] + ex.input_ids, [0] + ex.loss_mask)
    if ex.input_ids[-1] != eos:
        ex = Example(ex.input_ids + [eos], ex.loss_mask + [0])
    return ex
