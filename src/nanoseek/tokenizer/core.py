"""`Tokenizer`: a Hugging Face fast tokenizer (`tokenizer.json` + `tokenizer_config.json`, read with the `tokenizers`
library) with transformers' encode/decode and chat-template behaviour, saved atomically."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, processors

from ..files import atomic_dir, atomic_write, read_json_object
from .chat import MAX_TEMPLATE_CHARS, compile_template, normalize_messages, plain_data

def _token_content(value: Any) -> str | None:
    """`bos_token` & co. in tokenizer_config.json: a string or a serialized AddedToken ({"content": ...})."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"tokenizer_config.json: cannot read special token {value!r}")



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
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found")
        config = read_json_object(cfg_file)
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
            self._compiled[source] = compile_template(source)
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
        variables.update(plain_data(kwargs, "chat template variables"))
        try:
            parts, size = [], 0
            for part in self._compiled[source].generate(
                    messages=msgs, tools=plain_data(tools, "tools"), documents=plain_data(documents, "documents"),
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
                atomic_write(d / name, text)
            return

        def fill(tmp: Path) -> None:
            for name, text in files.items():
                (tmp / name).write_bytes(text.encode("utf-8"))
        atomic_dir(d, fill)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, pad={self.pad_token!r})")
