"""Tokenizer: the real DeepSeek-R1 files against transformers (ids, decoding, chat template byte-for-byte), the
nanoseek R1 template against the official one, BPE training round trips, and errors."""
import json
import random
from pathlib import Path

import pytest

from nanoseek.tokenizer import DEEPSEEK_R1_CHAT_TEMPLATE, Tokenizer, train_tokenizer

R1_DIR = Path(__file__).resolve().parent / "fixtures" / "deepseek-r1-tokenizer"  # shipped in the repo


@pytest.fixture(scope="module")
def r1() -> Tokenizer:
    return Tokenizer.from_pretrained(R1_DIR)


@pytest.fixture(scope="module")
def hf_r1(r1):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(R1_DIR)


def corpus() -> str:
    """Python's own documentation (ships with the interpreter): a deterministic offline corpus."""
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))[:300_000]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(corpus(), encoding="utf-8")
    (d / "b.txt").write_text("A think-aloud: 12345 + 678 = 13023. 你好，世界。\n" * 50, encoding="utf-8")
    out = d / "tok"
    train_tokenizer([d / "a.txt", d / "b.txt"], 1000, out)
    return out


# ------------------------------------------------------------------------------------------- conversations
TEXTS = ["Hi", "What is 1+1?", "", " leading space", "line\nbreaks\n\n", "你好，世界", "emoji 😀", "<think>",
         "a</think>b", "x<｜User｜>y", "<｜end▁of▁sentence｜>", "tab\tend ", "12345678", "</think>", "{% raw %}"]


def random_conversation(rng: random.Random, tools: bool) -> list[dict]:
    msgs = [{"role": "system", "content": rng.choice(TEXTS)} for _ in range(rng.choice([0, 0, 1, 2]))]
    for turn in range(rng.randint(1, 4)):
        if rng.random() < 0.15:
            msgs.append({"role": "system", "content": rng.choice(TEXTS)})  # a late system message
        msgs.append({"role": "user", "content": rng.choice(TEXTS)})
        if tools and rng.random() < 0.4:
            calls = [{"type": "function", "function": {"name": rng.choice(["get_weather", "add"]),
                                                       "arguments": json.dumps({"x": rng.randint(0, 9)})}}
                     for _ in range(rng.randint(1, 2))]
            msgs.append({"role": "assistant", "content": rng.choice(TEXTS), "tool_calls": calls})
            msgs += [{"role": "tool", "content": rng.choice(TEXTS)} for _ in range(rng.randint(1, 2))]
            if rng.random() < 0.5:
                continue  # end on tool results
        if turn < 3 or rng.random() < 0.5:
            reply = rng.choice(["<think>\nr\n</think>\n\n", "r</think>", "</think>", "<think>a</think>b</think>",
                                ""]) + rng.choice(TEXTS)
            m = {"role": "assistant", "content": reply}
            if rng.random() < 0.3:
                m[rng.choice(["reasoning_content", "reasoning", "thinking"])] = "earlier reasoning"
            msgs.append(m)
    return msgs


# ------------------------------------------------------------------------------------------- real R1 files
def test_r1_special_tokens(r1):
    assert (r1.bos_token_id, r1.eos_token_id, r1.pad_token_id) == (0, 1, 1)  # pad is EOS in DeepSeek's config
    assert r1.vocab_size == len(r1) == 128815
    ids = {t: r1.token_to_id(t) for t in ["<｜▁pad▁｜>", "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>",
                                          "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>"]}
    assert ids == {"<｜▁pad▁｜>": 2, "<think>": 128798, "</think>": 128799, "<｜User｜>": 128803,
                   "<｜Assistant｜>": 128804, "<｜tool▁calls▁begin｜>": 128806, "<｜tool▁sep｜>": 128814}
    assert r1.token_to_id("<|User|>") is None  # ASCII bars: not the control token
    assert {0, 1, 2}.issubset(r1.all_special_ids) and 128798 not in r1.all_special_ids
    assert r1.model_max_length == 16384


