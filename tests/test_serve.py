"""nanoseek serve against the official `openai` client on a live uvicorn server on 127.0.0.1 (a free port, a
thread, always stopped): models, chat whole and streamed with reasoning_content split, n, seed, stop, logprobs,
usage, completions, every caller mistake answered in OpenAI's shape with the server healthy afterwards, auth,
overload (429 + Retry-After), cancellation on disconnect freeing the cache blocks, 32 concurrent streams equal to
the same requests one at a time, graceful shutdown, /metrics parsed by prometheus_client, the chat page."""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import nanoseek  # noqa: E402
from nanoseek.serve import ServeConfig, create_app  # noqa: E402

KEY = "sk-test-0123456789"
NAME = "tiny-r1"
USER = [{"role": "user", "content": "What is 2 plus 3?"}]


# ---------------------------------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve") / "model"
    torch.manual_seed(0)
    nanoseek.save_pretrained(nanoseek.Transformer(nanoseek.ModelConfig.preset("tiny")), d)
    texts = [f"The fox {i} jumps over {i + 1} dogs; {i} plus {i + 1} is {2 * i + 1}. Hello, world!" for i in range(200)]
    nanoseek.train_tokenizer(iter(texts), 1024, d)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(model_dir: Path, *, api_key: str | None = KEY, max_num_seqs: int = 32, max_queue: int = 32,
                graceful_s: float = 5.0, speculative: int | None = None, http: str = "auto", **config):
    from nanoseek.serve.app import uvicorn_config
    llm = nanoseek.LLM(model_dir, max_num_seqs=max_num_seqs, speculative=speculative)
    cfg = ServeConfig(served_model_name=NAME, api_key=api_key, max_queue=max_queue, **config)
    app = create_app(llm, cfg)
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, cfg, "127.0.0.1", port, log_level="warning",
                                           timeout_graceful_shutdown=graceful_s, http=http))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}", app, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def srv(model_dir):
    with live_server(model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def base(srv) -> str:
    return srv[0]


@pytest.fixture(scope="module")
def app(srv):
    return srv[1]


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(model_dir):
    """The same model in-process: what the server must return."""
    return nanoseek.LLM(model_dir, max_num_seqs=4)


def _idle(app, timeout: float = 10.0) -> None:
    """Wait (bounded) until the engine has no request and every cache block is free again."""
    engine = app.state.worker.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (app.state.worker.num_in_flight() == 0 and not engine.has_unfinished_requests()
                and engine.cache.pool.num_free == engine.cache.pool.num_blocks):
            return
        time.sleep(0.01)
    raise AssertionError(f"not idle: {app.state.worker.num_in_flight()} in flight, "
                         f"{engine.cache.pool.num_free}/{engine.cache.pool.num_blocks} blocks free")


def _healthy(base: str, client) -> None:
    assert httpx.get(base + "/health").status_code == 200
    r = client.chat.completions.create(model=NAME, messages=USER, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def _metrics(base: str):
    return httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def _post(base: str, body: bytes | str, path: str = "/v1/chat/completions", key: str | None = KEY, **kw):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(base + path, content=body, headers=headers, **{"timeout": 30, **kw})


# ---------------------------------------------------------------------------------------------------- models, chat
def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME] and models.data[0].object == "model"
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


THINK = {"max_thinking_tokens": 3, "ignore_eos": True}


def test_chat_splits_reasoning_like_the_offline_engine(client, offline):
    r = client.chat.completions.create(model=NAME, messages=USER, max_tokens=10, temperature=0, extra_body=THINK)
    ref = offline.chat(USER, nanoseek.SamplingParams(temperature=0, max_tokens=10, **THINK))[0].outputs[0]
    msg = r.choices[0].message
    assert r.object == "chat.completion" and r.model == NAME and r.id.startswith("chatcmpl-")
    assert msg.role == "assistant"
    assert msg.reasoning_content == ref.reasoning_content and msg.content == ref.content
    assert msg.reasoning_content and msg.content  # the budget closed the thought after 3 tokens
    assert r.choices[0].finish_reason == "length"
    prompt = offline.tokenizer.apply_chat_template(USER, add_generation_prompt=True)
    u = r.usage
    assert u.prompt_tokens == len(offline.tokenizer.encode(prompt, add_special_tokens=False))
    assert u.completion_tokens == 10 and u.total_tokens == u.prompt_tokens + 10
    assert u.completion_tokens_details.reasoning_tokens == 3


def test_chat_stream_joins_to_the_whole_response(client, base):
    kw = dict(model=NAME, messages=USER, max_tokens=10, temperature=0, extra_body=THINK)
    whole = client.chat.completions.create(**kw).choices[0].message
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == whole.reasoning_content and content == whole.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    # the raw wire format: `data: {json}` events, the last one `data: [DONE]`
    body = json.dumps({**{k: v for k, v in kw.items() if k != "extra_body"}, **THINK, "stream": True})
    raw = _post(base, body).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_n_seed_and_stop(client):
    kw = dict(model=NAME, messages=USER, max_tokens=8, temperature=1.0, seed=7, n=3, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [(c.message.reasoning_content, c.message.content) for c in a.choices]
    assert texts == [(c.message.reasoning_content, c.message.content) for c in b.choices]  # same seed, same draw
    assert len(set(texts)) > 1 and a.usage.completion_tokens == 24
    # stop: cut a greedy completion before a string taken from its middle
    full = client.completions.create(model=NAME, prompt="The fox", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    i = next(i for i in range(2, len(full) - 2) if "\ufffd" not in full[i:i + 2] and full[i:i + 2].strip()
             and full.find(full[i:i + 2]) == i)
    cut = client.completions.create(model=NAME, prompt="The fox", max_tokens=16, temperature=0,
                                    stop=["never-there", full[i:i + 2]], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[:i] and cut.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = client.chat.completions.create(model=NAME, messages=USER, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=2, extra_body={"ignore_eos": True})
    items = r.choices[0].logprobs.content
    assert len(items) == 5
    for it in items:
        assert len(it.top_logprobs) == 2 and it.logprob <= 0
        assert it.top_logprobs[0].logprob >= it.top_logprobs[1].logprob
        assert it.logprob <= it.top_logprobs[0].logprob + 1e-6
    c = client.completions.create(model=NAME, prompt="Hello", max_tokens=4, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) <= 3 for t in lp.top_logprobs)


def test_completions_match_the_offline_engine(client, offline):
    sp = nanoseek.SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    ref = [o.outputs[0].text for o in offline.generate(["Hello", "The fox 7"], sp)]
    r = client.completions.create(model=NAME, prompt=["Hello", "The fox 7"], max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and [c.text for c in r.choices] == ref
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 12
    ids = offline.tokenizer.encode("Hello")
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0, echo=True,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == offline.tokenizer.decode(ids) + ref[0]
    assert r.usage.prompt_tokens == len(ids)
    streamed = list(client.completions.create(model=NAME, prompt="Hello", max_tokens=6, temperature=0, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == ref[0]
    assert streamed[-1].choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------------------------- errors
def _check_error(resp, status: int, *, param=None, code=None, match: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in resp.text
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    if match is not None:
        assert re.search(match, err["message"]), err["message"]
    return err


def _nested(depth: int) -> list:
    """[[[...]]] `depth` levels deep, built without recursion."""
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def test_json_depth_is_measured_without_recursion():
    from nanoseek.serve.body import json_depth
    assert json_depth(3) == 0 and json_depth([]) == 1 and json_depth({"a": [1, {"b": []}]}) == 4
    assert json_depth(_nested(100_000)) == 100_000  # far past Python's recursion limit


def test_every_bad_request_is_answered_and_the_server_keeps_serving(base, client, app):
    ok = {"model": NAME, "messages": USER, "max_tokens": 2}
    cases = [
        (b"{not json", 400, None, "could not parse the JSON"),
        (b"", 400, None, "could not parse"),
        (b"[1, 2]", 400, None, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None, "NaN"),
        (json.dumps({**ok, "temperature": "hot"}), 400, "temperature", "valid number"),
        (json.dumps({**ok, "max_tokens": 0}), 400, "max_tokens", None),
        (json.dumps({**ok, "n": "2"}), 400, "n", None),
        (json.dumps({**ok, "stream": "yes"}), 400, "stream", None),
        (json.dumps({**ok, "messages": "hi"}), 400, "messages", None),
        (json.dumps({**ok, "messages": []}), 400, "messages", None),
        (json.dumps({**ok, "messages": [{"role": "wizard", "content": "x"}]}), 400, "messages[0].role", "unknown role"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": 5}]}), 400, "messages[0].content", None),
        (json.dumps({**ok, "messages": [{"content": "x"}]}), 400, "messages[0].role", None),
        (json.dumps({**ok, "top_p": 0}), 400, "top_p", None),
        (json.dumps({**ok, "n": 1000}), 400, "n", None),
        (json.dumps({**ok, "n": 33}), 400, "n", "at most 32"),  # more than the batch: never admissible, not a 429
        (json.dumps({**ok, "top_logprobs": 2}), 400, "top_logprobs", None),
        (json.dumps({**ok, "stop": [""]}), 400, "stop", None),
        (json.dumps({**ok, "tools": [{"type": "function", "function": {"name": "f"}}]}), 400, "tools", None),
        (json.dumps({**ok, "chat_template_kwargs": {"tokenize": True}}), 400, "chat_template_kwargs", None),
        # JSON nested ~500-1,000 deep once answered 500 (RecursionError while rendering) or hung (issue 17 item 2)
        (json.dumps({**ok, "chat_template_kwargs": {"x": "DEEP"}}).replace('"DEEP"', "[" * 1000 + "]" * 1000),
         400, None, "nested more than 32"),
        (json.dumps({**ok, "messages": [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "DEEP"}}]},
            {"role": "user", "content": "x"}]}).replace('"DEEP"', '{"a":' * 500 + "1" + "}" * 500),
         400, None, "nested more than 32"),
        (json.dumps({**ok, "stop": ["a"] * 17}), 400, "stop", None),
        # every sampling value bounded: these once passed validation and failed the engine step for everyone
        (json.dumps({**ok, "top_k": 2**63}), 400, "top_k", None),
        (json.dumps({**ok, "max_tokens": 2**64}), 400, "max_tokens", None),
        (json.dumps({**ok, "min_tokens": 2**63}), 400, "min_tokens", None),
        (json.dumps({**ok, "max_thinking_tokens": 2**63}), 400, "max_thinking_tokens", None),
        (json.dumps({**ok, "stop_token_ids": [2**63]}), 400, "stop_token_ids[0]", None),
        (json.dumps({**ok, "stop_token_ids": [1] * 65}), 400, "stop_token_ids", None),
        (json.dumps({**ok, "messages": [{"role": "user", "content": "\ud800"}]}), 400, None, "invalid Unicode"),
        (json.dumps({**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
         400, "messages[0].content[0].type", "only text"),
        # found by bench/probes.py: settings other servers implement were ignored, so a client got sampling it did
        # not ask for
        (json.dumps({**ok, "repetition_penalty": 1.2}), 400, None, "repetition_penalty: not supported"),
        (json.dumps({**ok, "guided_json": {"type": "object"}}), 400, None, "guided_json: not supported"),
        (json.dumps({**ok, "tool_choice": 5}), 400, "tool_choice", "only 'none' or 'auto'"),
        (json.dumps({**ok, "tool_choice": "required"}), 400, "tool_choice", None),
    ]
    for body, status, param, match in cases:
        _check_error(_post(base, body), status, param=param, match=match)
    # context overflow, worded as OpenAI words it
    max_len = app.state.worker.engine.max_model_len
    err = _check_error(_post(base, json.dumps({**ok, "max_tokens": max_len})), 400, code="context_length_exceeded",
                       match=rf"^This model's maximum context length is {max_len} tokens\. However, you requested "
                             rf"\d+ tokens \(\d+ in the messages, {max_len} in the completion\)")
    assert err["type"] == "invalid_request_error"
    long = " ".join(["fox"] * (max_len + 10))
    _check_error(_post(base, json.dumps({**ok, "messages": [{"role": "user", "content": long}]})), 400,
                 code="context_length_exceeded", match="maximum context length")
    _check_error(_post(base, json.dumps({"model": NAME, "prompt": list(range(max_len + 1))}), "/v1/completions"), 400,
                 code="context_length_exceeded")
    _check_error(_post(base, json.dumps({"model": NAME, "prompt": [5000]}), "/v1/completions"), 400,
                 match="vocabulary")
    # prompts x n beyond what the server can ever run at once: a 400 even on a busy server, never a 429 that clients
    # retry forever (item 7); chat's n beyond the batch is the "at most 32" case above
    _check_error(_post(base, json.dumps({"model": NAME, "prompt": ["a b"] * 20, "n": 4, "max_tokens": 1}),
                       "/v1/completions"), 400, param="prompt", match="20 prompts x n=4 exceed the 32 sequences")
    cap = app.state.worker.capacity
    assert app.state.worker._refusal(cap + 1).status == 400  # the worker's own check, for any caller
    # a prompt longer in characters than the context can hold in tokens: refused before tokenizing (item 3)
    huge = "x" * (3 << 20)
    for body, path, param in ((json.dumps({**ok, "messages": [{"role": "user", "content": huge}]}),
                               "/v1/chat/completions", "messages"),
                              (json.dumps({"model": NAME, "prompt": huge}), "/v1/completions", "prompt")):
        _check_error(_post(base, body, path), 400, param=param, code="context_length_exceeded",
                     match=r"has 3145728 characters, more than \d+ tokens can hold")
    # 404 unknown model and route, 405, 413
    _check_error(_post(base, json.dumps({**ok, "model": "gpt-4o"})), 404, param="model", code="model_not_found")
    _check_error(_post(base, json.dumps(ok), "/v1/nowhere"), 404)
    _check_error(httpx.get(base + "/v1/chat/completions"), 405)
    big = json.dumps({**ok, "messages": [{"role": "user", "content": "x" * (5 << 20)}]})
    _check_error(_post(base, big), 413)
    # the official client raises its own exception classes
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "x"}])
    assert e.value.status_code == 400 and e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=max_len)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    _healthy(base, client)
    _idle(app)


def test_auth(base, client):
    for key in (None, "sk-wrong", KEY + "x", ""):
        _check_error(_post(base, json.dumps({"messages": USER}), key=key), 401, code="invalid_api_key")
    _check_error(httpx.get(base + "/v1/models", headers={"Authorization": "Basic " + KEY}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert httpx.get(base + "/health").status_code == 200  # health and the page need no key
    _check_error(httpx.get(base + "/metrics"), 401)  # metrics sit behind the key when one is set (item 5)
    assert _metrics(base).status_code == 200
    _healthy(base, client)


def test_cross_site_browser_requests_and_rebinding_hosts_are_refused(base, client):
    """Issue 17 item 5: a page on another site (a text/plain POST with its Origin) and a DNS-rebinding Host get 403;
    the server's own page (same origin), non-browser clients (no Origin) and IP or localhost Hosts pass."""
    body = json.dumps({"model": NAME, "messages": USER, "max_tokens": 1})
    auth = {"Authorization": f"Bearer {KEY}"}
    for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    {"Origin": "null"}, {"Host": "evil.example"}, {"Host": "attacker.test:8000"}):
        r = httpx.post(base + "/v1/chat/completions", content=body, headers={**auth, **headers}, timeout=30)
        err = _check_error(r, 403, code="forbidden")
        assert "--allowed-" in err["message"] or "opaque" in err["message"]
    port = base.rsplit(":", 1)[1]
    for headers in ({"Origin": base, "Content-Type": "application/json"}, {"Host": f"localhost:{port}"},
                    {"Content-Type": "application/json"}):
        r = httpx.post(base + "/v1/chat/completions", content=body, headers={**auth, **headers}, timeout=30)
        assert r.status_code == 200, (headers, r.text)
    _healthy(base, client)


def _read_response(sock: socket.socket) -> str:
    """One whole HTTP response from a raw socket (headers and body may arrive in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_stalled_body_times_out_and_connections_are_capped(model_dir):
    """Issue 17 item 4: a client that sends its headers and then stalls its body gets a 408 after read_timeout_s
    (others are served meanwhile); a request arriving while max_connections connections are open gets 503 from
    uvicorn (idle connections count, so slowloris connections cannot crowd out a server without limit)."""
    with live_server(model_dir, read_timeout_s=1.0, max_connections=3) as (base, app, _):
        port = int(base.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port), timeout=20)
        stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                        KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
        ok = _post(base, json.dumps({"model": NAME, "messages": USER, "max_tokens": 1}))
        assert ok.status_code == 200  # served while the other body stalls
        reply = _read_response(stalled)
        assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply
        stalled.close()
        held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]  # idle (slowloris)
        try:
            time.sleep(0.3)
            assert httpx.get(base + "/health", timeout=10).status_code == 503  # over the cap
        finally:
            for h in held:
                h.close()


def _closed_by_server(sock: socket.socket, trickle: bytes, every_s: float, limit_s: float) -> tuple[bytes, float]:
    """Send `trickle` one byte every `every_s` seconds until the server closes the connection; return what it answered
    and the seconds from the call until the close (bounded by `limit_s`)."""
    t0, reply, sent = time.monotonic(), b"", 0
    sock.setblocking(False)
    while time.monotonic() - t0 < limit_s:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return reply, time.monotonic() - t0
            reply += chunk
        elif sent < len(trickle) and not reply:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(trickle[sent:sent + 1])
            sent += 1
    raise AssertionError(f"the server did not close the connection within {limit_s} s (got {reply!r})")


@pytest.mark.parametrize("http", ["h11", "httptools"])  # uvicorn's two HTTP/1.1 parsers ("auto" picks httptools)
def test_headers_that_trickle_in_time_out_while_others_are_served(model_dir, http):
    """Issue 17 item 4 (slowloris): a connection whose header block has not all arrived within header_timeout_s of
    its opening gets a 408 and is closed, however steadily it keeps sending bytes (the timer is not reset by data);
    one that sends nothing is closed without an answer; other connections are served meanwhile and afterwards.
    The timer covers the headers alone: idle keep-alive time between requests is keepalive_timeout_s, a request
    split over segments that completes in time is served, and a body that stalls after complete headers gets the
    app's own 408 after read_timeout_s, not the header timeout."""
    from nanoseek.serve.app import uvicorn_config
    from nanoseek.serve.header_timeout import HeaderTimeoutMixin, base_protocol
    for name in ("auto", http):  # the protocol class uvicorn gets extends the one asked for
        cls = uvicorn_config(None, ServeConfig(header_timeout_s=0.5), "127.0.0.1", 1, http=name).http
        assert issubclass(cls, HeaderTimeoutMixin) and issubclass(cls, base_protocol(name))
        assert cls.header_timeout_s == 0.5
    assert base_protocol(http).__module__.endswith(http + "_impl")
    with live_server(model_dir, header_timeout_s=0.5, read_timeout_s=2.0, keepalive_timeout_s=5.0,
                     http=http) as (base, app, _):
        port = int(base.rsplit(":", 1)[1])
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        with httpx.Client(timeout=30) as normal:  # one keep-alive connection, used before, during and after
            assert normal.get(base + "/health").status_code == 200

            # slowloris: a request line and a header that never ends, one byte every 0.05 s; and an idle connection
            slow = socket.create_connection(("127.0.0.1", port), timeout=20)
            idle = socket.create_connection(("127.0.0.1", port), timeout=20)
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            served = []

            def meanwhile():  # a normal client is served while the slow connection is held
                served.append(normal.get(base + "/health").status_code)
                r = client.chat.completions.create(model=NAME, messages=USER, max_tokens=2, temperature=0)
                served.append(r.choices[0].finish_reason)

            t = threading.Thread(target=meanwhile)
            t.start()
            reply, took = _closed_by_server(slow, b"a" * 10_000, every_s=0.05, limit_s=15)
            t.join(timeout=60)
            assert served[0] == 200 and served[1] in ("stop", "length"), served
            assert reply.startswith(b"HTTP/1.1 408") and b"headers did not arrive within 0.5 s" in reply, reply
            assert 0.4 <= took < 10, took  # after the timeout, though bytes kept coming
            slow.close()
            idle.settimeout(15)
            assert idle.recv(4096) == b""  # closed, no answer: it sent nothing
            idle.close()
            assert normal.get(base + "/health").status_code == 200  # the keep-alive connection is still served

            # a request split over segments that completes in time, then keep-alive requests on the same connection
            # after an idle pause longer than the header timeout (the keep-alive timeout governs idle time)
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(b"GET /health HTTP/1.1\r\nHo")
            time.sleep(0.2)
            sock.sendall(b"st: 127.0.0.1\r\n\r\n")
            assert _read_response(sock).startswith("HTTP/1.1 200")
            time.sleep(1.0)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_response(sock).startswith("HTTP/1.1 200")
            # ...and the next request on it that trickles is cut off by the header timeout too
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            reply, took = _closed_by_server(sock, b"X-Slow: " + b"a" * 10_000, every_s=0.05, limit_s=15)
            assert reply.startswith(b"HTTP/1.1 408") and 0.4 <= took < 10, (reply, took)
            sock.close()

            # complete headers, then a stalled body: the app's 408 after read_timeout_s (2 s), not the header timeout
            stalled = socket.create_connection(("127.0.0.1", port), timeout=20)
            t0 = time.monotonic()
            stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                            KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            reply = _read_response(stalled)
            assert reply.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in reply, reply
            assert time.monotonic() - t0 >= 1.5
            stalled.close()

            # streaming and whole responses over keep-alive connections still work
            chunks = list(client.chat.completions.create(model=NAME, messages=USER, max_tokens=8, stream=True,
                                                         temperature=0, extra_body={"ignore_eos": True}))
            assert chunks[-1].choices[0].finish_reason == "length"
            _healthy(base, client)
            assert normal.get(base + "/health").status_code == 200
        _idle(app)


def test_openapi_spec_and_a_bounded_fuzz_find_no_server_error(base, client):
    """Issue 17 item 6: /openapi.json describes every endpoint with its request body; schemathesis generates requests
    from it (a fixed budget per operation, derandomized) and none gets a 5xx; the server keeps serving."""
    import schemathesis  # a test dependency (pyproject's test extra)
    from hypothesis import HealthCheck, given, settings
    spec = httpx.get(base + "/openapi.json", timeout=30).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert {"ChatCompletionRequest", "CompletionRequest"} <= set(spec["components"]["schemas"])
    schema = schemathesis.openapi.from_dict(spec)
    auth = {"Authorization": f"Bearer {KEY}"}
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            r = case.call(base_url=base, headers=auth, timeout=60)
            assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text[:300])
            seen.setdefault(op.label, set()).add(r.status_code)
        fuzz()
    assert len(seen) == len(spec["paths"]) and any(codes & {200} for codes in seen.values()), seen
    _healthy(base, client)


def test_allowed_origins_and_hosts_are_configurable():
    from nanoseek.serve.middleware import BrowserGuard
    guard = BrowserGuard(None, ("http://localhost:3000",), ("my.box",))
    assert guard._host_ok("my.box:8000") and guard._host_ok("127.0.0.1:8000") and guard._host_ok("[::1]:8000")
    assert guard._host_ok("localhost") and not guard._host_ok("other.box")
    assert "http://localhost:3000" in guard.origins
    assert BrowserGuard(None, (), ("*",))._host_ok("anything.example")


def test_an_engine_failure_is_a_500_in_openai_shape_and_the_server_recovers(base, client, app, monkeypatch):
    engine = app.state.worker.engine
    real_step, fail = engine.step, [1]

    def flaky_step():
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("simulated fault")
        return real_step()
    monkeypatch.setattr(engine, "step", flaky_step)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=4)
    assert e.value.status_code == 500 and "simulated fault" in e.value.body["message"]
    _idle(app)  # the aborted request drained, so the next fault hits the next request
    fail[0] = 1
    with pytest.raises(openai.APIError, match="simulated fault"):  # mid-stream: an error event ends the stream
        list(client.chat.completions.create(model=NAME, messages=USER, max_tokens=4, stream=True))
    monkeypatch.setattr(engine, "step", real_step)
    _idle(app)
    _healthy(base, client)


def test_a_request_failing_alone_gets_an_error_and_the_others_are_served(base, client, app, monkeypatch):
    """Issue 17 item 1: a fault in one request's own work (here its stop check, after its second token) ends that
    request alone: 500 in OpenAI's shape, or an error event then [DONE] mid-stream, while the requests running
    beside it get what they get alone. Seven such failures do not count as failed steps: the server keeps serving.
    A completions request whose second prompt fails stops its first one too."""
    import nanoseek.infer.engine as engine_mod
    worker, engine = app.state.worker, app.state.worker.engine
    prompts = [f"The fox {i} jumps" for i in range(4)]

    def one(p: str, stream: bool) -> str:
        kw = dict(model=NAME, prompt=p, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
        return client.completions.create(**kw).choices[0].text

    alone = [one(p, False) for p in prompts]
    real = engine_mod.append_tokens

    def append_tokens(seq, toks, *args):
        if "POISON" in (seq.request.prompt or "") and len(seq.state.token_ids) >= 2:
            raise RuntimeError("injected per-request fault")
        return real(seq, toks, *args)
    monkeypatch.setattr(engine_mod, "append_tokens", append_tokens)

    def bad(i: int) -> BaseException | None:
        try:
            one(f"POISON {i}", stream=i % 2 == 1)
        except openai.APIError as e:
            return e
        return None

    with ThreadPoolExecutor(10) as pool:
        good = [pool.submit(one, p, i % 2 == 1) for i, p in enumerate(prompts)]
        failing = [pool.submit(bad, i) for i in range(6)]
        assert [f.result() for f in good] == alone
        errors = [f.result() for f in failing]
    for i, e in enumerate(errors):
        assert isinstance(e, openai.APIError) and "injected per-request fault" in str(e), e
        if i % 2 == 0:  # whole: a 500 in OpenAI's shape
            assert isinstance(e, openai.InternalServerError) and e.status_code == 500
            assert e.body["code"] == "engine_error" and e.body["type"] == "server_error"
    # the raw stream: some text, then one error event, then [DONE]
    body = json.dumps({"model": NAME, "prompt": "POISON raw", "max_tokens": 6, "temperature": 0,
                       "ignore_eos": True, "stream": True})
    resp = _post(base, body, path="/v1/completions")
    events = [e for e in resp.text.split("\n\n") if e]
    assert resp.status_code == 200 and events[-1] == "data: [DONE]"
    err = json.loads(events[-2][len("data: "):])["error"]
    assert "injected per-request fault" in err["message"] and err["code"] == "engine_error"
    assert not any("error" in json.loads(e[len("data: "):]) for e in events[:-2])
    _idle(app)
    # one HTTP request, two prompts: the failing one fails it, and the other is stopped long before its 900 tokens
    steps = engine.stats["steps"]
    r = _post(base, json.dumps({"model": NAME, "prompt": ["Hello", "POISON again"], "max_tokens": 900,
                                "ignore_eos": True}), path="/v1/completions")
    _check_error(r, 500, code="engine_error", match="injected per-request fault")
    _idle(app)
    assert engine.stats["steps"] - steps < 600
    assert worker.healthy and worker.error is None
    monkeypatch.setattr(engine_mod, "append_tokens", real)
    assert [one(p, True) for p in prompts] == alone
    _healthy(base, client)


# ---------------------------------------------------------------------------------------------------- load, cancel
def test_disconnect_mid_stream_frees_the_request(base, app):
    worker, engine = app.state.worker, app.state.worker.engine
    body = json.dumps({"model": NAME, "messages": USER, "max_tokens": 900, "stream": True, "ignore_eos": True})
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", base + "/v1/chat/completions", content=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
            lines = resp.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: ")
                if got >= 4:
                    break
            assert engine.cache.pool.num_free < engine.cache.pool.num_blocks  # it holds blocks now
        # leaving the block closes the connection mid-stream
    _idle(app)
    assert worker.abort_lags and worker.abort_lags[-1] <= 2  # freed within a step or two of the abort
    # a non-streaming request whose client times out is cancelled too
    steps = engine.stats["steps"]
    with pytest.raises(httpx.ReadTimeout):
        _post(base, json.dumps({"model": NAME, "messages": USER, "max_tokens": 900, "ignore_eos": True}),
              timeout=httpx.Timeout(30, read=0.5))
    _idle(app)
    assert engine.stats["steps"] - steps < 600  # stopped long before its 900 tokens


def test_overload_is_shed_with_retry_after(model_dir):
    with live_server(model_dir, max_num_seqs=1, max_queue=1, speculative=1) as (base, app, _):  # MTP drafts too
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        long = dict(model=NAME, messages=USER, max_tokens=900, stream=True, extra_body={"ignore_eos": True})
        s1 = client.chat.completions.create(**long)
        next(iter(s1))
        s2 = client.chat.completions.create(**long)  # waits in the queue (one slot)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model=NAME, messages=USER, max_tokens=2)
        assert e.value.status_code == 429 and int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "queue_full"
        s1.close()
        s2.close()
        _idle(app)
        _healthy(base, client)
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})  # decodes with MTP drafts
        m = _metrics(base).text
        assert re.search(r'http_requests_total\{[^}]*endpoint="/v1/chat/completions",status="429"\} 1', m)
        drafts = float(re.search(r"spec_decode_num_draft_tokens_total\{[^}]*\} (\S+)", m).group(1))
        rate = float(re.search(r"spec_decode_draft_acceptance_rate\{[^}]*\} (\S+)", m).group(1))
        assert drafts > 0 and 0 <= rate <= 1


