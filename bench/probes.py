"""Hardening probes (issue 17): what an attacker or an unlucky user does to `nanoseek serve` and `nanoseek train`.
A probe run, not a test: it reports findings and exits non-zero when there are any.

    python bench/probes.py                         # every probe (~10 min on 2 cores), results as markdown
    python bench/probes.py --only inputs,fuzz --fuzz-examples 200
    python bench/probes.py --write BENCHMARKS.md   # also replace this section there

1. inputs: a battery of malformed, out-of-range, oversized, cross-site and protocol-level bad requests against a
   server with an API key. Each must get a 4xx within 10 s (a 5xx, a timeout or a 2xx is a finding); afterwards the
   server answers a normal request.
2. fuzz: schemathesis generates requests for every operation in /openapi.json (random, not derandomized); none may
   get a 5xx or hang.
3. disconnect: rounds of streaming clients that drop their connection after the first chunk; the engine must end
   their requests (nothing running or waiting, no KV cache in use), the server's memory must stay flat, and a
   normal request is served after each round.
4. sigterm: streams in flight when the server gets SIGTERM: each must end with `data: [DONE]` and the process exit 0.
5. kill9: a training run killed with SIGKILL at seeded random moments (mid-step, mid-checkpoint, mid-export) and
   resumed each time; its exported weights must be bit-identical to an uninterrupted run's, no temporary files
   may remain, and metrics.jsonl must hold each step once.
Overload (429 + Retry-After beyond capacity, memory flat) is bench/serve_load.py's second part.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, write_section  # noqa: E402
from serve_load import make_model, rss_mib, server  # noqa: E402

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMP = {"model": "bench", "prompt": "hi", "max_tokens": 4}


def nested(depth: int) -> Any:
    x: Any = 1
    for _ in range(depth):
        x = {"a": x}
    return x


def battery() -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """(name, method, path, headers, raw body): every one is a request a server must refuse with a 4xx."""
    j = {"Content-Type": "application/json", **AUTH}
    cases: list[tuple[str, str, str, dict[str, str], bytes]] = []

    def add(name: str, body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
            method: str = "POST") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        cases.append((name, method, path, j if headers is None else headers, raw))

    # authentication and browser guards
    add("no key", CHAT, headers={"Content-Type": "application/json"})
    add("wrong key", CHAT, headers={"Content-Type": "application/json", "Authorization": "Bearer nope"})
    add("basic auth", CHAT, headers={"Content-Type": "application/json", "Authorization": "Basic " + KEY})
    add("foreign origin", CHAT, headers={**j, "Origin": "http://evil.example"})
    add("origin null", CHAT, headers={**j, "Origin": "null"})
    add("text/plain cross-site", CHAT, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    add("rebinding host", CHAT, headers={**j, "Host": "evil.example"})
    add("metrics without key", b"", path="/metrics", headers={}, method="GET")
    # JSON itself
    for name, raw in [("empty body", b""), ("null", b"null"), ("array", b"[]"), ("truncated", b'{"model": "b'),
                      ("invalid utf-8", b'{"model": "\xff\xfe"}'), ("NaN literal", b'{"max_tokens": NaN}'),
                      ("huge number", b'{"max_tokens": 1' + b"0" * 5000 + b"}"),
                      ("deep arrays", b"[" * 100_000 + b"]" * 100_000), ("string", b'"hello"'),
                      ("20 MB body", b'{"prompt": "' + b"a" * 20_000_000 + b'"}')]:
        add(name, raw)
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMP)):
        ep = "chat" if "chat" in path else "completions"
        bad_values = {
            "model": [5, "no-such-model", ["bench"]],  # absent or null: the one served model
            "max_tokens": [-1, 0, 2 ** 31, 2 ** 63, 2 ** 64, 1e30, "10", True, 1.5],
            "temperature": [-1, 1e308, "NaN", "inf", [0]],
            "top_p": [-0.1, 1.5, 0, "x"],
            "top_k": [-2, 2 ** 63, 1.5, 2 ** 31],
            "min_p": [-1, 2],
            "n": [0, -1, 10_000, 2 ** 63],
            "seed": [-2 ** 64, 2 ** 64, "seed", 1.5],
            "stop": [["x"] * 1000, 5, [5], [""], "a" * 100_000],
            "presence_penalty": [1e9, -3, "x"],
            "frequency_penalty": [1e9, -3],
            "repetition_penalty": [0, -1, 1e9],
            "logprobs": ["yes", -1] if ep == "chat" else [-1, 100, "x"],
            "stream": ["yes", 2],
            "stream_options": ["x", {"include_usage": "x"}],
            "stop_token_ids": [[-1], [2 ** 63], "x", list(range(100_000))],
            "min_tokens": [-1, 2 ** 63],
            "max_thinking_tokens": [-1, 2 ** 63, "x"],
            "ignore_eos": ["x"],
        }
        if ep == "chat":
            bad_values.update({
                "messages": [[], "hi", [{"role": "wizard", "content": "x"}], [{"content": "x"}],
                             [{"role": "user", "content": 5}], [{"role": "user"}], [None],
                             [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                             [{"role": "user", "content": "a" * 3_000_000}],
                             [{"role": "assistant", "content": None, "tool_calls": [
                                 {"id": "1", "type": "function",
                                  "function": {"name": "f", "arguments": json.dumps(nested(500))}}]}]],
                "top_logprobs": [-1, 10_000, "x"],
                "chat_template_kwargs": [nested(1000), "x", [1], {"tokenize": True}],
                "tools": ["x", [{"type": "function"}], [{"type": "function", "function": {}}]],
                "tool_choice": [5, {"type": "function"}],
                "response_format": ["x", {"type": "nonsense"}],
            })
        else:
            bad_values.update({
                "prompt": [None, [], [[]], [-1], [2 ** 40], [1.5], [["x"]], "a" * 3_000_000,
                           ["hi"] * 100_000, 5],
                "echo": ["x"],
                "suffix": [5],
                "best_of": [0, 2 ** 63],
            })
        for field, values in bad_values.items():
            for v in values:
                body = dict(base)
                body[field] = v
                shown = repr(v) if len(repr(v)) < 40 else f"{type(v).__name__} of {len(repr(v)):,} chars"
                add(f"{ep} {field}={shown}", body, path)
        field = "messages" if ep == "chat" else "prompt"
        add(f"{ep} without {field}", {k: v for k, v in base.items() if k != field}, path)
        add(f"{ep} prompt x n beyond capacity", {**base, "n": 128, "max_tokens": 4}, path)
    # protocol level
    add("GET on a POST route", b"", method="GET", headers=AUTH)
    add("unknown path", CHAT, path="/v1/nothing-here")
    add("form body", b"model=bench", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    return cases


def probe_inputs(base: str) -> dict[str, Any]:
    findings, codes = [], {}
    with httpx.Client(timeout=10) as c:
        for name, method, path, headers, raw in battery():
            try:
                r = c.request(method, base + path, headers=headers, content=raw)
                status = r.status_code
            except httpx.HTTPError as err:
                status, r = -1, None
                findings.append(f"{name}: {type(err).__name__}")
                continue
            codes[status] = codes.get(status, 0) + 1
            if not 400 <= status < 500:
                findings.append(f"{name}: {status} {r.text[:120]!r}")
    findings += raw_socket_probes(base)
    findings += healthy(base)
    return {"requests": sum(codes.values()), "codes": dict(sorted(codes.items())), "findings": findings}


def raw_socket_probes(base: str) -> list[str]:
    """Requests httpx will not send: a lying Content-Length, a bad chunked body, a 100 kB header."""
    host, port = base.rsplit("//", 1)[1].split(":")
    out = []
    for name, raw in [
        ("content-length larger than the body", b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 999\r\n\r\n{}"),
        ("bad chunked body", b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
         b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("1 MB header", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
        ("garbage request line", b"\x00\x01\x02 nonsense\r\n\r\n"),
    ]:
        s = socket.create_connection((host, int(port)), timeout=60)
        t0 = time.monotonic()
        try:
            s.sendall(raw)
            reply = s.recv(200)
        except OSError as err:
            reply = f"<{type(err).__name__}>".encode()
        finally:
            s.close()
        took = time.monotonic() - t0
        ok = reply.startswith(b"HTTP/1.1 4") or reply in (b"", b"<ConnectionResetError>")
        if not ok or took > 35:  # the server's read timeout (30 s by default) answers a body that never comes
            out.append(f"{name}: {reply[:80]!r} after {took:.1f} s")
    return out


def healthy(base: str) -> list[str]:
    try:
        r = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=60)
        return [] if r.status_code == 200 else [f"after the probe a normal request got {r.status_code}"]
    except httpx.HTTPError as err:
        return [f"after the probe a normal request failed: {type(err).__name__}"]


def probe_fuzz(base: str, examples: int) -> dict[str, Any]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    spec = httpx.get(base + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    findings: list[str] = []
    sent = [0]
    codes: dict[int, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            sent[0] += 1
            try:
                r = case.call(base_url=base, headers=AUTH, timeout=60)
            except Exception as err:  # a hang or a dropped connection is a finding, not a crash of the probe
                findings.append(f"{op.label}: {type(err).__name__} for {str(case.body)[:120]}")
                return
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                findings.append(f"{op.label}: {r.status_code} for {str(case.body)[:120]}: {r.text[:120]}")
        fuzz()
    findings += healthy(base)
    return {"requests": sent[0], "codes": dict(sorted(codes.items())), "findings": findings}


def metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", headers=AUTH, timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"nanoseek:{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def drop_after_first_chunk(client: httpx.AsyncClient, base: str, i: int) -> int:
    body = {**COMP, "prompt": f"story {i}:", "max_tokens": 200, "stream": True, "ignore_eos": True}
    async with client.stream("POST", base + "/v1/completions", json=body, headers=AUTH) as r:
        async for _ in r.aiter_lines():
            break  # the client goes away mid-stream
        return r.status_code


def probe_disconnect(base: str, proc: subprocess.Popen, clients: int, rounds: int) -> dict[str, Any]:
    findings, rss = [], [rss_mib(proc.pid)]

    async def storm() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients + 4)) as c:
            return await asyncio.gather(*(drop_after_first_chunk(c, base, i) for i in range(clients)))
    for k in range(rounds):
        codes = asyncio.run(storm())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = metric(base, "num_requests_running") + metric(base, "num_requests_waiting")
            if busy == 0 and metric(base, "kv_cache_usage_perc") == 0:
                break
            time.sleep(0.2)
        else:
            findings.append(f"round {k}: requests still running or KV cache in use 30 s after the clients left")
        findings += healthy(base)
        rss.append(rss_mib(proc.pid))
        if any(c not in (200, 429) for c in codes):
            findings.append(f"round {k}: status codes {sorted(set(codes))}")
    if rss[-1] > rss[1] * 1.25 + 50:
        findings.append(f"memory grew over the rounds: {rss[1]:.0f} -> {rss[-1]:.0f} MiB")
    return {"clients": clients, "rounds": rounds, "rss_mib": [round(x) for x in rss], "findings": findings}


def probe_sigterm(model: Path, streams: int) -> dict[str, Any]:
    findings: list[str] = []
    with server(model, 32, 32, 1, ("--api-key", KEY, "--shutdown-timeout", "60")) as (base, proc):
        signalled = False

        async def stream(c: httpx.AsyncClient, i: int) -> str:
            nonlocal signalled
            body = {**COMP, "prompt": f"story {i}:", "max_tokens": 60, "stream": True, "ignore_eos": True}
            last = ""
            async with c.stream("POST", base + "/v1/completions", json=body, headers=AUTH) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        last = line
                        if i == 0 and last != "data: [DONE]" and not signalled:
                            signalled = True
                            proc.send_signal(signal.SIGTERM)  # at stream 0's first chunk, the others sent too
            return last

        async def run() -> list[str]:
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(stream(c, i) for i in range(streams)), return_exceptions=True)
        ends = asyncio.run(run())
        rc = proc.wait(timeout=90)
        done = sum(e == "data: [DONE]" for e in ends)
        if done != streams:
            findings.append(f"{streams - done} of {streams} streams did not end with [DONE]: "
                            f"{[str(e)[:60] for e in ends if e != 'data: [DONE]'][:3]}")
        if rc != 0:
            findings.append(f"exit code {rc}")
    return {"streams": streams, "completed": done, "exit_code": rc, "findings": findings}


def probe_kill9(root: Path, kills: int, seed: int) -> dict[str, Any]:
    """Kill a training run at `kills` random moments, resuming each time; compare with an uninterrupted run."""
    from safetensors.torch import load_file
    args = ["--data", "tasks", "--max_steps", "160", "--seq_len", "64", "--batch_size", "4", "--ckpt_every", "2",
            "--eval_every", "8", "--warmup_steps", "2", "--progress", "false", "--threads", "1", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(run: Path, *extra: str) -> subprocess.Popen:
        # stderr to a file: a pipe nobody reads while the run is being killed would fill and stall it
        log = open(root / f"{run.name}.stderr", "ab")  # noqa: SIM115 (the child holds it; closed when it exits)
        return subprocess.Popen([sys.executable, "-m", "nanoseek.cli", "train", "--run_dir", str(run), *args,
                                 *extra], env=env, stdout=subprocess.DEVNULL, stderr=log)

    def tail(run: Path) -> str:
        return (root / f"{run.name}.stderr").read_text(errors="replace")[-300:]
    t0 = time.monotonic()
    ref = train(root / "ref")
    if ref.wait(timeout=900) != 0:
        return {"findings": [f"uninterrupted run failed: {tail(root / 'ref')}"]}
    length = time.monotonic() - t0
    rng = random.Random(seed)
    run, findings, when, phase = root / "killed", [], [], []
    for k in range(kills):
        proc = train(run, "--resume", "true")
        delay = rng.uniform(1.0, length / 3)  # each attempt gets a part of the run: the kills spread over it
        when.append(round(delay, 1))
        try:
            proc.wait(timeout=delay)  # it finished before the kill: start over, later kills hit the export or nothing
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # where it died: the newest checkpoint, half-written files, the export
            ckpts = sorted((run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").exists() else []
            tmp = [q.name for q in run.rglob("*") if ".tmp" in q.name]
            phase.append(f"{ckpts[-1].stem if ckpts else 'no checkpoint'}"
                         f"{', mid-write' if tmp else ''}{', export begun' if (run / 'model').exists() else ''}")
            continue
        phase.append("finished before the kill")
    last = train(run, "--resume", "true")
    if last.wait(timeout=900) != 0:
        findings.append(f"final resume failed (exit {last.returncode}): {tail(run)}")
        return {"kills_at_s": when, "findings": findings}
    a, b = load_file(str(root / "ref/model/model.safetensors")), load_file(str(run / "model/model.safetensors"))
    diff = [n for n in a if n not in b or not a[n].equal(b[n])]
    if diff or set(a) != set(b):
        findings.append(f"{len(diff)} tensors differ from the uninterrupted run, e.g. {diff[:3]}")
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]
    if leftovers:
        findings.append(f"temporary files left: {leftovers[:5]}")
    def steps(r: Path) -> list[Any]:
        return [json.loads(line).get("step") for line in (r / "metrics.jsonl").read_text().splitlines() if line]
    if steps(run) != steps(root / "ref"):
        findings.append(f"metrics.jsonl rows differ from the uninterrupted run's: {steps(run)[:40]}")
    return {"kills": kills, "kills_at_s": when, "killed_at": phase, "run_s": round(length, 1), "tensors": len(a),
            "findings": findings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="inputs,fuzz,disconnect,sigterm,kill9")
    ap.add_argument("--fuzz-examples", type=int, default=2000, help="examples per operation (6 operations)")
    ap.add_argument("--clients", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", help="replace this benchmark's section in this markdown file")
    ap.add_argument("--json", help="write every result and finding to this JSON file")
    a = ap.parse_args()
    sys.setrecursionlimit(20_000)  # the battery builds JSON nested 1,000 deep
    only = set(a.only.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model("tiny", root)
        if only & {"inputs", "fuzz", "disconnect"}:
            with server(model, 32, 64, 2, ("--api-key", KEY)) as (base, proc):
                for name in ("inputs", "fuzz", "disconnect"):
                    if name not in only:
                        continue
                    t0 = time.monotonic()
                    results[name] = (probe_inputs(base) if name == "inputs" else
                                     probe_fuzz(base, a.fuzz_examples) if name == "fuzz" else
                                     probe_disconnect(base, proc, a.clients, a.rounds))
                    results[name]["seconds"] = round(time.monotonic() - t0, 1)
                    print(name, json.dumps(results[name])[:2000], flush=True)
                if proc.poll() is not None:
                    results["server"] = {"findings": [f"the server exited with {proc.returncode}"]}
        if "sigterm" in only:
            results["sigterm"] = probe_sigterm(model, 16)
            print("sigterm", json.dumps(results["sigterm"]), flush=True)
        if "kill9" in only:
            results["kill9"] = probe_kill9(root, a.kills, a.seed)
            print("kill9", json.dumps(results["kill9"]), flush=True)
    m = machine_info()
    lines = [f"`python bench/probes.py --only {a.only} --fuzz-examples {a.fuzz_examples}` on {m.get('cpu', '?')}, "
             f"{time.strftime('%Y-%m-%d')}.", "", "| probe | what was sent | findings |", "|---|---|---|"]
    for name, r in results.items():
        what = {k: v for k, v in r.items() if k != "findings"}
        lines.append(f"| {name} | {json.dumps(what)[:300]} | {len(r['findings'])}: "
                     f"{'; '.join(r['findings'])[:400] or 'none'} |")
    body = "\n".join(lines)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    print(body)
    if a.write:
        write_section(a.write, "probes", "Hardening probes (issue 17)", body)
    return 1 if any(r["findings"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
