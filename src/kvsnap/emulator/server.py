"""The HTTP side of the emulator: sockets, bodies, and `EmulatorServer`.

The standard library's `ThreadingHTTPServer` speaks HTTP/1.1 with keep-alive
here, one thread per connection, which is what the SDK's connection pool
expects. It was chosen over an ASGI server because it adds no dependency and
gives byte-level control over the answer: a fault can close the socket
without a word or cut a body short, which higher-level frameworks hide.

Requests under ``/client/v4`` go through the `Pipeline`; ``/__emulator/...``
holds the unauthenticated control endpoints::

    GET  /__emulator/health        {"ok": true}
    GET  /__emulator/stats         {"total": N, "requests": {...}, "statuses": {...},
                                    "faults": {...}}
    POST /__emulator/stats/reset   zero the counters, answer the zeroed stats
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from kvsnap.emulator.faults import Fault, FaultLayer, RandomFaults
from kvsnap.emulator.handlers import BULK_GET_BINARY_MODES, Context, Request
from kvsnap.emulator.pipeline import API_PREFIX, Pipeline
from kvsnap.emulator.ratelimit import SlidingWindow
from kvsnap.emulator.responses import (
    CODE_BAD_BODY,
    CODE_NO_ROUTE,
    Response,
    error_response,
    json_response,
)
from kvsnap.emulator.routing import match
from kvsnap.emulator.stats import Stats
from kvsnap.emulator.store import Store
from kvsnap.limits import BULK_WRITE_MAX_BYTES

log = logging.getLogger(__name__)

# The example account identifier of Cloudflare's own API documentation, so it
# reads as a placeholder; and a token that is public on purpose.
DEFAULT_ACCOUNT_ID = "023e105f4ecef8ad9ca31a8372d0c353"
DEFAULT_TOKEN = "kvsnap-emulator-demo-token"
DEFAULT_HOST = "127.0.0.1"

# No endpoint takes a body over 100 MB (bulk write's limit). Larger bodies are
# read and thrown away up to DRAIN_LIMIT so the client sees the 413 instead of
# a broken pipe; beyond it the 413 is sent and the connection closed.
MAX_BODY_BYTES = BULK_WRITE_MAX_BYTES
DRAIN_LIMIT = 256 * 1024 * 1024
_CHUNK = 1024 * 1024
CONTROL_PREFIX = "/__emulator"
# How long `stop` waits for running requests. After that it leaves the
# database open rather than close it under them.
STOP_WAIT_SECONDS = 30.0


class _BodyTooLarge(Exception):
    def __init__(self, drained: bool) -> None:
        self.drained = drained


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kvsnap-emulator"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle
        # and delayed ACKs add ~40 ms to each keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # -- reading ---------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length <= MAX_BODY_BYTES:
            return self.rfile.read(length)
        if length > DRAIN_LIMIT:
            raise _BodyTooLarge(drained=False)
        while length > 0:
            chunk = self.rfile.read(min(_CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
        raise _BodyTooLarge(drained=True)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = self.rfile.read(size)
            self.rfile.readline()
            total += size
            if total > DRAIN_LIMIT:
                raise _BodyTooLarge(drained=False)
            if total <= MAX_BODY_BYTES:
                chunks.append(data)
            else:
                chunks.clear()
        if total > MAX_BODY_BYTES:
            raise _BodyTooLarge(drained=True)
        return b"".join(chunks)

    # -- answering -------------------------------------------------------

    def _handle(self) -> None:
        target = self.path
        path, _, query = target.partition("?")
        body_too_large = False
        try:
            body = self._read_body()
        except _BodyTooLarge as exc:
            body, body_too_large = b"", True
            if not exc.drained:
                self.close_connection = True
        except (ValueError, OSError):
            self.close_connection = True
            self._send(error_response(400, CODE_BAD_BODY, "unreadable request body"))
            return

        if path.startswith(CONTROL_PREFIX):
            response = self.server.emulator._control(self.command, path)
        elif path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            request = Request(
                method=self.command,
                path=path[len(API_PREFIX) :],
                query=parse_qs(query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                route=match(self.command, path[len(API_PREFIX) :]),
                body_too_large=body_too_large,
            )
            with self.server.busy():
                response = self.server.pipeline(request)
        else:
            response = error_response(404, CODE_NO_ROUTE, "No route for the URI")
        self._send(response)

    def _send(self, response: Response) -> None:
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = response.body
        if response.truncate_at is not None:
            self.close_connection = True
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        declared = len(body)
        if response.truncate_at is not None:
            # Announce more than is sent, even when the body is empty.
            declared = max(declared, response.truncate_at + 1)
        self.send_header("Content-Length", str(declared))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.truncate_at is not None:
            body = body[: response.truncate_at]
        try:
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], pipeline: Pipeline, emulator: EmulatorServer
    ) -> None:
        self.pipeline = pipeline
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        # Requests inside the pipeline, which may be using the database.
        self._running = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count a request as running while it is inside the pipeline."""
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request runs in the pipeline; False if time ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed request instead of printing a traceback to stderr.

        A client that goes away mid-answer (a timeout, a cancelled task)
        raises ConnectionError here, which is normal for a server.
        """
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.exception("request from %s failed", client_address)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            if is_open:
                self._open.add(connection)
            else:
                self._open.discard(connection)

    def close_connections(self) -> None:
        """Shut every kept-alive connection so its thread ends."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class EmulatorServer:
    """A Cloudflare Workers KV API server on 127.0.0.1, for tests and demos.

    ``start()`` serves in a background thread and returns self;
    ``serve_forever()`` serves in the calling thread (the CLI). Data lives in
    ``data_dir/kv.sqlite3`` and survives restarts. ``clock`` (epoch seconds)
    decides what has expired; tests may replace it at any time. ``seed``
    makes the latency draws repeatable. ``stale_reads_seconds`` above 0
    makes reads return a key's previous state for that long after it is
    written or deleted, as Workers KV may because it is eventually
    consistent. The time is measured on ``clock`` (see `kvsnap.emulator.store`).
    ``fault_rate`` above 0 gives that share of API requests a random fault,
    drawn from ``fault_kinds`` (default: all of `faults.FAULT_KINDS`) with
    ``fault_seed`` (see `kvsnap.emulator.faults`); scripted faults from
    `inject` take precedence.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        accounts: Sequence[str] | None = None,
        tokens: Sequence[str] | None = None,
        latency_ms: tuple[float, float] | None = None,
        rate_limit: tuple[int, float] | None = None,
        bulk_get_binary: str = "replace",
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        stale_reads_seconds: float = 0.0,
        fault_rate: float = 0.0,
        fault_seed: int | None = None,
        fault_kinds: Sequence[str] = (),
    ) -> None:
        if bulk_get_binary not in BULK_GET_BINARY_MODES:
            raise ValueError(f"bulk_get_binary must be one of {BULK_GET_BINARY_MODES}")
        if latency_ms is not None and not 0 <= latency_ms[0] <= latency_ms[1]:
            raise ValueError("latency_ms must be (low, high) with 0 <= low <= high")
        if not stale_reads_seconds >= 0:
            raise ValueError("stale_reads_seconds must be 0 or more")
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.accounts = list(accounts) if accounts else [DEFAULT_ACCOUNT_ID]
        self.tokens = list(tokens) if tokens else [DEFAULT_TOKEN]
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self.bulk_get_binary = bulk_get_binary
        self.seed = seed
        self.stale_reads_seconds = stale_reads_seconds
        self._clock = clock or time.time
        self._stats = Stats()
        self._faults = FaultLayer()
        # Built even at rate 0, so that a bad rate or kind raises ValueError.
        random_faults = RandomFaults(fault_rate, seed=fault_seed, kinds=fault_kinds)
        if fault_rate > 0:
            self._faults.random_faults = random_faults
        self._window = SlidingWindow(*rate_limit) if rate_limit else None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._context: Context | None = None

    # -- life cycle ------------------------------------------------------

    def _bind(self) -> _HTTPServer:
        if self._httpd is not None:
            return self._httpd
        self._store = Store(self.data_dir, stale_reads_seconds=self.stale_reads_seconds)
        self._context = Context(self._store, self._now, self.bulk_get_binary)
        pipeline = Pipeline(
            self._context,
            accounts=self.accounts,
            tokens=self.tokens,
            stats=self._stats,
            faults=self._faults,
            latency_ms=self.latency_ms,
            rate_limit=self._window,
            seed=self.seed,
        )
        try:
            self._httpd = _HTTPServer((self.host, self.port), pipeline, self)
        except OSError:
            self._store.close()
            raise
        self.port = self._httpd.server_address[1]
        log.info("emulator listening on %s, data in %s", self.root_url, self.data_dir)
        return self._httpd

    def start(self) -> EmulatorServer:
        """Serve in a background thread; returns self once it accepts requests."""
        httpd = self._bind()
        if self._thread is None:
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"kvsnap-emulator-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `stop()` is called from another one."""
        self._bind().serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, close every connection and the database. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        # Handler threads still inside the pipeline (a slow answer to a
        # client that has gone) would use a closed database, which can crash
        # the process, so they finish first.
        if not httpd.wait_idle(timeout=STOP_WAIT_SECONDS):
            log.warning("requests still running after %s s at stop", STOP_WAIT_SECONDS)
            return
        if self._store is not None:
            self._store.close()
            self._store = None
        log.info("emulator stopped")

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses and credentials ----------------------------------------

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + API_PREFIX

    @property
    def account_id(self) -> str:
        return self.accounts[0]

    @property
    def token(self) -> str:
        return self.tokens[0]

    # -- clock, stats, faults --------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def _now(self) -> float:
        return self._clock()

    def stats(self) -> dict[str, Any]:
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def inject(
        self,
        endpoint: str,
        faults: Sequence[Fault | None],
        *,
        after: int = 0,
        repeat_last: bool = False,
    ) -> None:
        """Script faults for requests to one endpoint (or ``"*"``); see `faults`."""
        self._faults.inject(endpoint, faults, after=after, repeat_last=repeat_last)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def random_faults(self) -> RandomFaults | None:
        """The random faults in force; None turns them off, and tests may swap them."""
        return self._faults.random_faults

    @random_faults.setter
    def random_faults(self, faults: RandomFaults | None) -> None:
        self._faults.random_faults = faults

    @property
    def faults_fired(self) -> int:
        return self._faults.fired

    def reset_rate_limit(self) -> None:
        if self._window is not None:
            self._window.reset()

    def _control(self, method: str, path: str) -> Response:
        if method == "GET" and path == CONTROL_PREFIX + "/health":
            return json_response(200, {"ok": True})
        if method == "GET" and path == CONTROL_PREFIX + "/stats":
            return json_response(200, self.stats())
        if method == "POST" and path == CONTROL_PREFIX + "/stats/reset":
            self.reset_stats()
            return json_response(200, self.stats())
        return error_response(404, CODE_NO_ROUTE, "No route for the URI")
