"""Chat SFT: reasoning traces are trained (not stripped by the R1 template), assistant-only loss, the sft command."""
import json

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


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_args(tmp_path, *extra):
    return ["sft", "--max_steps", "6", "--seq_len", "96", "--batch_size", "4", "--eval_every", "3",
            "--ckpt_every", "3", "--eval_batches", "2", "--run_dir", str(tmp_path), "--progress", "false",
            "--threads", "1", "--lr", "3e-3", "--warmup_steps", "1", *extra]


def test_sft_command_on_a_builtin_task(model_dir, tmp_path):
    assert main(run_args(tmp_path, "--model", model_dir, "--task", "arithmetic", "--task-examples", "200",
                         "--task-levels", "1,2")) == 0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7)) and "val_loss" in rows[-1]
    assert rows[-1]["ce"] < rows[0]["ce"]  # fine-tuning from the pretrained weights learns
    out = tmp_path / "model"
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    tuned, base = load_pretrained(out), load_pretrained(model_dir)
    assert not torch.equal(tuned.head.weight, base.head.weight)  # started from the base weights, then moved
    assert Tokenizer.from_pretrained(out).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    # the data were written as chat jsonl with reasoning_content and prepared into the run directory
    [jsonl] = (tmp_path / "data").glob("task-arithmetic-*.jsonl")
    assert json.loads(jsonl.open().readline())["messages"][1]["reasoning_content"]
    assert (jsonl.parent / jsonl.stem / "manifest.json").exists()
    # resume continues from the last checkpoint to a longer horizon
    assert main(run_args(tmp_path, "--model", model_dir, "--task", "arithmetic", "--task-examples", "200",
                         "--task-levels", "1,2", "--max_steps", "8", "--resume", "true")) == 0
    assert json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])["step"] == 8


def test_sft_command_on_chat_jsonl_and_bad_input(model_dir, tmp_path, capsys):
    chats = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                          {"role": "assistant", "content": f"\\boxed{{{2 * i}}}",
                           "reasoning_content": f"{i}+{i}={2 * i}"}]}
            for i in range(40)]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(run_args(tmp_path / "a", "--model", model_dir, "--data", str(chats), "--max_steps", "2")) == 0
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "plain pretraining text"}) + "\n")
    assert main(run_args(tmp_path / "b", "--model", model_dir, "--data", str(text))) == 2
    assert "no chat `messages` rows" in capsys.readouterr().err
    assert main(run_args(tmp_path / "c", "--model", model_dir)) == 2
    assert "sft needs --data" in capsys.readouterr().err
    assert main(run_args(tmp_path / "d", "--model", model_dir, "--data", str(tmp_path / "missing.jsonl"))) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err


def test_task_rows_with_shortcuts():
    """`shortcuts` replaces that fraction of the worked solutions by their last step (the result without the work),
    deterministically per seed; 0 and 1 are all worked and all shortcuts; other values are refused."""
    from nanoseek.train.sft import task_sft_rows
    worked = task_sft_rows("arithmetic", 400, [2, 3], seed=3)
    mixed = task_sft_rows("arithmetic", 400, [2, 3], seed=3, shortcuts=0.5)
    assert mixed == task_sft_rows("arithmetic", 400, [2, 3], seed=3, shortcuts=0.5)
    assert all(r["worked"] for r in worked) and [r["id"] for r in worked] == [r["id"] for r in mixed]
    assert 150 < sum(not r["worked"] for r in mixed) < 250
    for full, row in zip(worked, mixed):
        steps = full["messages"][1]["reasoning_content"].split("\n")
        assert len(steps) > 1 and row["messages"][1]["content"] == full["messages"][1]["content"]
        want = steps if row["worked"] else steps[-1:]  # e.g. "347+85=432"
        assert row["messages"][1]["reasoning_content"].split("\n") == want
    assert not any(r["worked"] for r in task_sft_rows("arithmetic", 20, [2], shortcuts=1.0))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="shortcuts"):
            task_sft_rows("arithmetic", 5, [2], shortcuts=bad)
