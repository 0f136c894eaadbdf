"""The tokenizer: Hugging Face `tokenizer.json` + `tokenizer_config.json` through the `tokenizers` library (core), chat
templates rendered with Jinja exactly as transformers renders them (chat), and byte-level BPE training for new models
(train).

DeepSeek-V3/R1 put BOS (id 0), EOS (id 1) and pad (id 2) first; `<think>`, `</think>`, `<｜User｜>`, `<｜Assistant｜>`
and the tool markers are added tokens that are *not* special, so `decode(..., skip_special_tokens=True)` keeps them
and reasoning parsers can see them. `｜` is U+FF5C and `▁` U+2581. (Source: the `added_tokens` of DeepSeek-R1's
tokenizer.json, https://huggingface.co/deepseek-ai/DeepSeek-R1/blob/main/tokenizer.json, a copy of which is in
tests/fixtures/deepseek-r1-tokenizer.)
"""
from .chat import (ASSISTANT, BOS, CHAT_TOKENS, DEEPSEEK_R1_CHAT_TEMPLATE, EOS, MAX_TEMPLATE_CHARS, PAD, ROLES,
                   SPECIAL_TOKENS, THINK_END, THINK_START, TOOL_TOKENS, USER, normalize_messages)
from .core import DecodeStream, Tokenizer
from .train import train_tokenizer

__all__ = ["ASSISTANT", "BOS", "CHAT_TOKENS", "DEEPSEEK_R1_CHAT_TEMPLATE", "EOS", "MAX_TEMPLATE_CHARS", "PAD", "ROLES",
           "SPECIAL_TOKENS", "THINK_END", "THINK_START", "TOOL_TOKENS", "USER", "DecodeStream", "Tokenizer",
           "normalize_messages", "train_tokenizer"]
