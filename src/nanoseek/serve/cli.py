"""What `nanoseek serve` runs: its arguments and the start-up (engine, app, uvicorn)."""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("nanoseek.serve")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (Hugging Face layout, with tokenizer files)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("NANOSEEK_API_KEY"),
                   help="require `Authorization: Bearer KEY` on /v1 (default: $NANOSEEK_API_KEY, else none)")
    p.add_argument("--served-model-name", default=None, help="the model id clients ask for (default: dir name)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=128,
                   help="sequences that may wait beyond a full batch; more are answered 429 + Retry-After")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + completion limit")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tokens per engine step")
    p.add_argument("--cache-budget", default=None, help="bytes for the KV cache, e.g. 512MiB")
    p.add_argument("--speculative", type=int, default=0, metavar="K", help="MTP draft tokens per step (0 = off)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20, help="request body limit (413 beyond)")
    p.add_argument("--reasoning-parser", default="deepseek_r1", choices=["deepseek_r1", "none"],
                   help="split <think>...</think> into reasoning_content (deepseek_r1) or leave it in content")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM before they are cancelled")
    p.add_argument("--allowed-origins", default="",
                   help="comma-separated browser origins allowed to call the API (e.g. http://localhost:3000; "
                        "'*' for any); other sites' pages get 403")
    p.add_argument("--allowed-hosts", default="",
                   help="comma-separated Host names accepted besides localhost and IP addresses ('*' for any)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a request's headers to arrive (408 and closed; slowloris clients)")
    p.add_argument("--max-header-bytes", type=int, default=65536,
                   help="bytes a request's line and headers may take (431 and closed beyond)")
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds for a request body to arrive (408)")
    p.add_argument("--max-connections", type=int, default=1000, help="open connections at once (503 beyond)")
    p.add_argument("--keepalive-timeout", type=float, default=5.0, help="seconds an idle keep-alive connection stays")
    p.add_argument("--tokenizer-threads", type=int, default=2,
                   help="threads that render chat templates and tokenize prompts (off the event loop)")
    p.add_argument("--tokenizer-queue", type=int, default=64,
                   help="requests that may wait for a tokenizer thread; more are answered 429 + Retry-After")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run_serve(a: argparse.Namespace) -> int:
    import torch

    from ..infer.llm import LLM
    from .app import default_model_name, run_server
    from .config import ServeConfig
    logging.basicConfig(level=a.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    for name, v, lo in (("--port", a.port, 0), ("--max-num-seqs", a.max_num_seqs, 1), ("--max-queue", a.max_queue, 0),
                        ("--max-request-bytes", a.max_request_bytes, 1), ("--max-connections", a.max_connections, 1),
                        ("--max-header-bytes", a.max_header_bytes, 256),
                        ("--header-timeout", a.header_timeout, 0.001), ("--read-timeout", a.read_timeout, 0.001),
                        ("--keepalive-timeout", a.keepalive_timeout, 0.001),
                        ("--tokenizer-threads", a.tokenizer_threads, 1), ("--tokenizer-queue", a.tokenizer_queue, 0)):
        if v < lo or name == "--port" and v > 65535:
            raise ValueError(f"{name}: out of range (got {v})")
    if a.num_threads is not None:
        torch.set_num_threads(a.num_threads)
    if not a.api_key and a.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", a.host)
    llm = LLM(a.model, max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
              cache_budget=a.cache_budget, max_model_len=a.max_model_len, speculative=a.speculative or None,
              dtype=a.dtype, device=a.device)
    cfg = ServeConfig(served_model_name=a.served_model_name or default_model_name(a.model), api_key=a.api_key,
                      max_queue=a.max_queue, max_body_bytes=a.max_request_bytes,
                      reasoning_parser=a.reasoning_parser != "none", drain_timeout_s=min(10.0, a.shutdown_timeout),
                      allowed_origins=tuple(x.strip() for x in a.allowed_origins.split(",") if x.strip()),
                      allowed_hosts=tuple(x.strip() for x in a.allowed_hosts.split(",") if x.strip()),
                      header_timeout_s=a.header_timeout, read_timeout_s=a.read_timeout,
                      max_header_bytes=a.max_header_bytes,
                      max_connections=a.max_connections,
                      keepalive_timeout_s=a.keepalive_timeout,
                      tokenizer_threads=a.tokenizer_threads, tokenizer_queue=a.tokenizer_queue)
    run_server(llm, cfg, a.host, a.port, shutdown_timeout_s=a.shutdown_timeout, log_level=a.log_level)
    return 0
