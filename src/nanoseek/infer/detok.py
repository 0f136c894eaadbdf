"""Incremental detokenization and stop strings for one generated sequence.

Text is appended one token at a time. A token that ends inside a multi-byte UTF-8 character adds nothing until the
character is complete (the tokenizers library's DecodeStream when the tokenizer offers it; otherwise re-decoding a
short window of recent tokens and holding back text that ends in U+FFFD). Stop strings are searched in the text
around each new piece, so one split across tokens is found; the text is cut before it (vLLM's behaviour) unless
include_stop_str_in_output. While streaming, the last len(longest stop) − 1 characters are held back, since they
could still turn out to begin a stop string.
"""
from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, stop: list[str] | None = None,
                 include_stop: bool = False):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.stop = list(stop or [])
        self.include_stop = include_stop
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.sent = 0  # characters already handed out as deltas
        self.ids: list[int] = []
        self._prefix = self._read = 0
        self._stream = None
        if tokenizer is not None and hasattr(tokenizer, "decode_stream"):  # nanoseek.Tokenizer: `.step(id)`
            self._stream = tokenizer.decode_stream(skip_special_tokens=skip_special_tokens)

    def _piece(self, token: int) -> str:
        if self.tokenizer is None:
            return ""
        if self._stream is not None:
            try:
                return self._stream.step(int(token)) or ""
            except Exception:  # an id outside the vocabulary (padded embedding rows): no text
                return ""
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=self.skip)
        now = self.tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=self.skip)
        if len(now) > len(before) and not now.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def add(self, token: int, check_stop: bool = True) -> str | None:
        """Append one token's text. Returns the stop string if the text now contains one (text cut accordingly)."""
        piece = self._piece(token)
        if not piece or not check_stop:
            self.text += piece
            return None
        start = max(0, len(self.text) - self.hold)
        self.text += piece
        best = None
        for s in self.stop:
            at = self.text.find(s, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, s)
        if best is None:
            return None
        at, s = best
        self.text = self.text[:at + len(s)] if self.include_stop else self.text[:at]
        return s

    def visible(self, final: bool) -> str:
        """The text that can be shown: while not final, without what could still start a stop string."""
        return self.text if final or not self.stop else self.text[:max(self.sent, len(self.text) - self.hold)]

    def delta(self, final: bool) -> str:
        """Text not yet handed out (see `visible`)."""
        end = len(self.visible(final))
        out = self.text[self.sent:end]
        self.sent = end
        return out