def test_tokenizing_runs_in_the_servers_own_pool(base, client, app, monkeypatch):
    tok = app.state.llm.engine.tokenizer
    seen: list[str] = []
    encode = tok.encode

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return encode(*args, **kwargs)
    monkeypatch.setattr(tok, "encode", spy)
    client.chat.completions.create(model=NAME, messages=USER, max_tokens=2)
    client.completions.create(model=NAME, prompt="The fox", max_tokens=2)
    assert len(seen) == 2 and all(n.startswith("nanoseek-tokenizer") for n in seen), seen
    assert app.state.tokenizer_pool.in_use == 0


def test_a_flood_beyond_the_tokenizer_queue_gets_429_and_the_server_keeps_serving(model_dir):
    with live_server(model_dir, tokenizer_threads=1, tokenizer_queue=2) as (base, app, _):
        pool = app.state.tokenizer_pool
        tok = app.state.llm.engine.tokenizer
        release = threading.Event()
        encode = tok.encode

        def blocked(*args, **kwargs):
            release.wait(60)
            return encode(*args, **kwargs)
        tok.encode = blocked  # an instance attribute on this server's own tokenizer
        body = json.dumps({"model": NAME, "messages": USER, "max_tokens": 2})
        try:
            with ThreadPoolExecutor(3) as ex:
                held = [ex.submit(_post, base, body, timeout=60) for _ in range(3)]  # 1 running + 2 waiting
                try:
                    deadline = time.monotonic() + 30
                    while pool.in_use < 3:
                        assert time.monotonic() < deadline, f"the pool holds {pool.in_use} of 3"
                        time.sleep(0.01)
                    for path in ("/v1/chat/completions", "/v1/completions"):
                        extra = {"model": NAME, "max_tokens": 2}
                        extra.update({"messages": USER} if path.endswith("chat/completions") else {"prompt": "fox"})
                        r = _post(base, json.dumps(extra), path=path, timeout=30)
                        _check_error(r, 429, code="queue_full", match="tokenized")
                        assert int(r.headers["retry-after"]) >= 1
                    assert httpx.get(base + "/health", timeout=30).status_code == 200  # not behind the tokenizer
                finally:
                    release.set()
                assert [f.result().status_code for f in held] == [200, 200, 200]
        finally:
            del tok.encode
        assert pool.in_use == 0
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        _healthy(base, client)
        assert client.chat.completions.create(model=NAME, messages=USER, max_tokens=2).choices[0].message


