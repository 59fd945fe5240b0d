"""The KV API itself: one function per endpoint, on an authenticated request.

Handlers read a `Request`, call the `Store` and return a `Response`, or raise
`ApiError`. They run after the pipeline in `kvsnap.emulator.pipeline` has
counted, delayed, faulted, rate-limited and authenticated the request.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kvsnap.emulator import multipart, validate
from kvsnap.emulator.responses import (
    CODE_BAD_BODY,
    CODE_BAD_QUERY,
    CODE_BAD_TITLE,
    CODE_BINARY_VALUE,
    CODE_BODY_TOO_LARGE,
    CODE_DUPLICATE_TITLE,
    CODE_KEY_NOT_FOUND,
    CODE_NAMESPACE_NOT_FOUND,
    CODE_NOT_JSON_VALUE,
    CODE_TOO_MANY_ITEMS,
    ApiError,
    Response,
    ok,
)
from kvsnap.emulator.routing import Route
from kvsnap.emulator.store import DuplicateTitle, Namespace, Store, Write
from kvsnap.limits import (
    BULK_DELETE_MAX_KEYS,
    BULK_GET_MAX_KEYS,
    BULK_WRITE_MAX_BYTES,
    BULK_WRITE_MAX_PAIRS,
    LIST_PAGE_MAX,
    LIST_PAGE_MIN,
    NAMESPACES_PAGE_DEFAULT,
    NAMESPACES_PAGE_MAX,
)

MAX_TITLE_CHARS = 512  # OpenAPI workers-kv_namespace_title maxLength
BULK_GET_BINARY_MODES = ("replace", "reject")


@dataclass
class Request:
    """A request as the pipeline and handlers see it."""

    method: str
    path: str  # raw path, percent-encoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    route: Route = field(default_factory=lambda: Route("other"))
    body_too_large: bool = False  # the body was over the hard cap, not kept

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Context:
    """What handlers need besides the request."""

    store: Store
    clock: Callable[[], float]
    bulk_get_binary: str = "replace"


# -- helpers ---------------------------------------------------------------


def _int_param(
    request: Request, name: str, default: int, low: int, high: int | None
) -> int:
    text = request.param(name)
    if text is None or text == "":
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ApiError(400, CODE_BAD_QUERY, f"{name} must be an integer, got {text!r}")
    value = int(number)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, CODE_BAD_QUERY, f"{name} must be {bounds}, got {value}")
    return value


def _choice(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    text = request.param(name)
    if text is None or text == "":
        return default
    if text not in choices:
        raise ApiError(
            400, CODE_BAD_QUERY, f"{name} must be one of {', '.join(choices)}"
        )
    return text


def _json_body(request: Request) -> Any:
    if not request.body:
        raise ApiError(400, CODE_BAD_BODY, "request body is empty; JSON expected")
    try:
        return msgspec.json.decode(request.body)
    except msgspec.DecodeError as exc:
        message = f"request body is not valid JSON: {exc}"
        raise ApiError(400, CODE_BAD_BODY, message) from None


def _namespace_json(namespace: Namespace) -> dict[str, Any]:
    # Keys in URL paths are decoded before storing, hence supports_url_encoding.
    return {"id": namespace.id, "title": namespace.title, "supports_url_encoding": True}


def _namespace(request: Request, context: Context) -> Namespace:
    route = request.route
    assert route.account_id is not None and route.namespace_id is not None
    namespace = context.store.get_namespace(route.account_id, route.namespace_id)
    if namespace is None:
        raise ApiError(404, CODE_NAMESPACE_NOT_FOUND, "namespace not found")
    return namespace


def _title(request: Request) -> str:
    body = _json_body(request)
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(title, str) or not title.strip():
        raise ApiError(400, CODE_BAD_TITLE, "title must be a non-empty string")
    if len(title) > MAX_TITLE_CHARS:
        raise ApiError(
            400, CODE_BAD_TITLE, f"title is longer than {MAX_TITLE_CHARS} characters"
        )
    return title


def _duplicate(title: str) -> ApiError:
    return ApiError(
        400,
        CODE_DUPLICATE_TITLE,
        f"a namespace with this account ID and title already exists: {title!r}",
    )


def _key_list(body: Any, maximum: int, what: str) -> list[str]:
    if not isinstance(body, list):
        raise ApiError(400, CODE_BAD_BODY, f"{what} must be a JSON array of keys")
    if len(body) > maximum:
        raise ApiError(
            400,
            CODE_TOO_MANY_ITEMS,
            f"{what}: {len(body)} keys given, at most {maximum} allowed",
        )
    return body


# -- namespaces ------------------------------------------------------------


def list_namespaces(request: Request, context: Context) -> Response:
    page = _int_param(request, "page", 1, 1, None)
    per_page = _int_param(
        request, "per_page", NAMESPACES_PAGE_DEFAULT, 1, NAMESPACES_PAGE_MAX
    )
    order = _choice(request, "order", "id", ("id", "title"))
    direction = _choice(request, "direction", "asc", ("asc", "desc"))
    assert request.route.account_id is not None
    namespaces, total = context.store.list_namespaces(
        request.route.account_id,
        order,
        direction == "desc",
        per_page,
        (page - 1) * per_page,
    )
    info = {
        "page": page,
        "per_page": per_page,
        "count": len(namespaces),
        "total_count": total,
    }
    return ok([_namespace_json(n) for n in namespaces], info)


def create_namespace(request: Request, context: Context) -> Response:
    title = _title(request)
    assert request.route.account_id is not None
    try:
        namespace = context.store.create_namespace(request.route.account_id, title)
    except DuplicateTitle:
        raise _duplicate(title) from None
    return ok(_namespace_json(namespace))


def get_namespace(request: Request, context: Context) -> Response:
    return ok(_namespace_json(_namespace(request, context)))


def rename_namespace(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    title = _title(request)
    try:
        renamed = context.store.rename_namespace(namespace, title)
    except DuplicateTitle:
        raise _duplicate(title) from None
    return ok(_namespace_json(renamed))


def delete_namespace(request: Request, context: Context) -> Response:
    context.store.delete_namespace(_namespace(request, context))
    return ok(None)


# -- keys and values -------------------------------------------------------


def _cursor_after(cursor: str | None) -> bytes | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, CODE_BAD_QUERY, f"invalid cursor {cursor!r}") from None


def _cursor_of(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def _key_json(key: bytes, expiration: int | None, metadata: str | None) -> dict:
    entry: dict[str, Any] = {"name": key.decode("utf-8")}
    if expiration is not None:
        entry["expiration"] = expiration
    if metadata is not None:
        entry["metadata"] = msgspec.json.decode(metadata)
    return entry


def list_keys(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    limit = _int_param(request, "limit", LIST_PAGE_MAX, LIST_PAGE_MIN, LIST_PAGE_MAX)
    prefix = (request.param("prefix") or "").encode("utf-8")
    after = _cursor_after(request.param("cursor"))
    pairs = context.store.list_keys(
        namespace, context.clock(), prefix=prefix, after=after, limit=limit + 1
    )
    more = len(pairs) > limit
    pairs = pairs[:limit]
    cursor = _cursor_of(pairs[-1].key) if more else ""
    result = [_key_json(p.key, p.expiration, p.metadata) for p in pairs]
    return ok(result, {"count": len(result), "cursor": cursor})


def get_value(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    assert request.route.key is not None
    key = validate.key_from_path(request.route.key)
    pair = context.store.get(namespace, key, context.clock())
    if pair is None or pair.value is None:
        raise ApiError(404, CODE_KEY_NOT_FOUND, "key not found")
    headers = {"Content-Type": "application/octet-stream"}
    if pair.expiration is not None:
        headers["expiration"] = str(pair.expiration)
    return Response(200, pair.value, headers)


def get_metadata(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    assert request.route.key is not None
    key = validate.key_from_path(request.route.key)
    pair = context.store.get(namespace, key, context.clock(), with_value=False)
    if pair is None:
        raise ApiError(404, CODE_KEY_NOT_FOUND, "key not found")
    metadata = msgspec.json.decode(pair.metadata) if pair.metadata else None
    return ok(metadata)


def put_value(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    assert request.route.key is not None
    key = validate.key_from_path(request.route.key)
    content_type = request.headers.get("content-type", "")
    metadata: str | None = None
    if content_type.lower().startswith("multipart/form-data"):
        parts = multipart.parse(request.body, content_type)
        if "value" not in parts:
            raise ApiError(400, CODE_BAD_BODY, "multipart body has no 'value' part")
        value = parts["value"]
        if "metadata" in parts:
            metadata = validate.metadata_from_text(parts["metadata"])
    else:
        value = request.body
    validate.value_size(value)
    expiration = validate.expiration(
        request.param("expiration"), request.param("expiration_ttl"), context.clock()
    )
    write = Write(key, value, expiration, metadata)
    context.store.put(namespace, [write], context.clock())
    return ok(None)


def delete_value(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    assert request.route.key is not None
    key = validate.key_from_path(request.route.key)
    context.store.delete(namespace, [key], context.clock())
    return ok(None)


# -- bulk ------------------------------------------------------------------


def _bulk_item(index: int, item: Any, now: float) -> Write:
    """Check one bulk-write item; errors name the item and its key."""
    if not isinstance(item, dict):
        raise ApiError(400, CODE_BAD_BODY, f"item {index}: must be a JSON object")
    name, value = item.get("key"), item.get("value")
    try:
        key = validate.key_bytes(name)
        if not isinstance(value, str):
            raise ApiError(400, CODE_BAD_BODY, "value must be a string")
        encoded = item.get("base64", False)
        if not isinstance(encoded, bool):
            raise ApiError(400, CODE_BAD_BODY, "base64 must be a boolean")
        if encoded:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(
                    400, CODE_BAD_BODY, "value is not valid base64"
                ) from None
        else:
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400, CODE_BAD_BODY, "value is not valid UTF-8 text"
                ) from None
        validate.value_size(data)
        expiration = validate.expiration(
            item.get("expiration"), item.get("expiration_ttl"), now
        )
        metadata = validate.metadata_text(item.get("metadata"))
    except ApiError as exc:
        exc.message = f"item {index} (key {name!r}): {exc.message}"
        raise
    return Write(key, data, expiration, metadata)


def bulk_write(request: Request, context: Context) -> Response:
    """Write up to 10,000 pairs, all or nothing.

    Every item is checked before anything is written; one bad item fails the
    whole request with that item's error (index and key in the message), as
    Cloudflare does for a body that breaks the schema.
    """
    namespace = _namespace(request, context)
    if request.body_too_large or len(request.body) > BULK_WRITE_MAX_BYTES:
        raise ApiError(
            413,
            CODE_BODY_TOO_LARGE,
            f"request body is over the limit of {BULK_WRITE_MAX_BYTES} bytes",
        )
    body = _json_body(request)
    if not isinstance(body, list):
        raise ApiError(400, CODE_BAD_BODY, "body must be a JSON array of pairs")
    if len(body) > BULK_WRITE_MAX_PAIRS:
        raise ApiError(
            400,
            CODE_TOO_MANY_ITEMS,
            f"{len(body)} pairs given, at most {BULK_WRITE_MAX_PAIRS} allowed",
        )
    now = context.clock()
    writes = [_bulk_item(i, item, now) for i, item in enumerate(body)]
    context.store.put(namespace, writes, now)
    return ok({"successful_key_count": len(writes), "unsuccessful_keys": []})


def bulk_delete(request: Request, context: Context) -> Response:
    namespace = _namespace(request, context)
    names = _key_list(_json_body(request), BULK_DELETE_MAX_KEYS, "bulk delete body")
    keys = [validate.key_bytes(name) for name in names]
    context.store.delete(namespace, keys, context.clock())
    return ok({"successful_key_count": len(keys), "unsuccessful_keys": []})


def _bulk_value(name: str, raw: bytes, kind: str, binary: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if binary == "reject" or kind == "json":
            raise ApiError(
                400,
                CODE_BINARY_VALUE,
                f"value of key {name!r} is not UTF-8 text; bulk get supports "
                "text values only (read it with GET .../values/{key})",
            ) from None
        text = raw.decode("utf-8", "replace")
    if kind == "text":
        return text
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise ApiError(
            400, CODE_NOT_JSON_VALUE, f"value of key {name!r} is not valid JSON"
        ) from None


def bulk_get(request: Request, context: Context) -> Response:
    """Up to 100 values as text or parsed JSON, optionally with metadata.

    Missing and expired keys map to null. A value that is not UTF-8 is
    answered with U+FFFD replacement characters (``replace``, the default) or
    fails the request naming the key (``reject``); see ``--bulk-get-binary``.
    """
    namespace = _namespace(request, context)
    body = _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, CODE_BAD_BODY, "body must be a JSON object with 'keys'")
    names = _key_list(body.get("keys"), BULK_GET_MAX_KEYS, "bulk get field 'keys'")
    kind = body.get("type", "text")
    if kind not in ("text", "json"):
        raise ApiError(400, CODE_BAD_BODY, "type must be 'text' or 'json'")
    with_metadata = body.get("withMetadata", False)
    if not isinstance(with_metadata, bool):
        raise ApiError(400, CODE_BAD_BODY, "withMetadata must be a boolean")
    keys = [validate.key_bytes(name) for name in names]

    found = context.store.get_many(namespace, keys, context.clock())
    values: dict[str, Any] = {}
    for name, key in zip(names, keys, strict=True):
        pair = found.get(key)
        if pair is None or pair.value is None:
            values[name] = None
            continue
        value = _bulk_value(name, pair.value, kind, context.bulk_get_binary)
        if not with_metadata:
            values[name] = value
            continue
        entry: dict[str, Any] = {
            "value": value,
            "metadata": msgspec.json.decode(pair.metadata) if pair.metadata else None,
        }
        if pair.expiration is not None:
            entry["expiration"] = pair.expiration
        values[name] = entry
    return ok({"values": values})


HANDLERS: dict[str, Callable[[Request, Context], Response]] = {
    "GET namespaces": list_namespaces,
    "POST namespaces": create_namespace,
    "GET namespace": get_namespace,
    "PUT namespace": rename_namespace,
    "DELETE namespace": delete_namespace,
    "GET keys": list_keys,
    "GET values": get_value,
    "PUT values": put_value,
    "DELETE values": delete_value,
    "GET metadata": get_metadata,
    "PUT bulk": bulk_write,
    "DELETE bulk": bulk_delete,
    "POST bulk/delete": bulk_delete,
    "POST bulk/get": bulk_get,
}
