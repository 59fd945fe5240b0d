"""The path of one ``/client/v4`` request, as a stack of layers.

Each layer takes the request and the rest of the stack, and either answers
itself or calls the rest::

    latency -> faults -> rate limit -> body size -> auth -> account -> handler

Counting happens before the stack (so every request counts, whatever
happens to it), and `ApiError` raised anywhere becomes its envelope. A new
kind of misbehaviour (slow bodies, say) is one more layer in
`Pipeline.layers`, nowhere else.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence

from kvsnap.emulator.faults import RATE_LIMIT_MESSAGE, FaultLayer
from kvsnap.emulator.handlers import HANDLERS, Context, Request
from kvsnap.emulator.ratelimit import SlidingWindow
from kvsnap.emulator.responses import (
    CODE_AUTH,
    CODE_BODY_TOO_LARGE,
    CODE_INTERNAL,
    CODE_METHOD_NOT_ALLOWED,
    CODE_NO_ROUTE,
    CODE_RATE_LIMITED,
    ApiError,
    Response,
    error_response,
)
from kvsnap.emulator.routing import OTHER
from kvsnap.emulator.stats import Stats
from kvsnap.limits import BULK_WRITE_MAX_BYTES

log = logging.getLogger(__name__)

Next = Callable[[Request], Response]
Layer = Callable[[Request, Next], Response]

API_PREFIX = "/client/v4"
_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")


class Pipeline:
    """Answers /client/v4 requests; shared by all request threads."""

    def __init__(
        self,
        context: Context,
        *,
        accounts: Sequence[str],
        tokens: Sequence[str],
        stats: Stats,
        faults: FaultLayer,
        latency_ms: tuple[float, float] | None = None,
        rate_limit: SlidingWindow | None = None,
        seed: int | None = None,
    ) -> None:
        self.context = context
        self.accounts = frozenset(accounts)
        self.tokens = frozenset(tokens)
        self.stats = stats
        self.faults = faults
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self.layers: list[Layer] = [
            self.delay,
            self.inject_faults,
            self.limit_rate,
            self.limit_body,
            self.authenticate,
            self.check_account,
        ]

    def __call__(self, request: Request) -> Response:
        self.stats.count_request(request.route.endpoint)
        try:
            response = self._run(request, 0)
        except ApiError as exc:
            response = exc.to_response()
        except Exception:
            log.exception("emulator handler failed on %s", request.route.endpoint)
            response = error_response(500, CODE_INTERNAL, "internal emulator error")
        self.stats.count_status("drop" if response.drop else response.status)
        return response

    def _run(self, request: Request, index: int) -> Response:
        if index == len(self.layers):
            return self.dispatch(request)
        return self.layers[index](request, lambda r: self._run(r, index + 1))

    # -- layers ----------------------------------------------------------

    def delay(self, request: Request, next_layer: Next) -> Response:
        if self.latency_ms is not None:
            low, high = self.latency_ms
            with self._random_lock:
                milliseconds = self._random.uniform(low, high)
            time.sleep(milliseconds / 1000)
        return next_layer(request)

    def inject_faults(self, request: Request, next_layer: Next) -> Response:
        fault = self.faults.pick(request.route.endpoint)
        if fault is None:
            return next_layer(request)
        log.debug("injecting %s on %s", fault, request.route.endpoint)
        self.stats.count_fault(fault.kind)
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if not fault.pass_through:
            return fault.response()
        response = next_layer(request)
        if fault.truncate:
            response.truncate_at = len(response.body) // 2
        return response

    def limit_rate(self, request: Request, next_layer: Next) -> Response:
        if self.rate_limit is not None:
            wait = self.rate_limit.acquire()
            if wait is not None:
                raise ApiError(
                    429,
                    CODE_RATE_LIMITED,
                    RATE_LIMIT_MESSAGE,
                    headers={"Retry-After": str(wait)},
                )
        return next_layer(request)

    def limit_body(self, request: Request, next_layer: Next) -> Response:
        if request.body_too_large:
            raise ApiError(
                413,
                CODE_BODY_TOO_LARGE,
                f"request body is over the limit of {BULK_WRITE_MAX_BYTES} bytes",
            )
        return next_layer(request)

    def authenticate(self, request: Request, next_layer: Next) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, CODE_AUTH, "Authentication error")
        if token.strip() not in self.tokens:
            raise ApiError(403, CODE_AUTH, "Authentication error")
        return next_layer(request)

    def check_account(self, request: Request, next_layer: Next) -> Response:
        account_id = request.route.account_id
        if account_id is None or account_id in self.accounts:
            return next_layer(request)
        if not _ACCOUNT_ID.fullmatch(account_id):
            raise ApiError(
                404,
                CODE_NO_ROUTE,
                f"Could not route to {API_PREFIX}{request.path}, perhaps your "
                "object identifier is invalid?",
            )
        raise ApiError(403, CODE_AUTH, "Authentication error")

    def dispatch(self, request: Request) -> Response:
        route = request.route
        if route.endpoint == OTHER:
            if route.allowed:
                allowed = ", ".join(route.allowed)
                raise ApiError(
                    405,
                    CODE_METHOD_NOT_ALLOWED,
                    f"Method {request.method} not allowed here (allowed: {allowed})",
                    headers={"Allow": allowed},
                )
            raise ApiError(404, CODE_NO_ROUTE, "No route for the URI")
        return HANDLERS[route.endpoint](request, self.context)