def test_32_concurrent_streams_equal_the_same_requests_one_at_a_time(client, app):
    prompts = [f"The fox {i} jumps" for i in range(32)]

    def one(p: str) -> str:
        stream = client.completions.create(model=NAME, prompt=p, max_tokens=6, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        return "".join(c.choices[0].text for c in stream)

    alone = [one(p) for p in prompts]
    app.state.worker.peak_running_seqs = 0
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(one, prompts))
    assert together == alone
    assert app.state.worker.peak_running_seqs > 1  # they were batched
    _idle(app)


# ---------------------------------------------------------------------------------------------------- metrics, page
def test_metrics_parse(base, client):
    from prometheus_client.parser import text_string_to_metric_families
    client.chat.completions.create(model=NAME, messages=USER, max_tokens=3, temperature=0)
    text = _metrics(base).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    p = "nanoseek:"
    for name in ("http_requests", "prompt_tokens", "generation_tokens", "num_requests_waiting", "num_requests_running",
                 "num_seqs_running", "kv_cache_usage_perc", "spec_decode_draft_acceptance_rate",
                 "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"):
        assert p + name in fams, name
    ok = [s for s in fams[p + "http_requests"].samples if s.labels["status"] == "200"]
    assert sum(s.value for s in ok) >= 1
    ttft = {s.name: s.value for s in fams[p + "time_to_first_token_seconds"].samples if "le" not in s.labels}
    assert ttft[p + "time_to_first_token_seconds_count"] >= 1
    itl = [s for s in fams[p + "inter_token_latency_seconds"].samples if s.labels.get("le") == "+Inf"]
    assert itl[0].value >= 2
    assert fams[p + "generation_tokens"].samples[0].value >= 3


