"""``kvsnap emulator``: run the local Cloudflare KV API server.

Prints ``export ...`` lines for the SDK's environment variables on stdout
(paste them into a shell), logs on stderr, and stops cleanly on Ctrl-C or
SIGTERM with exit code 0. The default port, 8799, stays clear of
``wrangler dev``'s 8787; ``--port 0`` picks a free one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from kvsnap.cli.app import app
from kvsnap.config import ACCOUNT_ID
from kvsnap.emulator import DEFAULT_HOST, DEFAULT_TOKEN, EmulatorServer
from kvsnap.emulator.faults import FAULT_KINDS
from kvsnap.errors import ConfigError
from kvsnap.logs import register_secret

log = logging.getLogger(__name__)

DEFAULT_PORT = 8799
DEFAULT_DATA_DIR = Path(".kvsnap-emulator")

_LATENCY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?)\s*)?")
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*")


def parse_latency(text: str | None) -> tuple[float, float] | None:
    """``"50"`` -> (50, 50); ``"20-80"`` -> (20, 80), in milliseconds."""
    if text is None:
        return None
    found = _LATENCY.fullmatch(text)
    if not found:
        raise ConfigError(
            f"--latency-ms {text!r} is not valid: expected N or MIN-MAX in "
            "milliseconds, e.g. 50 or 20-80"
        )
    low = float(found.group(1))
    high = float(found.group(2)) if found.group(2) is not None else low
    if high < low:
        raise ConfigError(f"--latency-ms {text!r}: MIN must not exceed MAX")
    return low, high


def parse_rate_limit(text: str | None) -> tuple[int, float] | None:
    """``"1200/300"`` -> (1200, 300.0): REQUESTS per SECONDS."""
    if text is None:
        return None
    found = _RATE.fullmatch(text)
    if not found or int(found.group(1)) < 1 or float(found.group(2)) <= 0:
        raise ConfigError(
            f"--rate-limit {text!r} is not valid: expected REQUESTS/SECONDS "
            "with both above zero, e.g. 1200/300"
        )
    return int(found.group(1)), float(found.group(2))


def parse_fault_rate(value: float) -> float:
    """Check ``--fault-rate``: a probability from 0 to 1."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"--fault-rate {value} is not valid: expected a share of requests "
            "from 0 to 1, e.g. 0.1"
        )
    return value


def parse_fault_kinds(text: str | None) -> tuple[str, ...]:
    """``"429,drop"`` -> ("429", "drop"); None or "all" -> every kind."""
    if text is None or text.strip() == "all":
        return FAULT_KINDS
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        named = repr(unknown[0]) if unknown else "no kind"
        raise ConfigError(
            f"--faults {text!r} is not valid: {named} is not a fault kind; "
            f"expected a comma-separated list of {', '.join(FAULT_KINDS)}, or all"
        )
    return kinds


MAX_PORT = 65535


@app.command()
def emulator(
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to listen on."),
    port: int = typer.Option(
        DEFAULT_PORT, "--port", help="Port to listen on; 0 picks a free one."
    ),
    data: Path = typer.Option(
        DEFAULT_DATA_DIR, "--data", help="Folder for the SQLite data (kept)."
    ),
    account: list[str] = typer.Option(
        [], "--account", help="Account id to serve (repeatable)."
    ),
    token: list[str] = typer.Option(
        [], "--token", help="Bearer token to accept (repeatable)."
    ),
    latency_ms: str | None = typer.Option(
        None, "--latency-ms", help="Added latency per request: N or MIN-MAX."
    ),
    rate_limit: str | None = typer.Option(
        None, "--rate-limit", help="Request budget REQUESTS/SECONDS, e.g. 1200/300."
    ),
    bulk_get_binary: str = typer.Option(
        "replace",
        "--bulk-get-binary",
        help="Bulk get of non-UTF-8 values: replace (U+FFFD) or reject (400).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed for latency draws."),
    stale_reads: float = typer.Option(
        0.0,
        "--stale-reads",
        min=0.0,
        help="Seconds for which reads keep returning a key's previous state "
        "after it is written or deleted (0: reads are consistent).",
    ),
    fault_rate: float = typer.Option(
        0.0,
        "--fault-rate",
        help="Share of API requests, from 0 to 1, that get a random fault.",
    ),
    fault_seed: int | None = typer.Option(
        None,
        "--fault-seed",
        help="Seed for the random faults: the same seed and the same request "
        "order give the same faults (concurrent clients change the order).",
    ),
    faults: str | None = typer.Option(
        None,
        "--faults",
        help="Fault kinds to draw from, comma-separated: 429 (with Retry-After "
        "0-2 s), 500, 502, 503, drop (close without an answer), slow (answer "
        "after 1-3 s), truncate (close in the middle of the body) [default: all].",
    ),
) -> None:
    """Run a local Cloudflare Workers KV API server for demos and tests."""
    if bulk_get_binary not in ("replace", "reject"):
        raise ConfigError(
            f"--bulk-get-binary {bulk_get_binary!r} is not valid: "
            "expected replace or reject"
        )
    if not 0 <= port <= MAX_PORT:
        raise ConfigError(f"--port {port} is not valid: expected 0 to {MAX_PORT}")
    for value in account:
        if not ACCOUNT_ID.fullmatch(value):
            raise ConfigError(
                f"--account {value!r} is not valid: expected 32 hexadecimal "
                "characters, as Cloudflare account ids are"
            )
    for value in token:
        register_secret(value)
    fault_kinds = parse_fault_kinds(faults)
    parse_fault_rate(fault_rate)
    server = EmulatorServer(
        data,
        host=host,
        port=port,
        accounts=account or None,
        tokens=token or None,
        latency_ms=parse_latency(latency_ms),
        rate_limit=parse_rate_limit(rate_limit),
        bulk_get_binary=bulk_get_binary,
        seed=seed,
        stale_reads_seconds=stale_reads,
        fault_rate=fault_rate,
        fault_seed=fault_seed,
        fault_kinds=fault_kinds,
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
        _print_environment(server, default_token=not token)
        while not stop.wait(0.5):
            pass
    server.stop()


def _print_environment(server: EmulatorServer, *, default_token: bool) -> None:
    lines = [
        f"export CLOUDFLARE_BASE_URL={server.base_url}",
        f"export CLOUDFLARE_ACCOUNT_ID={server.account_id}",
    ]
    if default_token:
        lines.append(f"export CLOUDFLARE_API_TOKEN={DEFAULT_TOKEN}")
    else:
        lines.append("# CLOUDFLARE_API_TOKEN: one of the tokens given with --token")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    log.info("emulator ready at %s; Ctrl-C stops it", server.base_url)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM (installed before the ready lines)."""

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
