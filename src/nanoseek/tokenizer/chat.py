"""The DeepSeek-R1 chat format: its tokens, its chat template, and Jinja rendering with transformers' semantics in a
sandbox (a template cannot run code, recurse without bound or build huge values)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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


# ------------------------------------------------------------------------------------------------ Jinja rendering
# The most characters a chat template may render (and the largest value it may build with `*`): a template that
# recurses or builds a huge string fails with a clear error instead of taking the server's CPU and memory.
MAX_TEMPLATE_CHARS = 8 << 20


def compile_template(source: str):
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


def plain_data(value: Any, where: str) -> Any:
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
        return {str(k): plain_data(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, where) for v in value]
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
        msg = plain_data({k: v for k, v in m.items() if v is not None or k == "content"}, f"messages[{i}]")
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out

