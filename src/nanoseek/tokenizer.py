"""The tokenizer: Hugging Face `tokenizer.json` + `tokenizer_config.json` through the `tokenizers` library, chat
templates rendered with Jinja exactly as transformers renders them, and byte-level BPE training for new models.

Facts (../shared/reference/serving.md, section 6): DeepSeek-V3/R1 put BOS (id 0), EOS (id 1) and pad (id 2) first;
`<think>`, `</think>`, `<｜User｜>`, `<｜Assistant｜>` and the tool markers are added tokens that are *not* special, so
`decode(..., skip_special_tokens=True)` keeps them and reasoning parsers can see them. `｜` is U+FF5C and `▁` U+2581.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
TOOL_TOKENS = (
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
)
# Special tokens get ids 0, 1, 2 as in DeepSeek's files; the chat markers follow and, as there, are not "special".
SPECIAL_TOKENS = (BOS, EOS, PAD)
CHAT_TOKENS = (USER, ASSISTANT, THINK_START, THINK_END, *TOOL_TOKENS)
ROLES = ("system", "user", "assistant", "tool")

# The DeepSeek-R1 chat template, rewritten readably; it renders byte-for-byte what the official one renders
# (tests compare both over many conversations), quirks included, so that a model nanoseek trains is prompted exactly
# like R1: system prompts joined by a blank line right after BOS; earlier assistant turns keep only the text after
# their last `</think>`; the generation prompt pre-fills `<think>\n`. The official tool-call handling is kept as is:
# only the first assistant tool-call message of a conversation gets the `<｜Assistant｜>` prefix, tool results open
# `<｜tool▁outputs▁begin｜>` only once, and the answer after tool results follows `<｜tool▁outputs▁end｜>` directly.
DEEPSEEK_R1_CHAT_TEMPLATE = """
{%- if add_generation_prompt is not defined -%}{%- set add_generation_prompt = false -%}{%- endif -%}
{%- set ns = namespace(first_call=true, in_tool=false, first_output=true, system='', any_system=false) -%}
{%- for m in messages if m['role'] == 'system' -%}
  {%- set ns.system = ns.system + ('\\n\\n' if ns.any_system else '') + m['content'] -%}
  {%- set ns.any_system = true -%}
{%- endfor -%}
{{- bos_token -}}{{- ns.system -}}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}
    {%- set ns.in_tool = false -%}
    {{- '<｜User｜>' + m['content'] -}}
  {%- elif m['role'] == 'assistant' and 'tool_calls' in m -%}
    {%- set ns.in_tool = false -%}
    {%- for call in m['tool_calls'] -%}
      {%- if ns.first_call -%}
        {{- '<｜Assistant｜>' + (m['content'] if m['content'] is not none else '') + '<｜tool▁calls▁begin｜>' -}}
        {%- set ns.first_call = false -%}
      {%- else -%}
        {{- '\\n' -}}
      {%- endif -%}
      {{- '<｜tool▁call▁begin｜>' + call['type'] + '<｜tool▁sep｜>' + call['function']['name'] + '\\n```json\\n'
          + call['function']['arguments'] + '\\n```<｜tool▁call▁end｜>' -}}
    {%- endfor -%}
    {{- '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' -}}
  {%- elif m['role'] == 'assistant' -%}
    {%- if ns.in_tool -%}
      {{- '<｜tool▁outputs▁end｜>' + m['content'] + '<｜end▁of▁sentence｜>' -}}
      {%- set ns.in_tool = false -%}
    {%- else -%}
      {{- '<｜Assistant｜>' + m['content'].split('</think>')[-1] + '<｜end▁of▁sentence｜>' -}}
    {%- endif -%}
  {%- elif m['role'] == 'tool' -%}
    {%- set ns.in_tool = true -%}
    {%- if ns.first_output -%}
      {{- '<｜tool▁outputs▁begin｜>' -}}
      {%- set ns.first_output = false -%}
    {%- endif -%}
    {{- '<｜tool▁output▁begin｜>' + m['content'] + '<｜tool▁output▁end｜>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if ns.in_tool -%}{{- '<｜tool▁outputs▁end｜>' -}}{%- endif -%}
{%- if add_generation_prompt and not ns.in_tool -%}{{- '<｜Assistant｜><think>\\n' -}}{%- endif -%}
""".strip()

# Names a message's reasoning travels under; transformers copies it to the first two before rendering.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _token_content(value: Any) -> str | None:
    """`bos_token` & co. in tokenizer_config.json: a string or a serialized AddedToken ({"content": ...})."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"tokenizer_config.json: cannot read special token {value!r}")


def _atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: readers never see a partial file.
    (os.open with mode 0o666 lets the umask decide permissions, unlike mkstemp's 0o600.)"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------------------ Jinja rendering
# The most characters a chat template may render (and the largest value it may build with `*`): a template that
# recurses or builds a huge string fails with a clear error instead of taking the server's CPU and memory.
MAX_TEMPLATE_CHARS = 8 << 20


def _compile_template(source: str):
    """A sandboxed Jinja environment with the semantics transformers gives chat templates: trim_blocks and
    lstrip_blocks, loop controls, a `{% generation %}` block (rendered as its body), `raise_exception`,
    `strftime_now`, a non-escaping `tojson`, and namespaces that refuse underscore attributes."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it renders as is.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat template sets underscore attribute {name!r} on a namespace")

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # positional `self` so that `namespace(self=...)` works, as in Jinja
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """`*` and `**` cannot build values past the output limit (`'x' * 10**9` is one operation, so bounding the
        rendered text alone would come too late)."""
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_CHARS:
                        raise jinja2.exceptions.SecurityError(
                            f"chat template builds a value of more than {MAX_TEMPLATE_CHARS:,} items")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise jinja2.exceptions.SecurityError("chat template raises to a power above 64")
            return super().call_binop(context, operator, left, right)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       namespace=Namespace)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not parse (line {e.lineno}): {e.message}") from None


def _plain(value: Any, where: str) -> Any:
    """A copy made of JSON types only: the template sees no objects with methods of their own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy scalars) are cut back to the base type, losing any methods of their own.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise ValueError(f"{where}: {type(value).__name__} is not JSON data")


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check OpenAI-style messages and prepare them as transformers does: keys whose value is None are dropped
    (except `content`, so templates can test `content is none` on tool-call messages), and reasoning given under
    `reasoning_content`, `thinking` or `reasoning` is available under the first two."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        tool_calls = m.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant":
                raise ValueError(f"messages[{i}]: only assistant messages carry tool_calls, not {role!r}")
            if not isinstance(tool_calls, list) or not all(isinstance(c, Mapping) for c in tool_calls):
                raise ValueError(f"messages[{i}]: tool_calls must be a list of dicts")
        if not isinstance(content, str) and not (content is None and tool_calls is not None):
            what = "missing" if "content" not in m else f"a {type(content).__name__}"
            raise ValueError(f"messages[{i}] ({role}): content must be a string, got {what}")
        msg = _plain({k: v for k, v in m.items() if v is not None or k == "content"}, f"messages[{i}]")
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


# ------------------------------------------------------------------------------------------------------ Tokenizer
class DecodeStream:
    """`tokenizers.decoders.DecodeStream` bound to its tokenizer."""

    def __init__(self, backend: tokenizers.Tokenizer, skip_special_tokens: bool = False):
        self._backend = backend
        self._stream = decoders.DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, id: int) -> str | None:
        return self._stream.step(self._backend, int(id))


class Tokenizer:
    """A Hugging Face fast tokenizer (`tokenizer.json`) with its `tokenizer_config.json`.

    `vocab_size` counts every id (base vocabulary and added tokens), i.e. `len(tokenizer)` in transformers: the
    number of embedding rows a model needs at least. BOS/EOS are added by `encode(..., add_special_tokens=True)` as
    `add_bos_token` / `add_eos_token` in tokenizer_config.json say (DeepSeek's files: BOS only), the behaviour of
    transformers 4 and of DeepSeek's reference code; transformers 5 ignores those flags when a tokenizer.json is
    present and adds nothing for DeepSeek's files. Chat ids never depend on this: the template writes BOS itself.
    """

    def __init__(self, backend: tokenizers.Tokenizer, config: Mapping[str, Any] | None = None,
                 chat_template: str | dict[str, str] | None = None, name_or_path: str = ""):
        self.backend = backend
        self.config = dict(config or {})
        self.name_or_path = name_or_path
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.pad_token = _token_content(self.config.get("pad_token"))
        self.unk_token = _token_content(self.config.get("unk_token"))
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            token = getattr(self, name)
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"tokenizer_config.json: {name} {token!r} is not in the vocabulary of {name_or_path}")
        self.model_max_length: int | None = self.config.get("model_max_length")
        self.chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # old format: [{"name": ..., "template": ...}, ...]
            self.chat_template = {t["name"]: t["template"] for t in self.chat_template}
        self._compiled: dict[str, Any] = {}
        if "add_bos_token" in self.config or "add_eos_token" in self.config:
            self._set_bos_eos(bool(self.config.get("add_bos_token")), bool(self.config.get("add_eos_token")))

    def _set_bos_eos(self, add_bos: bool, add_eos: bool) -> None:
        # A TemplateProcessing post-processor, as transformers 4's Llama tokenizer installs for these flags.
        if (add_bos and self.bos_token is None) or (add_eos and self.eos_token is None):
            raise ValueError("tokenizer_config.json: add_bos_token/add_eos_token set but the token is not defined")
        bos = [self.bos_token] if add_bos else []
        eos = [self.eos_token] if add_eos else []
        single = " ".join([f"{t}:0" for t in bos] + ["$A:0"] + [f"{t}:0" for t in eos])
        pair = single + " " + " ".join([f"{t}:1" for t in bos] + ["$B:1"] + [f"{t}:1" for t in eos])
        self.backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, self.backend.token_to_id(t)) for t in bos + eos])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """A directory holding `tokenizer.json` and `tokenizer_config.json` (and optionally `chat_template.jinja`,
        which transformers 5 writes and which takes priority over the config's `chat_template`)."""
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {d}")
        tok_file, cfg_file, jinja_file = d / "tokenizer.json", d / "tokenizer_config.json", d / "chat_template.jinja"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file} not found (nanoseek reads fast tokenizers only: tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:
            raise ValueError(f"{tok_file} is not a valid tokenizer.json: {e}") from None
        config: dict[str, Any] = {}
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{cfg_file} must hold a JSON object, not {type(config).__name__}")
        else:
            raise FileNotFoundError(f"{cfg_file} not found")
        template = jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None
        return cls(backend, config, template, name_or_path=str(d))

    # ----------------------------------------------------------------------------------------- ids and tokens
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.backend.id_to_token(id)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the added tokens marked special (removed by `skip_special_tokens`)."""
        return sorted(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    @property
    def added_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()}

    # ------------------------------------------------------------------------------------------ encode/decode
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids outside the vocabulary (a model's padded embedding rows) decode to nothing."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = False) -> "DecodeStream":
        """Incremental detokenizer for one sequence: `.step(id)` returns the new text, or None while a UTF-8
        character is still incomplete; the pieces joined equal `decode` of all the ids."""
        return DecodeStream(self.backend, skip_special_tokens)

    # ------------------------------------------------------------------------------------------ chat template
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template source: an explicit one, a named one, or the tokenizer's (`tool_use` when tools are given
        and the tokenizer has several)."""
        own = self.chat_template
        if isinstance(own, dict):
            if chat_template is not None:
                return own.get(chat_template, chat_template)
            name = "tool_use" if tools is not None and "tool_use" in own else "default"
            if name not in own:
                raise ValueError(f"{self.name_or_path}: several chat templates ({sorted(own)}) and none is 'default'")
            return own[name]
        if chat_template is not None:
            return chat_template
        if own is None:
            raise ValueError(f"{self.name_or_path or 'this tokenizer'} has no chat_template in tokenizer_config.json")
        return own

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, tools: list[dict] | None = None,
                            documents: list[dict] | None = None, continue_final_message: bool = False,
                            chat_template: str | None = None, **kwargs: Any) -> str | list[int]:
        """Render OpenAI-style messages with the tokenizer's Jinja chat template, as transformers'
        `apply_chat_template` does (same variables: messages, tools, documents, add_generation_prompt, bos_token,
        eos_token, pad_token, unk_token, and any extra keyword such as `thinking`). `tokenize=True` returns ids,
        encoded without adding BOS again. `continue_final_message` leaves the last message open for the model to
        continue (prefix completion)."""
        import jinja2

        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be set")
        msgs = normalize_messages(messages)
        if tools is not None and not all(isinstance(t, Mapping) for t in tools):
            raise ValueError("tools must be a list of JSON-schema dicts")
        source = self.get_chat_template(chat_template, tools)
        if source not in self._compiled:
            self._compiled[source] = _compile_template(source)
        # A marker after the final message shows where it ends once rendered (templates add EOS after it).
        marker = "\u2063NANOSEEK_CONTINUE\u2063"
        final = None
        if continue_final_message:
            final = msgs[-1].get("content")
            if not final:
                raise ValueError(f"continue_final_message: messages[{len(msgs) - 1}] has no content to continue")
            msgs[-1]["content"] = final + marker
        variables = {k: getattr(self, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                     if getattr(self, k) is not None}
        variables.update(_plain(kwargs, "chat template variables"))
        try:
            parts, size = [], 0
            for part in self._compiled[source].generate(
                    messages=msgs, tools=_plain(tools, "tools"), documents=_plain(documents, "documents"),
                    add_generation_prompt=add_generation_prompt, **variables):
                size += len(part)
                if size > MAX_TEMPLATE_CHARS:
                    raise ValueError(f"chat template failed: it renders more than {MAX_TEMPLATE_CHARS:,} characters")
                parts.append(part)
            text = "".join(parts)
        except RecursionError:
            raise ValueError("chat template failed: it recurses too deeply") from None
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from None
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"chat template failed on these messages ({type(e).__name__}: {e})") from None
        if continue_final_message:
            at = text.rfind(marker)
            if at < 0:
                raise ValueError("continue_final_message: the template does not render the final message's content")
            text = text[:at]
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ------------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `tokenizer_config.json` and `tokenizer.json`. A new directory is written under a temporary name
        and renamed into place; in an existing one (a model directory) each file is replaced atomically, and
        tokenizer.json last, so its presence means the pair is complete."""
        d = Path(path)
        config = dict(self.config)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        files = {"tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                 "tokenizer.json": self.backend.to_str(pretty=True)}
        if d.exists():
            if not d.is_dir():
                raise ValueError(f"{d} exists and is not a directory")
            for name, text in files.items():
                _atomic_write_text(d / name, text)
            return
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        try:
            for name, text in files.items():
                _atomic_write_text(tmp / name, text)
            os.rename(tmp, d)
        except BaseException:
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
            raise

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, pad={self.pad_token!r})")


# ------------------------------------------------------------------------------------------------------- training
# DeepSeek-V3's pre-tokenizer (from its tokenizer.json): numbers split into runs of at most 3 digits (`max_digits`
# below makes that 1 or 2), CJK runs isolated, then a GPT-style split (punctuation+letters, letters with one leading
# non-letter, punctuation runs, newlines, spaces), then byte-level mapping. BPE merges never cross these pieces.
_TEXT_PATTERNS = (
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
)


def _split_patterns(max_digits: int = 3) -> tuple[str, ...]:
    return (rf"\p{{N}}{{1,{max_digits}}}", *_TEXT_PATTERNS)


def _read_files(paths: Sequence[str | os.PathLike], chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Yield the text of files in chunks of whole lines. Directories expand to their `*.txt` files, sorted, so
    the order (and so the trained tokenizer) is deterministic."""
    files: list[Path] = []
    for item in paths:
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"training files must be paths, got {type(item).__name__}")
        p = Path(item)
        if p.is_dir():
            found = sorted(p.rglob("*.txt"))
            if not found:
                raise FileNotFoundError(f"no *.txt files under {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"training text file not found: {p}")
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                while chunk := fh.read(chunk_chars):
                    yield chunk + fh.readline()
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def train_tokenizer(files: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str], vocab_size: int,
                    out_dir: str | os.PathLike | None = None, *, min_frequency: int = 2,
                    model_max_length: int = 4096, chat_template: str = DEEPSEEK_R1_CHAT_TEMPLATE,
                    max_digits: int = 3, show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer with DeepSeek's pre-tokenizer and special tokens on text files (or an
    iterator of strings), and write `tokenizer.json` + `tokenizer_config.json` to `out_dir` if given.

    `files`: a path, or a list of paths (directories expand to their `*.txt` files); an iterator (a generator,
    `iter(list_of_texts)`) is read as the text itself.

    `vocab_size` is the total number of ids, special and chat tokens included: BOS 0, EOS 1, pad 2, then
    `<｜User｜>`, `<｜Assistant｜>`, `<think>`, `</think>` and the tool-call markers, then 256 byte tokens and merges.
    `encode` adds BOS (the post-processor is in tokenizer.json itself, so every loader agrees). Deterministic for
    the same input.

    `max_digits`: the longest run of digits one token may hold: 3 as DeepSeek-V3 (whose BPE then holds every number
    below 1000 in one token); 1 gives one token per digit (as LLaMA and Qwen), which a small model needs to learn
    column arithmetic: with 2-3 digit tokens it must also learn which digits each number token holds."""
    if not isinstance(max_digits, int) or isinstance(max_digits, bool) or not 1 <= max_digits <= 3:
        raise ValueError(f"max_digits must be 1, 2 or 3, got {max_digits!r}")
    reserved = len(SPECIAL_TOKENS) + len(CHAT_TOKENS)
    minimum = reserved + len(pre_tokenizers.ByteLevel.alphabet())
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} ({reserved} special + 256 bytes), got {vocab_size}")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if isinstance(files, Iterator):
        source: Iterable[str] = files
    elif isinstance(files, Sequence):
        source = _read_files(files)
    else:
        raise ValueError(f"files must be a path, a list of paths or an iterator of strings, not {type(files).__name__}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(tokenizers.Regex(p), behavior="isolated") for p in _split_patterns(max_digits)]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    seen = False

    def texts() -> Iterator[str]:
        nonlocal seen
        for t in source:
            if not isinstance(t, str):
                raise ValueError(f"training texts must be strings, got {type(t).__name__}")
            seen = seen or bool(t.strip())
            yield t
    tok.train_from_iterator(texts(), trainer)
    if not seen:
        raise ValueError("no text to train the tokenizer on (empty input)")
    # The chat markers are ordinary added tokens, as in DeepSeek's files: decode(skip_special_tokens=True) keeps them.
    spec = json.loads(tok.to_str())
    for t in spec["added_tokens"]:
        t["special"] = t["content"] in SPECIAL_TOKENS
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template,
    }
    result = Tokenizer(tok, config, name_or_path=str(out_dir or ""))
    if out_dir is not None:
        result.save_pretrained(out_dir)
    return result
