"""Which endpoint a request is for, by method and path shape.

Every request under ``/client/v4`` gets a stable endpoint name, used in the
stats, for scripted faults and to pick the handler:

====================  ==========================================================
name                  request
====================  ==========================================================
``GET namespaces``    GET    /accounts/{a}/storage/kv/namespaces
``POST namespaces``   POST   /accounts/{a}/storage/kv/namespaces
``GET namespace``     GET    .../namespaces/{ns}
``PUT namespace``     PUT    .../namespaces/{ns}  (rename)
``DELETE namespace``  DELETE .../namespaces/{ns}
``GET keys``          GET    .../namespaces/{ns}/keys
``GET values``        GET    .../namespaces/{ns}/values/{key}
``PUT values``        PUT    .../namespaces/{ns}/values/{key}
``DELETE values``     DELETE .../namespaces/{ns}/values/{key}
``GET metadata``      GET    .../namespaces/{ns}/metadata/{key}
``PUT bulk``          PUT    .../namespaces/{ns}/bulk
``DELETE bulk``       DELETE .../namespaces/{ns}/bulk  (deprecated bulk delete)
``POST bulk/delete``  POST   .../namespaces/{ns}/bulk/delete
``POST bulk/get``     POST   .../namespaces/{ns}/bulk/get
``other``             anything else under /client/v4 (answered 404 or 405)
====================  ==========================================================

Path segments are split on ``/`` in the raw path and percent-decoded exactly
once with `urllib.parse.unquote_to_bytes`, so ``+`` stays ``+`` and ``%25``
becomes ``%``. A key is the rest of the path after ``values/`` or
``metadata/``: the SDK encodes ``/`` in a key as ``%2F`` (one segment), and a
client that sends a literal ``/`` gets it back as part of the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

OTHER = "other"

ENDPOINTS = (
    "GET namespaces",
    "POST namespaces",
    "GET namespace",
    "PUT namespace",
    "DELETE namespace",
    "GET keys",
    "GET values",
    "PUT values",
    "DELETE values",
    "GET metadata",
    "PUT bulk",
    "DELETE bulk",
    "POST bulk/delete",
    "POST bulk/get",
)

# Path shapes after the namespace id that carry no key.
_SHAPES = {"": "namespace", "keys": "keys", "bulk": "bulk"}
_SHAPES.update({"bulk/delete": "bulk/delete", "bulk/get": "bulk/get"})


@dataclass(frozen=True)
class Route:
    """The endpoint a request matched, with its decoded path parameters.

    ``endpoint`` is ``other`` when no endpoint matched; ``allowed`` is then
    the methods the path would take (empty when the path itself is unknown).
    """

    endpoint: str
    account_id: str | None = None
    namespace_id: str | None = None
    key: bytes | None = None
    allowed: tuple[str, ...] = ()


def _methods(shape: str) -> tuple[str, ...]:
    return tuple(e.split(" ", 1)[0] for e in ENDPOINTS if e.split(" ", 1)[1] == shape)


def match(method: str, path: str) -> Route:
    """Match a raw path relative to /client/v4 (starting with ``/``)."""
    segments = path.split("/")[1:]
    prefix = ["accounts", None, "storage", "kv", "namespaces"]
    if len(segments) < 5 or any(
        want is not None and segments[i] != want for i, want in enumerate(prefix)
    ):
        return Route(OTHER)
    account_id = unquote(segments[1])
    rest = segments[5:]
    namespace_id: str | None = None
    key: bytes | None = None
    if not rest or rest == [""]:
        shape = "namespaces"
    else:
        namespace_id = unquote(rest[0])
        tail = rest[1:]
        if len(tail) >= 2 and tail[0] in ("values", "metadata"):
            shape = tail[0]
            key = unquote_to_bytes("/".join(tail[1:]))
        elif "/".join(tail) in _SHAPES:
            shape = _SHAPES["/".join(tail)]
        else:
            return Route(OTHER)
    endpoint = f"{method} {shape}"
    if endpoint not in ENDPOINTS:
        return Route(OTHER, account_id, namespace_id, key, _methods(shape))
    return Route(endpoint, account_id, namespace_id, key)
