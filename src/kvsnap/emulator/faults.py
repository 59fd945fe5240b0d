"""Scripted faults: tests tell the server how to misbehave, request by request.

``server.inject("POST bulk/get", [Fault(status=500)])`` makes the next
bulk get answer 500 and the one after it succeed. A script matches one
endpoint name (see `kvsnap.emulator.routing`) or ``"*"`` for every request;
its faults are used in order, one per matching request. ``None`` in the list
lets that request through untouched. ``after=N`` lets the first N matching
requests through before the script starts, and ``repeat_last=True`` keeps
the last fault forever, so "every bulk get after the third answers 500" is::

    server.inject("POST bulk/get", [Fault(status=500)], after=3, repeat_last=True)

Scripts are consulted in the order they were added; the first one that still
has something planned (a skip, a fault or ``None``) takes the request, and an
exhausted script lets requests fall through to the next.

Random faults (``--fault-rate``, `RandomFaults`) apply to the requests that
no script takes, so scripted faults take precedence. Each such request draws
from one `random.Random` seeded with ``--fault-seed``: the same seed and the
same sequence of requests give the same faults. Concurrent clients reach the
server in an order that varies from run to run, which changes the sequence
and therefore which request gets which fault.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvsnap.emulator.responses import (
    CODE_INTERNAL,
    CODE_RATE_LIMITED,
    Response,
    error_response,
)

ANY_ENDPOINT = "*"
RATE_LIMIT_MESSAGE = "Please wait and consider throttling your request speed"

# The kinds of random fault, as `--faults` names them.
FAULT_KINDS = ("429", "500", "502", "503", "drop", "slow", "truncate")
# Random 429 responses carry a Retry-After of 0 to this many whole seconds.
RANDOM_RETRY_AFTER_MAX_SECONDS = 2
# A random slow response is sent this long (milliseconds) after the request.
RANDOM_SLOW_MS = (1000.0, 3000.0)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour.

    ``status`` is answered in the error envelope (429 with code 971, other
    statuses with code 10002) unless ``body`` gives the raw bytes to send.
    ``retry_after`` adds a ``Retry-After`` header (seconds). ``drop`` closes
    the connection without answering. ``delay_ms`` waits before answering
    (or before dropping). ``truncate`` announces more body bytes than it
    sends (the full length, then only half of the body), then closes the
    connection. With ``pass_through`` the request is handled as usual after
    the delay, and ``truncate`` cuts that real response, so a write is stored
    although the client sees a broken response.
    """

    status: int = 500
    retry_after: float | None = None
    drop: bool = False
    delay_ms: float = 0.0
    truncate: bool = False
    body: bytes | None = None
    content_type: str = "application/json"
    pass_through: bool = False

    @property
    def kind(self) -> str:
        """The name under which stats count this fault (see `FAULT_KINDS`)."""
        if self.drop:
            return "drop"
        if self.truncate:
            return "truncate"
        if self.pass_through:
            return "slow"
        return str(self.status)

    def response(self) -> Response:
        if self.drop:
            return Response(0, drop=True)
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            seconds = self.retry_after
            whole = seconds == int(seconds)
            headers["Retry-After"] = str(int(seconds) if whole else seconds)
        if self.body is not None:
            response = Response(
                self.status, self.body, {"Content-Type": self.content_type, **headers}
            )
        elif self.status == 429:
            response = error_response(
                429, CODE_RATE_LIMITED, RATE_LIMIT_MESSAGE, headers
            )
        else:
            message = f"injected fault: HTTP {self.status}"
            response = error_response(self.status, CODE_INTERNAL, message, headers)
        if self.truncate:
            response.truncate_at = len(response.body) // 2
        return response


@dataclass
class _Script:
    endpoint: str
    faults: list[Fault | None]
    skip: int
    repeat_last: bool
    used: int = 0

    def next_fault(self, endpoint: str) -> tuple[bool, Fault | None]:
        """(matched, fault): whether the script took the request, and how."""
        if self.endpoint not in (ANY_ENDPOINT, endpoint):
            return False, None
        if self.skip > 0:
            self.skip -= 1
            return True, None
        if self.used < len(self.faults):
            fault = self.faults[self.used]
            self.used += 1
            return True, fault
        if self.repeat_last and self.faults:
            return True, self.faults[-1]
        return False, None


class RandomFaults:
    """Draws a fault for a share of requests, repeatably for a given seed.

    ``rate`` (0 to 1) is the probability that a request gets a fault.
    ``kinds`` is a subset of `FAULT_KINDS` to choose from with equal chances
    (empty means all). Raises ValueError for a rate outside 0..1 or an
    unknown kind. Not thread-safe by itself, so `FaultLayer` calls `draw`
    under its lock.
    """

    def __init__(
        self, rate: float, *, seed: int | None = None, kinds: Sequence[str] = ()
    ) -> None:
        chosen = tuple(dict.fromkeys(kinds or FAULT_KINDS))
        unknown = [kind for kind in chosen if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown fault kind {unknown[0]!r}: expected some of "
                + ", ".join(FAULT_KINDS)
            )
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {rate!r} is outside 0 to 1")
        self.rate = rate
        self.seed = seed
        self.kinds = chosen
        self._random = random.Random(seed)

    def draw(self) -> Fault | None:
        """Return a fault for this request, or None to let it through."""
        # Always the same number of draws per fault, so a request's fault
        # depends only on its position in the sequence.
        roll = self._random.random()
        kind = self._random.choice(self.kinds)
        detail = self._random.random()
        if roll >= self.rate:
            return None
        return random_fault(kind, detail)


def random_fault(kind: str, detail: float) -> Fault:
    """Build the fault of one kind; ``detail`` (0 to 1) picks its wait."""
    if kind == "429":
        seconds = int(detail * (RANDOM_RETRY_AFTER_MAX_SECONDS + 1))
        return Fault(status=429, retry_after=seconds)
    if kind == "drop":
        return Fault(drop=True)
    if kind == "slow":
        low, high = RANDOM_SLOW_MS
        return Fault(delay_ms=low + detail * (high - low), pass_through=True)
    if kind == "truncate":
        return Fault(truncate=True, pass_through=True)
    return Fault(status=int(kind))


@dataclass
class FaultLayer:
    """Holds the scripts and the random faults, and picks a request's fault.

    A script that takes the request decides, even when it lets the request
    through with ``None``; the random faults see only the other requests.
    """

    _scripts: list[_Script] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    fired: int = 0
    random_faults: RandomFaults | None = None

    def inject(
        self,
        endpoint: str,
        faults: Sequence[Fault | None],
        *,
        after: int = 0,
        repeat_last: bool = False,
    ) -> None:
        with self._lock:
            self._scripts.append(_Script(endpoint, list(faults), after, repeat_last))

    def clear(self) -> None:
        with self._lock:
            self._scripts.clear()

    def pick(self, endpoint: str) -> Fault | None:
        with self._lock:
            for script in self._scripts:
                matched, fault = script.next_fault(endpoint)
                if matched:
                    if fault is not None:
                        self.fired += 1
                    return fault
            if self.random_faults is None:
                return None
            fault = self.random_faults.draw()
            if fault is not None:
                self.fired += 1
            return fault
