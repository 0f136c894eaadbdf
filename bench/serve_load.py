"""Load benchmark of `nanoseek serve` over loopback (a benchmark, not a test).

    python bench/serve_load.py                       # tiny preset, random weights, results as markdown
    python bench/serve_load.py --write BENCHMARKS.md # also replace this benchmark's section there

1. Throughput and p50/p99 time to first token (TTFT) and inter-token latency (ITL) at 1, 8 and 32 concurrent
   streaming clients (closed loop: each client sends its next request when the last one ends), against the same
   requests run by the in-process engine at the same batch sizes: the HTTP overhead ratio.
2. Overload: 3x as many clients as the server admits (running + queued slots). Refused requests must come back
   fast (429 + Retry-After), admitted ones keep a bounded latency, and the server's memory stays flat.

The server runs as a subprocess (`nanoseek serve`), so the clients here do not share its interpreter. Everything
stays on 127.0.0.1; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

import nanoseek

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

PROMPTS = [f"Question {i}: what is {i} plus {i + 3}? Think step by step." for i in range(64)]


@dataclass
class Result:
    status: int
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0
    retry_after: float = 0.0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def make_model(preset: str, root: Path) -> Path:
    d = root / f"{preset}-model"
    torch.manual_seed(0)
    cfg = nanoseek.ModelConfig.preset(preset)
    nanoseek.save_pretrained(nanoseek.Transformer(cfg), d)
    texts = [f"{p} The answer is {i + i + 3}." for i, p in enumerate(PROMPTS)] * 4
    nanoseek.train_tokenizer(iter(texts), min(cfg.vocab_size, 1024), d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: Path, max_num_seqs: int, max_queue: int, threads: int, extra: tuple[str, ...] = (),
           stderr: Any = subprocess.DEVNULL):
    port = free_port()
    cmd = [sys.executable, "-m", "nanoseek.cli", "serve", str(model), "--port", str(port), "--served-model-name",
           "bench", "--max-num-seqs", str(max_num_seqs), "--max-queue", str(max_queue), "--num-threads",
           str(threads), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nanoseek serve did not start: {' '.join(cmd)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int) -> Result:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    async with client.stream("POST", base + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            res = Result(resp.status_code, e2e=time.perf_counter() - t0)
            res.retry_after = float(resp.headers.get("retry-after", 0) or 0)
            return res
        res = Result(200)
        last = None
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                res.tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["text"]:
                if last is None:
                    res.ttft = now - t0
                else:
                    res.itl.append(now - last)
                last = now
        res.e2e = time.perf_counter() - t0
        return res


async def closed_loop(base: str, clients: int, per_client: int, max_tokens: int, duration_s: float | None = None
                      ) -> tuple[list[Result], float]:
    """`clients` concurrent clients, each sending `per_client` requests back to back (or until `duration_s`)."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as client:
        results: list[Result] = []
        t0 = time.perf_counter()

        async def worker(c: int) -> None:
            for k in range(per_client):
                if duration_s is not None and time.perf_counter() - t0 > duration_s:
                    return
                results.append(await one_request(client, base, PROMPTS[(c * per_client + k) % len(PROMPTS)],
                                                 max_tokens))
                if results[-1].status != 200:  # a refused client waits as told, as the official SDKs do
                    await asyncio.sleep(min(results[-1].retry_after or 0.5, 2.0))
        await asyncio.gather(*(worker(c) for c in range(clients)))
        return results, time.perf_counter() - t0


class Engine:
    """The in-process engine on the same requests: the baseline without HTTP."""

    def __init__(self, model: Path, threads: int):
        torch.set_num_threads(threads)
        self.llm = nanoseek.LLM(model, max_num_seqs=32)
        self.llm.generate(PROMPTS[:2], nanoseek.SamplingParams(temperature=0, max_tokens=4))  # warm-up

    def throughput(self, batch: int, max_tokens: int) -> float:
        """Generated tokens/s with `batch` prompts at once."""
        sp = nanoseek.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        outs = self.llm.generate(PROMPTS[:batch], sp)
        return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)


# The overload prober: its own light process (httpx only), so the load generator's busy event loop does not delay
# it. Waits for the load to build up, then sends small requests 0.1 s apart and prints [[status, seconds], ...].
PROBE = """
import json, sys, time, httpx
base, delay, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
time.sleep(delay)
out = []
with httpx.Client(timeout=60) as c:
    for _ in range(count):
        t0 = time.perf_counter()
        r = c.post(base + "/v1/completions", json={"model": "bench", "prompt": "hello", "max_tokens": 2})
        out.append([r.status_code, time.perf_counter() - t0])
        time.sleep(0.1)
print(json.dumps(out))
"""


def ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: a random-weight --preset model made here)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2, help="alternating HTTP/engine repetitions per level (best kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the baseline")
    ap.add_argument("--overload-seconds", type=float, default=15.0)
    ap.add_argument("--write", metavar="FILE", help="replace this benchmark's section of FILE (e.g. BENCHMARKS.md)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = Path(a.model) if a.model else make_model(a.preset, Path(tmp.name))
    lines = [f"Model: {'`' + a.model + '`' if a.model else f'`{a.preset}` preset, random weights'}; "
             f"{a.max_tokens} generated tokens per request, greedy, streamed; server and baseline on "
             f"{a.threads} torch thread(s); best of {a.reps} alternating runs; {os.cpu_count()} CPU cores "
             "shared with other work; load average before: "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", ""]

    # 1. throughput and latency at 1, 8, 32 clients, and the in-process engine on the same batches. The load on a
    # shared machine drifts, so HTTP and engine runs alternate and each keeps its best of `--reps`.
    lines += ["| clients | requests | HTTP tok/s | engine tok/s | HTTP / engine | TTFT p50 ms | TTFT p99 ms | "
              "ITL p50 ms | ITL p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    engine = Engine(model, a.threads)
    unloaded_ttft_p99 = float("nan")
    with server(model, max_num_seqs=32, max_queue=64, threads=a.threads) as (base, _):
        asyncio.run(closed_loop(base, 2, 1, 4))  # warm-up
        for clients in (1, 8, 32):
            http_best, eng_best, ok = 0.0, 0.0, []
            for _ in range(a.reps):
                res, wall = asyncio.run(closed_loop(base, clients, a.requests_per_client, a.max_tokens))
                done = [r for r in res if r.status == 200]
                ok += done
                http_best = max(http_best, sum(r.tokens for r in done) / wall)
                eng_best = max(eng_best, engine.throughput(clients, a.max_tokens))
            ttft, itl = [r.ttft for r in ok if r.ttft], [x for r in ok for x in r.itl]
            if clients == 8:
                unloaded_ttft_p99 = pct(ttft, 99)
            lines.append(f"| {clients} | {len(ok)} | {http_best:.1f} | {eng_best:.1f} | {http_best / eng_best:.2f} | "
                         f"{ms(pct(ttft, 50))} | {ms(pct(ttft, 99))} | {ms(pct(itl, 50))} | {ms(pct(itl, 99))} |")
    del engine

    # 2. overload: 3x the admitted slots
    seqs, queue = 8, 8
    clients = 3 * (seqs + queue)
    with server(model, max_num_seqs=seqs, max_queue=queue, threads=a.threads) as (base, proc):
        asyncio.run(closed_loop(base, 2, 1, 4))
        rss0 = rss_mib(proc.pid)
        n_probe = max(5, int((a.overload_seconds - 3) / 0.12))
        prober = subprocess.Popen([sys.executable, "-c", PROBE, base, "2", str(n_probe)], stdout=subprocess.PIPE,
                                  text=True)
        res, wall = asyncio.run(closed_loop(base, clients, 10_000, a.max_tokens, a.overload_seconds))
        probed = json.loads(prober.communicate(timeout=120)[0])
        rss1 = rss_mib(proc.pid)
    ok = [r for r in res if r.status == 200]
    shed = [r for r in res if r.status in (429, 503)]
    other = [r for r in res if r.status not in (200, 429, 503)]
    probe_shed = [t for status, t in probed if status in (429, 503)]
    lines += ["", f"Overload: {clients} clients (refused ones retry after the server's Retry-After) against {seqs} "
                  f"running + {queue} queued slots for {a.overload_seconds:.0f} s. `shed answer` is timed by a "
                  f"separate probe process ({len(probed)} requests, {len(probe_shed)} refused); `as seen by the "
                  "load clients` includes their own busy event loop.", "",
              "| admitted | shed (429) | other | shed answer p50 / p99 ms | as seen by the load clients p50 / p99 ms "
              "| admitted TTFT p99 ms | unloaded TTFT p99 ms (8 clients) | admitted E2E p99 s | tok/s | "
              "server RSS before → after MiB |",
              "|---|---|---|---|---|---|---|---|---|---|",
              f"| {len(ok)} | {len(shed)} | {len(other)} | {ms(pct(probe_shed, 50))} / {ms(pct(probe_shed, 99))} | "
              f"{ms(pct([r.e2e for r in shed], 50))} / {ms(pct([r.e2e for r in shed], 99))} | "
              f"{ms(pct([r.ttft for r in ok if r.ttft], 99))} | "
              f"{ms(unloaded_ttft_p99)} | {pct([r.e2e for r in ok], 99):.2f} | "
              f"{sum(r.tokens for r in ok) / wall:.1f} | {rss0:.0f} → {rss1:.0f} |"]
    text = "\n".join(lines)
    print(text)
    if a.write:
        write_section(a.write, "serve_load", "Serving: `nanoseek serve` under load (`python bench/serve_load.py`)", text)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
