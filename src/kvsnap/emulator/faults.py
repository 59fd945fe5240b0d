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
exhausted script lets requests fall through to the next. Random faults
(``--fault-rate``) will plug into the same `FaultLayer` later.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Fault:
    """One misbehaviour.

    ``status`` is answered in the error envelope (429 with code 971, other
    statuses with code 10002) unless ``body`` gives the raw bytes to send.
    ``retry_after`` adds a ``Retry-After`` header (seconds). ``drop`` closes
    the connection without answering. ``delay_ms`` waits before answering
    (or before dropping). ``truncate`` announces the full body length but
    sends only half of it, then closes the connection.
    """

    status: int = 500
    retry_after: float | None = None
    drop: bool = False
    delay_ms: float = 0.0
    truncate: bool = False
    body: bytes | None = None
    content_type: str = "application/json"

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


@dataclass
class FaultLayer:
    """Holds the scripts and picks the fault, if any, for each request."""

    _scripts: list[_Script] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    fired: int = 0

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
            return None