def test_r1_encode_decode_match_transformers(r1, hf_r1):
    texts = TEXTS + ["The quick brown fox, 2025-01-20: $3.50!", "def f(x):\n    return x**2  # ok", "  \n\n  ",
                     "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\nok</think>done<｜end▁of▁sentence｜>"]
    for s in texts:
        ids = r1.encode(s, add_special_tokens=False)
        assert ids == hf_r1.encode(s, add_special_tokens=False), s
        # tokenizer_config.json has add_bos_token=true: BOS first, as transformers 4 and DeepSeek's code do
        # (transformers 5 ignores the flag when tokenizer.json exists, unless it is passed explicitly).
        assert r1.encode(s) == [0] + ids
        for skip in (False, True):
            assert r1.decode(ids, skip_special_tokens=skip) == hf_r1.decode(ids, skip_special_tokens=skip)
    assert r1.encode_batch(texts[:3], add_special_tokens=False) == [r1.encode(t, False) for t in texts[:3]]
    # BOS/EOS are skipped, the chat markers are kept (reasoning parsers need `</think>`).
    ids = r1.encode("<think>a</think>b<｜end▁of▁sentence｜>")
    assert r1.decode(ids, skip_special_tokens=True) == "<think>a</think>b"
    # Ids past the tokenizer (the model's padded embedding rows, up to 129280) decode to nothing.
    assert r1.decode([6366, 129000]) == r1.decode([6366])


def test_r1_decode_stream(r1):
    text = "<think>\n你好，世界 😀 naïve</think>ok<｜end▁of▁sentence｜>"
    ids = r1.encode(text)
    for skip in (False, True):
        stream = r1.decode_stream(skip_special_tokens=skip)
        pieces = [stream.step(i) for i in ids]
        assert "".join(p for p in pieces if p) == r1.decode(ids, skip_special_tokens=skip)
        assert None in pieces  # a multi-byte character split across tokens waits for its last byte


def test_r1_bos_matches_transformers_with_add_bos(r1, hf_r1):
    hf_r1.add_bos_token = True
    try:
        assert r1.encode("What is 1+1?") == hf_r1.encode("What is 1+1?")
    finally:
        hf_r1.add_bos_token = False


def test_r1_template_exact_strings(r1):
    one = [{"role": "user", "content": "What is 1+1?"}]
    assert r1.apply_chat_template(one) == "<｜begin▁of▁sentence｜><｜User｜>What is 1+1?<｜Assistant｜><think>\n"
    two = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
           {"role": "user", "content": "Hi"},
           {"role": "assistant", "content": "<think>\nreason\n</think>\n\nHello!", "reasoning_content": "x"},
           {"role": "user", "content": "Bye"}]
    assert r1.apply_chat_template(two) == ("<｜begin▁of▁sentence｜>A\n\nB<｜User｜>Hi<｜Assistant｜>\n\nHello!"
                                           "<｜end▁of▁sentence｜><｜User｜>Bye<｜Assistant｜><think>\n")
    assert r1.apply_chat_template(two, add_generation_prompt=False).endswith("<｜User｜>Bye")
    ids = r1.apply_chat_template(one, tokenize=True)
    assert ids[0] == 0 and ids.count(0) == 1 and ids[-3:-1] == [128804, 128798]  # BOS once; <｜Assistant｜><think>


@pytest.mark.parametrize("tools", [False, True], ids=["chat", "tool-calls"])
def test_r1_template_matches_transformers(r1, hf_r1, tools):
    rng = random.Random(7 + tools)
    for i in range(150):
        msgs = random_conversation(rng, tools)
        for gen in (True, False):
            expected = hf_r1.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
            assert r1.apply_chat_template(msgs, add_generation_prompt=gen) == expected, msgs
            assert r1.apply_chat_template(msgs, add_generation_prompt=gen,
                                          chat_template=DEEPSEEK_R1_CHAT_TEMPLATE) == expected, msgs
        if i % 10 == 0:
            hf_ids = hf_r1.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
            assert r1.apply_chat_template(msgs, tokenize=True) == hf_ids


