"""Request counters, served at ``GET /__emulator/stats``.

Every request under ``/client/v4`` is counted once under its endpoint name
(`kvsnap.emulator.routing`), whatever its outcome: rejected, rate-limited or
faulted requests count too. ``statuses`` counts the answers by HTTP status
(``"drop"`` for dropped connections). ``faults`` counts injected faults,
scripted and random, by kind (``"429"``, ``"500"``, ``"drop"``, ``"slow"``,
``"truncate"`` and so on, see `kvsnap.emulator.faults.Fault.kind`).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()

    def count_request(self, endpoint: str) -> None:
        with self._lock:
            self._requests[endpoint] += 1

    def count_status(self, status: int | str) -> None:
        with self._lock:
            self._statuses[str(status)] += 1

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._requests.values()),
                "requests": dict(sorted(self._requests.items())),
                "statuses": dict(sorted(self._statuses.items())),
                "faults": dict(sorted(self._faults.items())),
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._statuses.clear()
            self._faults.clear()