def test_chat_page_is_served(base):
    r = httpx.get(base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in ("/v1/chat/completions", "/v1/models", "reasoning_content", "getReader"):
        assert needle in r.text


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands go to its
    fd 3, replies come from its fd 4, each message JSON followed by a NUL byte)."""

    def __init__(self, exe: str):
        r_cmd, self.w = os.pipe()
        self.r, w_out = os.pipe()
        # the child's ends above 10 first, so moving them to 3 and 4 cannot overwrite one with the other; the
        # shell (bash: multi-digit fds) moves them (no preexec_fn: this process runs server threads)
        hi_in, hi_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r_cmd, w_out))
        os.close(r_cmd)
        os.close(w_out)
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--remote-debugging-pipe", "--window-size=1000,760", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{hi_in} 4>&{hi_out} {hi_in}<&- {hi_out}>&-', "bash", *args],
            pass_fds=(hi_in, hi_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(hi_in)
        os.close(hi_out)
        self.buf, self.next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError(method)
            chunk = os.read(self.r, 1 << 16)
            assert chunk, "chromium closed the pipe"
            self.buf += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.navigate", {"url": url})

    def js(self, expr: str):
        return self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})["result"].get("value")

    def wait(self, expr: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(expr)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session = None
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.w)
        os.close(self.r)


def test_chat_page_in_headless_chromium(base, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    b = Chromium(exe)
    try:
        b.open(base + "/")
        b.wait("document.readyState === 'complete'")
        # the key is asked for on the page; entering it reloads the model list from /v1/models
        b.js(f"const k = document.getElementById('key'); k.value = {json.dumps(KEY)};"
             "k.dispatchEvent(new Event('change'));")
        assert b.wait("document.getElementById('model').value") == NAME
        b.js("document.getElementById('temperature').value = '0'; document.getElementById('thinking').value = '4';"
             "document.getElementById('max_tokens').value = '12';")
        for turn, text in enumerate(["Hello there", "And again?"]):  # multi-turn: history goes back each time
            b.js(f"document.getElementById('input').value = {json.dumps(text)};"
                 "document.getElementById('form').requestSubmit();")
            b.wait(f"document.querySelectorAll('.msg.assistant[data-done]').length === {turn + 1}")
        shown = b.js("[...document.querySelectorAll('.msg.assistant')].map(d => [d.querySelector('.reasoning')"
                     ".hidden, d.querySelector('.reasoning div').textContent, d.querySelector('.answer').textContent,"
                     " d.querySelector('.stats').textContent, !!d.querySelector('.error')])")
        png = base64.b64decode(b.send("Page.captureScreenshot", {"format": "png"})["data"])
    finally:
        b.close()
    (tmp_path / "chat.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len(shown) == 2
    for hidden, reasoning, answer, stats, error in shown:
        assert not error and not hidden and reasoning and answer  # the thought in its own block, then the answer
        assert "finish: length" in stats and "12 tokens (4 reasoning)" in stats
    # the second turn's prompt carried the first exchange
    first, second = (int(re.search(r"prompt (\d+)", s[3]).group(1)) for s in shown)
    assert second > first


# ---------------------------------------------------------------------------------------------------- lifecycle
def test_graceful_shutdown_cancels_what_cannot_finish(model_dir):
    with live_server(model_dir, graceful_s=1.0, drain_timeout_s=0.5) as (base, app, server):
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=NAME, messages=USER, max_tokens=900, stream=True,
                                                extra_body={"ignore_eos": True})
        next(iter(stream))
        server.should_exit = True
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            for _ in stream:  # ends: cut off by the server (bounded: 900 tokens at most)
                pass
        deadline = time.monotonic() + 30
        while app.state.worker.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        engine = app.state.worker.engine
        assert not app.state.worker.healthy and not engine.has_unfinished_requests()
        assert engine.cache.pool.num_free == engine.cache.pool.num_blocks


def test_cli_serve_subprocess_sigterm(model_dir, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "nanoseek.cli", "serve", str(model_dir), "--port", str(port), "--api-key", KEY,
           "--served-model-name", NAME, "--max-num-seqs", "4", "--num-threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "nanoseek serve did not come up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=NAME, messages=USER, max_tokens=40, temperature=0, stream=True,
                                                extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)
        proc.terminate()  # SIGTERM mid-stream: the server stops taking requests but finishes this one
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "length"
        assert proc.wait(timeout=60) == 0
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_cli_rejects_bad_arguments(model_dir, capsys):
    from nanoseek.cli import main
    assert main(["serve", str(model_dir), "--max-num-seqs", "0"]) == 2
    assert "--max-num-seqs" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--header-timeout", "0"]) == 2
    assert "--header-timeout" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--tokenizer-threads", "0"]) == 2
    assert "--tokenizer-threads" in capsys.readouterr().err
    assert main(["serve", str(model_dir / "missing")]) == 2


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_a_header_block_past_the_cap_is_a_431(model_dir, http):
    """A probe of issue 17 found httptools reading and answering a 10 MB header block. Past max_header_bytes the
    server answers 431 and closes, in one segment or trickled; a block just under the cap is served, and a body
    sent in the same segment as the headers does not count toward it."""
    with live_server(model_dir, max_header_bytes=1024, http=http) as (base, app, _):
        port = int(base.rsplit(":", 1)[1])

        def send(*parts: bytes) -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                for part in parts:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        s.sendall(part)
                return _read_response(s)
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
        fill = 1024 - len(head) - 4  # the block with its blank line is exactly 1,024 bytes
        assert send(head + b"a" * fill + b"\r\n\r\n").startswith("HTTP/1.1 200")
        reply = send(head + b"a" * (fill + 1) + b"\r\n\r\n")
        assert reply.startswith("HTTP/1.1 431") and "exceed 1024 bytes" in reply, reply
        assert send(head, b"a" * 600, b"a" * 600).startswith("HTTP/1.1 431")  # over several segments
        assert send(head + b"a" * 10_000_000).startswith("HTTP/1.1 431")
        body = json.dumps({"model": NAME, "prompt": "hi", "max_tokens": 1, "user": "u" * 6000}).encode()
        post = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert send(post).startswith("HTTP/1.1 200")  # 6 kB of body in the headers' segment
        assert httpx.get(base + "/health").status_code == 200