def test_r1_tool_call_with_null_content(r1):
    # OpenAI clients send content=None with tool_calls; the template tests `content is none` for this case.
    # (transformers 5 drops None-valued keys first and then fails inside this template.)
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "get", "arguments": "{}"}}]},
            {"role": "tool", "content": "sunny"}]
    expected = ("<｜begin▁of▁sentence｜><｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
                "function<｜tool▁sep｜>get\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
                "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
    assert r1.apply_chat_template(msgs) == expected
    assert r1.apply_chat_template(msgs, chat_template=DEEPSEEK_R1_CHAT_TEMPLATE) == expected


def test_r1_continue_final_message(r1, hf_r1):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nThe user"}]
    out = r1.apply_chat_template(msgs, add_generation_prompt=False, continue_final_message=True)
    assert out == hf_r1.apply_chat_template(msgs, continue_final_message=True, tokenize=False)
    assert out.endswith("<｜Assistant｜><think>\nThe user")


# ------------------------------------------------------------------------------------------- templates
def test_template_environment(trained):
    tok = Tokenizer.from_pretrained(trained)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ValueError, match="no way"):
        tok.apply_chat_template(msgs, chat_template="{{ raise_exception('no way') }}")
    assert tok.apply_chat_template(msgs, chat_template="{% generation %}{{ messages[0].content }}{% endgeneration %}"
                                   ) == "x"
    assert tok.apply_chat_template(msgs, chat_template="{{ {'a': 'é'} | tojson }}") == '{"a": "é"}'
    assert tok.apply_chat_template(msgs, chat_template="{{ thinking }}", thinking=True) == "True"
    # trim_blocks / lstrip_blocks as in transformers
    assert tok.apply_chat_template(msgs, chat_template="  {% if true %}\nA\n  {% endif %}\nB") == "A\nB"
    with pytest.raises(ValueError, match="underscore"):
        tok.apply_chat_template(msgs, chat_template="{% set ns = namespace() %}{% set ns._x = 1 %}")
    with pytest.raises(ValueError, match="does not parse"):
        tok.apply_chat_template(msgs, chat_template="{% if %}")
    with pytest.raises(ValueError, match="unsafe|not safely callable|access to attribute"):
        tok.apply_chat_template(msgs, chat_template="{{ messages.__class__.__mro__ }}{{ ''.format_map }}"
                                                    "{{ (messages.append)(1) }}")


def test_template_renders_are_bounded(trained):
    """Issue 17 item 8: a template that recurses or builds a huge string fails with a clear error (a 400 at the
    server), not a RecursionError or an unbounded allocation; a server refuses such a model at load."""
    tok = Tokenizer.from_pretrained(trained)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ValueError, match="more than 8,388,608 items"):
        tok.apply_chat_template(msgs, chat_template="{{ 'x' * 10**9 }}")
    with pytest.raises(ValueError, match="power above 64"):
        tok.apply_chat_template(msgs, chat_template="{{ 10 ** 100000 }}")
    with pytest.raises(ValueError, match="renders more than 8,388,608 characters"):
        tok.apply_chat_template(msgs, chat_template="{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}")
    with pytest.raises(ValueError, match="recurses too deeply"):
        tok.apply_chat_template(msgs, chat_template="{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    assert tok.apply_chat_template(msgs, chat_template="{{ 'ab' * 3 }}{{ 2 ** 10 }}") == "ababab1024"
    import nanoseek
    from nanoseek.serve import create_app
    tok.chat_template = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
    llm = nanoseek.LLM(nanoseek.Transformer(nanoseek.ModelConfig.preset("tiny").replace(vocab_size=tok.vocab_size)),
                       tokenizer=tok, max_model_len=64)
    with pytest.raises(ValueError, match="chat template cannot render a one-message conversation"):
        create_app(llm)


def test_message_errors(trained):
    tok = Tokenizer.from_pretrained(trained)
    cases = [
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], r"messages\[1\]: unknown role 'robot'"),
        ([{"role": "user", "content": 3}], r"messages\[0\] \(user\): content must be a string, got a int"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], r"messages\[0\] .*got a list"),
        ([{"role": "user", "content": "a"}, {"role": "assistant"}], r"messages\[1\] \(assistant\).*missing"),
        ([{"role": "user", "content": "a"}, "hi"], r"messages\[1\] must be a dict"),
        ([{"role": "user", "content": "a", "tool_calls": []}], r"messages\[0\]: only assistant"),
        ([{"role": "assistant", "content": None, "tool_calls": "x"}], r"messages\[0\]: tool_calls must be a list"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}], "chat template failed"),
        ([], "empty"),
        ("hello", "list of dicts"),
    ]
    for msgs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            tok.apply_chat_template(msgs)
    with pytest.raises(ValueError, match="cannot both"):
        tok.apply_chat_template([{"role": "user", "content": "a"}], continue_final_message=True)


