"""What a handler answers: the `Response` type, the envelope and `ApiError`.

Every JSON answer under ``/client/v4`` is Cloudflare's envelope::

    {"success": bool, "errors": [{"code", "message"}], "messages": [], "result": ...}

plus ``result_info`` for lists. The error codes are listed, with where each
comes from, in the docstring of `kvsnap.emulator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

# Error codes (see the table in kvsnap/emulator/__init__.py).
CODE_RATE_LIMITED = 971
CODE_METHOD_NOT_ALLOWED = 7001
CODE_NO_ROUTE = 7003
CODE_AUTH = 10000
CODE_BAD_BODY = 10001
CODE_INTERNAL = 10002
CODE_BAD_QUERY = 10004
CODE_KEY_NOT_FOUND = 10009
CODE_NAMESPACE_NOT_FOUND = 10013
CODE_DUPLICATE_TITLE = 10014
CODE_BAD_TITLE = 10019
CODE_BAD_KEY = 10020
CODE_KEY_TOO_LONG = 10022
CODE_VALUE_TOO_LARGE = 10024
CODE_METADATA_TOO_LARGE = 10025
CODE_BAD_METADATA = 10026
CODE_TOO_MANY_ITEMS = 10030
CODE_BODY_TOO_LARGE = 10031
CODE_BAD_EXPIRATION = 10033
CODE_BAD_EXPIRATION_TTL = 10034
CODE_BINARY_VALUE = 10040
CODE_NOT_JSON_VALUE = 10041

JSON_TYPE = "application/json"


@dataclass
class Response:
    """One HTTP answer, or an instruction to drop the connection.

    ``truncate_at`` sends the full Content-Length but only that many body
    bytes, then closes: a fault the client must notice.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    truncate_at: int | None = None


class ApiError(Exception):
    """Raised by a handler to answer a 4xx/5xx in the error envelope."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers)


def json_response(
    status: int, document: Any, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        status=status,
        body=msgspec.json.encode(document),
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


def ok(result: Any = None, result_info: dict[str, Any] | None = None) -> Response:
    """A 200 success envelope around ``result``."""
    document: dict[str, Any] = {
        "success": True,
        "errors": [],
        "messages": [],
        "result": result,
    }
    if result_info is not None:
        document["result_info"] = result_info
    return json_response(200, document)


def error_response(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """A failure envelope with one error."""
    document = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return json_response(status, document, headers)
