"""Server metrics in the Prometheus text exposition format (version 0.0.4), written out by hand.

Counters end in `_total`; a histogram is exposed as cumulative `_bucket{le="..."}` lines (the `+Inf` bucket equals
`_count`) plus `_sum` and `_count`. Every update takes one lock, so the engine thread and the event loop can both
record. Names follow vLLM's where there is one (`nanoseek:` prefix instead of `vllm:`).
"""
from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Sequence

# Latency buckets in seconds, from a fast loopback token to a long CPU prefill.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1  # le is inclusive: v == bound lands in that bucket
        self.sum += v


class Metrics:
    """The server's metrics. `model` labels every series, as vLLM's `model_name` does."""

    def __init__(self, model_name: str, prefix: str = "nanoseek:"):
        self.model = model_name
        self.p = prefix
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (endpoint, status code) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}  # finish reason -> count
        self.spec_draft = 0
        self.spec_accepted = 0
        self.preemptions = 0
        self.waiting = 0
        self.running_requests = 0
        self.running_seqs = 0
        self.cache_usage = 0.0
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.itl = _Histogram(ITL_BUCKETS)
        self.e2e = _Histogram(E2E_BUCKETS)

    # ------------------------------------------------------------------ recording
    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def add_prompt_tokens(self, n: int) -> None:
        with self._lock:
            self.prompt_tokens += n

    def add_generation_tokens(self, n: int) -> None:
        with self._lock:
            self.generation_tokens += n

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        with self._lock:
            self.itl.observe(seconds)

    def observe_finished(self, reason: str, e2e_seconds: float) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.e2e.observe(e2e_seconds)

    def set_engine_state(self, *, waiting: int, running_requests: int, running_seqs: int, cache_usage: float,
                         spec_draft: int, spec_accepted: int, preemptions: int) -> None:
        with self._lock:
            self.waiting, self.running_requests, self.running_seqs = waiting, running_requests, running_seqs
            self.cache_usage = cache_usage
            self.spec_draft, self.spec_accepted, self.preemptions = spec_draft, spec_accepted, preemptions

    # ------------------------------------------------------------------ exposition
    def render(self) -> str:
        m = (("model_name", self.model),)
        out: list[str] = []

        def head(name: str, kind: str, doc: str) -> str:
            full = self.p + name
            out.append(f"# HELP {full} {doc}")
            out.append(f"# TYPE {full} {kind}")
            return full

        def sample(name: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
            out.append(f"{name}{_labels(tuple(m) + tuple(labels))} {_num(value)}")

        def histogram(name: str, doc: str, h: _Histogram) -> None:
            full = head(name, "histogram", doc)
            acc = 0
            for bound, c in zip(h.bounds, h.counts):
                acc += c
                sample(full + "_bucket", acc, (("le", _num(bound)),))
            acc += h.counts[-1]
            sample(full + "_bucket", acc, (("le", "+Inf"),))
            sample(full + "_sum", h.sum)
            sample(full + "_count", acc)

        with self._lock:
            name = head("http_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
            for (endpoint, status), c in sorted(self.requests.items()):
                sample(name, c, (("endpoint", endpoint), ("status", status)))
            name = head("request_success_total", "counter", "Finished generation requests, by finish reason.")
            for reason, c in sorted(self.finished.items()):
                sample(name, c, (("finished_reason", reason),))
            sample(head("prompt_tokens_total", "counter", "Prompt tokens admitted."), self.prompt_tokens)
            sample(head("generation_tokens_total", "counter", "Tokens generated."), self.generation_tokens)
            sample(head("num_requests_waiting", "gauge", "Requests queued, not yet scheduled."), self.waiting)
            sample(head("num_requests_running", "gauge", "Requests being generated."), self.running_requests)
            sample(head("num_seqs_running", "gauge", "Sequences in the running batch (n samples count n)."),
                   self.running_seqs)
            sample(head("kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (1 = full)."),
                   self.cache_usage)
            sample(head("num_preemptions_total", "counter", "Sequences preempted for lack of cache blocks."),
                   self.preemptions)
            sample(head("spec_decode_num_draft_tokens_total", "counter", "MTP draft tokens proposed."),
                   self.spec_draft)
            sample(head("spec_decode_num_accepted_tokens_total", "counter", "MTP draft tokens accepted."),
                   self.spec_accepted)
            rate = self.spec_accepted / self.spec_draft if self.spec_draft else 0.0
            sample(head("spec_decode_draft_acceptance_rate", "gauge",
                        "Accepted / proposed MTP draft tokens since start (0 when none proposed)."), rate)
            histogram("time_to_first_token_seconds", "Time from arrival to the first generated token.", self.ttft)
            histogram("inter_token_latency_seconds", "Time between successive outputs of a request.", self.itl)
            histogram("e2e_request_latency_seconds", "Time from arrival to the last token.", self.e2e)
        return "\n".join(out) + "\n"
