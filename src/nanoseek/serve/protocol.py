"""The OpenAI/DeepSeek wire format: request validation, error bodies and response objects.

Requests are validated with pydantic in strict mode (a string where a number belongs is a 400, not a coercion) and
every problem becomes OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` naming the field.
Responses are plain dicts shaped as OpenAI's chat.completion / chat.completion.chunk / text_completion objects with
DeepSeek's additions: `reasoning_content` beside `content`, `usage.completion_tokens_details.reasoning_tokens`,
`prompt_cache_hit_tokens` / `prompt_cache_miss_tokens` with prompt_tokens = hit + miss
(https://api-docs.deepseek.com/api/create-chat-completion, https://api-docs.deepseek.com/guides/kv_cache).
Fields beyond OpenAI's that vLLM also accepts (top_k, min_p, ignore_eos, min_tokens, stop_token_ids,
skip_special_tokens, include_stop_str_in_output, chat_template_kwargs) are honoured, plus nanoseek's
`max_thinking_tokens` (a reasoning budget); other unknown fields are ignored, as vLLM does.
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..infer.sampling import MAX_COUNT, MAX_TOKEN_ID

# ---------------------------------------------------------------------------------------------------- errors
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered in OpenAI's shape with `status`; `headers` e.g. Retry-After."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _loc(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the caller wrote it: `messages[0].content`. Parts naming a union member
    (`str`, `list[int]`, `function-after[...]`) are pydantic's, not the request's, and are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_NAMES or any(c in str(part) for c in "[(-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_error(e: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the field."""
    err = e.errors(include_url=False)[0]
    param = _loc(err["loc"]) or None
    got = err.get("input")
    got_s = "" if err["type"] == "missing" else f" (got {type(got).__name__} {_short(got)})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return APIError(400, f"{param or 'request'}: {msg}{got_s}", param=param)