def test_missing_and_bad_files(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text((trained / "tokenizer.json").read_text(encoding="utf-8"),
                                             encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<nope>"}), encoding="utf-8")
    with pytest.raises(ValueError, match="bos_token '<nope>' is not in the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="no chat_template"):
        Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "a"}])
    (tmp_path / "chat_template.jinja").write_text("[{{ messages[0].content }}]", encoding="utf-8")
    assert Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "a"}]) == "[a]"
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json is not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------- training
def test_trained_tokenizer(trained):
    tok = Tokenizer.from_pretrained(trained)
    assert tok.vocab_size == 1000
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert [tok.token_to_id(t) for t in ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]] == [3, 4, 5, 6]
    assert tok.all_special_ids == [0, 1, 2]
    assert tok.chat_template == DEEPSEEK_R1_CHAT_TEMPLATE and tok.model_max_length == 4096
    rng = random.Random(0)
    alphabet = "abcxyz ABC\n\t0123456789.,;!?'\"()<>/|你好世界😀éß–\u00a0\u200b"
    for _ in range(200):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        ids = tok.encode(s)
        assert ids[:1] == [0] and tok.decode(ids, skip_special_tokens=True) == s  # byte-level: lossless
    text = "<｜User｜>2+2?<｜Assistant｜><think>\n4</think>4<｜end▁of▁sentence｜>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 3 and 5 in ids and 6 in ids and ids[-1] == 1
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<｜end▁of▁sentence｜>", "")
    assert len(tok.encode("the function returns the value", add_special_tokens=False)) < 10  # merges were learnt
    assert not [p.name for p in trained.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_trained_tokenizer_renders_r1_format(trained):
    tok = Tokenizer.from_pretrained(trained)
    msgs = [{"role": "system", "content": "S1"}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nHello"}, {"role": "system", "content": "S2"},
            {"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(msgs) == ("<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>Hi<｜Assistant｜>\n\nHello"
                                             "<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n")
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids[0] == 0 and ids.count(0) == 1 and ids[-3:-1] == [4, 5]  # <｜Assistant｜><think>
    calls = [{"role": "user", "content": "w"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"type": "function", "function": {"name": "f", "arguments": "{}"}},
                 {"type": "function", "function": {"name": "g", "arguments": "[1]"}}]},
             {"role": "tool", "content": "A"}, {"role": "tool", "content": "B"},
             {"role": "assistant", "content": "done"}]
    assert tok.apply_chat_template(calls) == (
        "<｜begin▁of▁sentence｜><｜User｜>w<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f"
        "\n```json\n{}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n[1]\n```"
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>A"
        "<｜tool▁output▁end｜><｜tool▁output▁begin｜>B<｜tool▁output▁end｜><｜tool▁outputs▁end｜>done<｜end▁of▁sentence｜>"
        "<｜Assistant｜><think>\n")


