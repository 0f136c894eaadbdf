"""The server's settings (`nanoseek serve` flags map onto these fields one to one)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    served_model_name: str = "nanoseek"
    api_key: str | None = None
    max_queue: int = 256  # sequences that may wait beyond a full batch; more are refused with 429
    max_body_bytes: int = 4 << 20
    reasoning_parser: bool = True  # split `<think>...</think>` into reasoning_content
    keepalive_s: float = 15.0  # SSE `: keep-alive` comment after this long without output
    drain_timeout_s: float = 10.0  # on shutdown, in-flight requests get this long to finish before an abort
    # Browser protection (issue 17 item 5). A request whose Origin is another site (a page in the user's browser
    # driving the server) is refused unless listed here ("*": any); one whose Host is a domain name that is not
    # localhost (DNS rebinding) is refused unless listed in allowed_hosts ("*": any). IP literals always pass.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Slow clients (issue 17 item 4): a request's header block must arrive within header_timeout_s of the connection
    # opening or of the request's first byte on a keep-alive connection (else 408 and closed; see header_timeout.py);
    # a request body must arrive within read_timeout_s (else 408); at most max_connections connections are open at
    # once (uvicorn answers 503 beyond); idle keep-alive connections close after keepalive_timeout_s.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 65536  # a longer header block: 431 and closed (nginx allows 32 KiB, h11 16 KiB)
    read_timeout_s: float = 30.0
    max_connections: int = 1000
    keepalive_timeout_s: float = 5.0
    # Tokenizing (issue 17 item 3): chat templates are rendered and prompts tokenized in the server's own pool of
    # tokenizer_threads threads, off the event loop and apart from Python's default executor; at most
    # tokenizer_queue requests wait for a thread beyond those being tokenized (room for a burst of clients arriving
    # together: a short prompt takes well under a millisecond), more are refused with 429.
    tokenizer_threads: int = 2
    tokenizer_queue: int = 64