def _short(v: Any, limit: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object (got {type(data).__name__})")
    check_text(data)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


# ---------------------------------------------------------------------------------------------------- requests
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_STOP_IDS = 64
# Sampling settings other servers (vLLM) accept and this one does not implement: refused with a 400, not ignored
# like unknown fields are, so that a client asking for one does not silently get sampling it did not ask for.
UNSUPPORTED = ("repetition_penalty", "length_penalty", "use_beam_search", "prompt_logprobs", "guided_json",
               "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "bad_words",
               "allowed_token_ids")


def check_text(obj: Any, where: str = "request") -> None:
    """JSON may carry lone UTF-16 surrogates (`"\\ud800"`), which are not text: refuse them with a 400."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{where}: invalid Unicode (a lone surrogate escape such as \\ud800)") from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_text(k, where)
            check_text(v, f"{where}.{k}" if where != "request" else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_text(v, f"{where}[{i}]")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=MAX_COUNT)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    min_tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] | None = Field(None, max_length=MAX_STOP_IDS)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    max_thinking_tokens: int | None = Field(None, ge=0, le=MAX_COUNT)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in UNSUPPORTED:
                if data.get(name) is not None:
                    raise ValueError(f"{name}: not supported by this server")
        return data

    def check_common(self) -> None:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if any(not s for s in stops):
            raise APIError(400, "stop: stop sequences must be non-empty strings", param="stop")
        # each generated token is searched for every stop string: bound the work a request can ask for
        if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise APIError(400, f"stop: at most {MAX_STOP} sequences of at most {MAX_STOP_CHARS} characters",
                           param="stop")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options: only allowed when stream is true", param="stream_options")
        if self.logit_bias:
            raise APIError(400, "logit_bias: not supported by this server", param="logit_bias")
        if self.seed is not None and not -2**63 <= self.seed < 2**63:
            raise APIError(400, "seed: must fit in 64 bits", param="seed")
        if self.stop_token_ids and any(t < 0 for t in self.stop_token_ids):
            raise APIError(400, "stop_token_ids: token ids must be >= 0", param="stop_token_ids")

    def sampling_kwargs(self) -> dict[str, Any]:
        """SamplingParams keyword arguments (max_tokens, n and logprobs are set by the endpoint)."""
        kw: dict[str, Any] = dict(stop=self.stop, stop_token_ids=self.stop_token_ids, seed=self.seed,
                                  ignore_eos=self.ignore_eos, skip_special_tokens=self.skip_special_tokens,
                                  include_stop_str_in_output=self.include_stop_str_in_output,
                                  max_thinking_tokens=self.max_thinking_tokens, output_kind="delta")
        for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                     "min_tokens"):
            v = getattr(self, name)
            if v is not None:
                kw[name] = v
        return kw


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def check(self) -> None:
        self.check_common()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: requires logprobs to be true", param="top_logprobs")
        if self.tools:
            raise APIError(400, "tools: function calling is not supported by this server", param="tools")
        if self.tool_choice is not None and self.tool_choice not in ("none", "auto"):
            raise APIError(400, "tool_choice: only 'none' or 'auto' (function calling is not supported by this "
                                "server)", param="tool_choice")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise APIError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree; give one", param="max_tokens")

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
              "tool": "tool"}


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template wants them: text parts joined, `developer` as `system`."""
    out = []
    for i, m in enumerate(req.messages):
        role = CHAT_ROLES.get(m.role)
        if role is None:
            raise APIError(400, f"messages[{i}].role: unknown role {m.role!r} (expected one of "
                                f"{', '.join(CHAT_ROLES)})", param=f"messages[{i}].role")
        content = m.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"messages[{i}].content[{j}]: only text parts are supported (got type "
                                        f"{part.type!r})", param=f"messages[{i}].content[{j}].type")
            content = "".join(p.text or "" for p in content)
        if content is None and not m.tool_calls:
            raise APIError(400, f"messages[{i}].content: missing (this {m.role} message needs content)",
                           param=f"messages[{i}].content")
        msg: dict[str, Any] = {"role": role, "content": content}
        for k in ("name", "reasoning_content", "tool_calls", "tool_call_id"):
            v = getattr(m, k)
            if v is not None:
                msg[k] = v
        out.append(msg)
    return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, le=MAX_COUNT)  # the legacy endpoint's default
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def check(self) -> None:
        self.check_common()
        if self.suffix:
            raise APIError(400, "suffix: not supported by this server", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "best_of: only best_of == n is supported", param="best_of")
        if self.echo and self.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported (no prompt logprobs)", param="echo")
        p = self.prompt
        if isinstance(p, list) and not p or isinstance(p, list) and any(isinstance(x, list) and not x for x in p):
            raise APIError(400, "prompt: must not be empty", param="prompt")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def finite(x: float) -> float:
    """JSON has no NaN or infinities; OpenAI reports unlikely tokens as -9999.0."""
    return x if math.isfinite(x) else -9999.0


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int, cached_tokens: int = 0
          ) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "prompt_cache_hit_tokens": cached_tokens, "prompt_cache_miss_tokens": prompt_tokens - cached_tokens}


def model_card(name: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "nanoseek", "root": name,
            "max_model_len": max_model_len}


def context_overflow(max_len: int, prompt_tokens: int, completion_tokens: int | None, what: str) -> APIError:
    """OpenAI's wording, which client libraries pattern-match to detect an overflow."""
    if completion_tokens is None:
        msg = (f"This model's maximum context length is {max_len} tokens. However, your {what} resulted in "
               f"{prompt_tokens} tokens. Please reduce the length of the {what}.")
    else:
        msg = (f"This model's maximum context length is {max_len} tokens. However, you requested "
               f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the {what}, {completion_tokens} "
               f"in the completion). Please reduce the length of the {what} or completion.")
    return APIError(400, msg, param="messages" if what == "messages" else "prompt", code="context_length_exceeded")