def test_trained_tokenizer_matches_transformers(trained):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(trained)
    tok = Tokenizer.from_pretrained(trained)
    assert (len(hf), hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1000, 0, 1, 2)
    for s in TEXTS + [corpus()[1000:3000]]:
        assert tok.encode(s) == hf.encode(s)
        assert tok.encode(s, add_special_tokens=False) == hf.encode(s, add_special_tokens=False)
        for skip in (False, True):
            assert tok.decode(tok.encode(s), skip_special_tokens=skip) == hf.decode(hf.encode(s),
                                                                                   skip_special_tokens=skip)
    rng = random.Random(3)
    for _ in range(40):
        msgs = random_conversation(rng, tools=True)
        for gen in (True, False):
            assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == hf.apply_chat_template(
                msgs, add_generation_prompt=gen, tokenize=False)
        assert tok.apply_chat_template(msgs, tokenize=True) == hf.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=False)


def test_training_is_deterministic_and_accepts_texts(tmp_path):
    text = corpus()[:100_000]
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    a = train_tokenizer(tmp_path / "c.txt", 600, tmp_path / "a")
    train_tokenizer([str(tmp_path / "c.txt")], 600, tmp_path / "b")
    c = train_tokenizer(iter([text]), 600)  # an iterator of strings, nothing written
    first = (tmp_path / "a" / "tokenizer.json").read_bytes()
    assert first == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.backend.to_str() == c.backend.to_str()
    train_tokenizer(tmp_path, 600, tmp_path / "d")  # a directory: its *.txt files
    assert (tmp_path / "d" / "tokenizer.json").read_bytes() == first


def test_save_pretrained(tmp_path, trained):
    tok = Tokenizer.from_pretrained(trained)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}", encoding="utf-8")
    tok.save_pretrained(model_dir)  # into an existing directory: the other files stay
    tok.save_pretrained(tmp_path / "new" / "tok")  # a new directory, renamed into place
    for d in (model_dir, tmp_path / "new" / "tok"):
        again = Tokenizer.from_pretrained(d)
        assert again.backend.to_str() == tok.backend.to_str() and again.config == tok.config
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["tok"]
    with pytest.raises(ValueError, match="not a directory"):
        tok.save_pretrained(model_dir / "config.json")


def test_training_errors(tmp_path):
    (tmp_path / "ok.txt").write_text("hello world\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 272"):
        train_tokenizer(tmp_path / "ok.txt", 100)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "ok.txt", tmp_path / "missing.txt"], 500)
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe bad")
    with pytest.raises(ValueError, match="bad.txt is not UTF-8"):
        train_tokenizer(tmp_path / "bad.txt", 500)
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(tmp_path / "empty.txt", 500)
    with pytest.raises(ValueError, match="must be strings"):
        train_tokenizer(iter([b"bytes"]), 500)


def test_cli_tokenizer_train(tmp_path, capsys):
    from nanoseek.cli import main
    (tmp_path / "t.txt").write_text(corpus()[:50_000], encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "t.txt"), "--vocab-size", "512",
                 "--out", str(out)]) == 0
    assert Tokenizer.from_pretrained(out).vocab_size == 512
    assert str(out) in capsys.readouterr().out
    assert main(["tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--vocab-size", "512",
                 "--out", str(out)]) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_max_digits_splits_numbers(tmp_path):
    """`max_digits` bounds the digits one token holds: 1 gives one token per digit (what a small model needs for
    column arithmetic), 3 is DeepSeek-V3's split; anything else is refused."""
    text = "\n".join(f"What is {a}+{b}? {a}+{b}={a + b}" for a, b in zip(range(100, 999, 7), range(990, 10, -9)))
    for digits in (1, 2, 3):
        tok = train_tokenizer(iter([text]), 600, max_digits=digits)
        pieces = [tok.decode([i]) for i in tok.encode("976+332=1308", add_special_tokens=False)]
        assert "".join(pieces) == "976+332=1308"
        numbers = [p for p in pieces if p.isdigit()]
        assert max(map(len, numbers)) <= digits
        if digits == 1:
            assert pieces == list("976+332=1308")
    for bad in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="max_digits"):
            train_tokenizer(iter([text]), 600, max_digits=bad)
