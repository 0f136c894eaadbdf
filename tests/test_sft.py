"""Chat SFT: reasoning traces are trained (not stripped by the R1 template), assistant-only loss, the sft command."""
import json
import os

import pytest
import torch

from nanoseek import Tokenizer, Transformer, load_pretrained, save_pretrained, tasks
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.data import IGNORE_INDEX, encode_chat, encode_document, pack_sft
from nanoseek.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    """A small byte-level BPE (R1 chat template) trained on worked arithmetic solutions."""
    task = tasks.get("arithmetic")
    docs = [task.document(e) for e in task.examples(300, level=[1, 2, 3], seed=1)]
    return train_tokenizer(iter(docs), vocab_size=300, out_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory) -> str:
    """A tiny random model with its tokenizer, as `nanoseek train` exports one."""
    cfg = ModelConfig.preset("tiny").replace(vocab_size=320, hidden_size=64, intermediate_size=128,
                                             moe_intermediate_size=32, num_hidden_layers=2, q_lora_rank=32,
                                             kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                             v_head_dim=16)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    save_pretrained(Transformer(cfg), out, tokenizer=tok)
    return str(out)


def trained_text(tok, ex) -> str:
    return tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m])


def test_think_trace_is_trained_in_both_forms(tok):
    """The R1 template strips `...</think>` from assistant messages; SFT must still train on the trace."""
    task = tasks.get("arithmetic")
    example = task.examples(1, level=3, seed=3)[0]
    steps = task.reasoning(example)
    gen_prompt = tok.apply_chat_template(task.messages(example), tokenize=False, add_generation_prompt=True)
    encoded = []
    for rc in (False, True):  # `<think>` in content, or the DeepSeek API's reasoning_content field
        ex = encode_document(tok, task.sft_messages(example, reasoning_content=rc))
        trained = trained_text(tok, ex)
        assert steps in trained and trained.endswith(f"</think>\n\n\\boxed{{{example['answer']}}}"
                                                     "<｜end▁of▁sentence｜>")
        # context = exactly the inference prompt (generation prompt pre-fills `<think>\n`), token for token
        n_ctx = ex.loss_mask.index(1)
        assert ex.input_ids[:n_ctx] == tok.encode(gen_prompt, add_special_tokens=False)
        assert all(ex.loss_mask[n_ctx:])
        encoded.append(ex)
    assert encoded[0].input_ids == encoded[1].input_ids and encoded[0].loss_mask == encoded[1].loss_mask


def test_only_the_last_trace_is_kept_and_plain_chats_unchanged(tok):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>\nold\n</think>\n\nA"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "B", "reasoning_content": "new"}]
    ex = encode_chat(tok, msgs)
    text = tok.decode(ex.input_ids)
    assert "old" not in text  # earlier turns as the template renders them (as later prompts show them)
    assert trained_text(tok, ex) == "\n\nA<｜end▁of▁sentence｜>new\n</think>\n\nB<｜end▁of▁sentence｜>"
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert trained_text(tok, encode_chat(tok, plain)) == "Hello<｜end▁of▁sentence｜>"


def test_packed_labels_cover_only_assistant_tokens(tok):
    task = tasks.get("arithmetic")
    rows = task.examples(6, level=2, seed=0)
    examples = [encode_document(tok, task.sft_messages(r)) for r in rows]
    x, y = pack_sft(examples, seq_len=128, pad_token_id=tok.eos_token_id)
    labels = [int(t) for t in y.flatten() if t != IGNORE_INDEX]
    assert tok.decode(labels) == "".join(trained_text(tok, e) for e in examples)
    assert "What is" not in tok.decode(labels) and "<｜User｜>" not in tok.decode(labels)
