"""The emulator's requests and answers, validated against Cloudflare's OpenAPI.

The description is ``shared/reference/cloudflare-kv-openapi.yml`` in the
folder beside the repository clone; the tests skip when it is absent.
openapi-core validates each request the tests send and each response the
emulator returns, as if sent to api.cloudflare.com.

`test_walk_validates_every_operation` sends the requests in `WALK`: for every
operation, a success and the error responses for a missing or unknown token,
an unknown namespace or key, and input outside the documented limits. It
records each (method, path template, status, error code) that passed
validation and fails when an operation lacks one of `required_answers`.
`test_emulator_routes_match_spec_operations` checks that the emulator's
route table and the description's operations match one to one, apart from
the control routes in `EMULATOR_ONLY_ROUTES`.

Where the description is wrong or disagrees with what the API and the SDK
do, the emulator follows the API, and the quirk is handled here, in memory
(the file is read-only). `published_spec` is the description as published,
`spec` the corrected one that the walk uses. The tests named
``test_spec_...`` show the published description rejecting what the
emulator sends in the last three cases:

* Its account and namespace identifier schemas are ``readOnly``, which
  openapi-core enforces on path parameters, failing every request. Both
  `published_spec` and `spec` drop the flag.
* Its self-referencing ``workers-kv_any`` schema sends openapi-spec-validator
  into endless recursion, so the description itself is not checked.
* DELETE of a namespace or key declares a required JSON body that neither
  the SDK nor wrangler sends; those requests are validated with ``{}``.
* The 4XX answers of bulk write and bulk delete reuse the success schema
  (``success: true``); the emulator sends the failure envelope, as for every
  other endpoint. `spec` gives those responses the failure schema.
* Bulk get allows no ``null`` value, but missing keys come back as ``null``,
  as the Workers binding's bulk read returns them. With ``type: json`` it
  allows no array value, but a stored JSON array parses to one. Its result
  is a ``oneOf`` of the plain and the with-metadata shape, and any
  with-metadata response without a missing key matches both. `spec` allows
  ``null`` and arrays and keeps only the shape that the request's
  ``withMetadata`` asked for.
* Error codes must be at least 1000, but Cloudflare answers an exhausted
  rate limit with code 971. `spec` keeps the minimum because the walk never
  meets the rate limit.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.response.exceptions import InvalidData
from werkzeug.datastructures import Headers, ImmutableMultiDict

from kvsnap.emulator import EmulatorServer
from kvsnap.emulator.handlers import HANDLERS
from kvsnap.emulator.routing import ENDPOINTS, OTHER, match
from kvsnap.limits import (
    BULK_DELETE_MAX_KEYS,
    BULK_GET_MAX_KEYS,
    BULK_WRITE_MAX_PAIRS,
    MAX_METADATA_BYTES,
)

SPEC_PATH = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "reference"
    / "cloudflare-kv-openapi.yml"
)
CLOUDFLARE = "https://api.cloudflare.com"
API_PREFIX = "/client/v4"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

pytestmark = pytest.mark.skipif(
    not SPEC_PATH.exists(),
    reason=f"Cloudflare's OpenAPI description not found at {SPEC_PATH} "
    "(expected in the shared/ folder beside the clone)",
)

# Routes the emulator serves outside /client/v4, with why no spec covers them.
EMULATOR_ONLY_ROUTES = {
    ("GET", "/__emulator/health"): "liveness probe for the CLI and the tests",
    ("GET", "/__emulator/stats"): "request counters that tests assert on",
    ("POST", "/__emulator/stats/reset"): "zeroes the counters between test steps",
}

NAMESPACE_PATH = "/accounts/{account_id}/storage/kv/namespaces"
NAMESPACE_ID_PATH = NAMESPACE_PATH + "/{namespace_id}"
BULK_OPERATIONS = (
    ("PUT", NAMESPACE_ID_PATH + "/bulk"),
    ("DELETE", NAMESPACE_ID_PATH + "/bulk"),
    ("POST", NAMESPACE_ID_PATH + "/bulk/delete"),
)
BULK_GET = ("POST", NAMESPACE_ID_PATH + "/bulk/get")


# -- the description -------------------------------------------------------


@cache
def _load_description() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def _published_document() -> dict[str, Any]:
    """Copy the description, with readOnly dropped from the identifiers."""
    document = copy.deepcopy(_load_description())
    schemas = document["components"]["schemas"]
    for name in ("workers-kv_identifier", "workers-kv_namespace_identifier"):
        schemas[name].pop("readOnly", None)
    return document


def _operation(document: dict[str, Any], method: str, template: str) -> Any:
    return document["paths"][template][method.lower()]


def _corrected_document(with_metadata: bool) -> dict[str, Any]:
    """Apply the fixes listed in the module docstring to the description."""
    document = _published_document()
    schemas = document["components"]["schemas"]
    for method, template in BULK_OPERATIONS:
        answer = _operation(document, method, template)["responses"]["4XX"]
        answer["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/workers-kv_api-response-common-failure"
        }

    values = schemas["workers-kv_bulk-get-result"]["properties"]["values"]
    branches = values["additionalProperties"]["oneOf"]
    branches.append({"type": "array", "items": {}})
    # In OpenAPI 3.0, nullable applies to the schema it sits in, not to the
    # branches of a oneOf, so null gets a branch of its own.
    branches.append({"nullable": True, "enum": [None]})
    shape = (
        "workers-kv_bulk-get-result-with-metadata"
        if with_metadata
        else "workers-kv_bulk-get-result"
    )
    answer = _operation(document, *BULK_GET)["responses"]["200"]
    result = answer["content"]["application/json"]["schema"]["allOf"][1]
    result["properties"]["result"] = {"$ref": f"#/components/schemas/{shape}"}
    return document


def _openapi(document: dict[str, Any]) -> OpenAPI:
    return OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))


@cache
def published_spec() -> OpenAPI:
    return _openapi(_published_document())


@cache
def spec(with_metadata: bool = False) -> OpenAPI:
    """Build the corrected description, with the bulk get result shape requested."""
    return _openapi(_corrected_document(with_metadata))


def spec_operations() -> list[tuple[str, str]]:
    """Every (METHOD, path template) the description defines."""
    document = _published_document()
    return [
        (method.upper(), template)
        for template, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


# -- openapi-core adapters -------------------------------------------------


class _Request:
    """An httpx request as openapi-core reads it."""

    host_url = CLOUDFLARE

    def __init__(self, request: httpx.Request, body: bytes | None = None) -> None:
        self._request = request
        self._body = request.read() if body is None else body
        query = parse_qs(request.url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )

    @property
    def path(self) -> str:
        return self._request.url.raw_path.split(b"?")[0].decode()

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._body or None

    @property
    def content_type(self) -> str:
        return self._request.headers.get("content-type", "application/json")


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "")

    @property
    def headers(self) -> Headers:
        return Headers(dict(self._response.headers))

    @property
    def data(self) -> bytes:
        return self._response.content


def spec_request(request: httpx.Request) -> _Request:
    """Wrap a request for openapi-core.

    A DELETE without a body is read as carrying ``{}``, because the
    description requires a JSON body on DELETE of a namespace or key that
    neither the SDK nor wrangler sends.
    """
    body = request.read()
    if request.method == "DELETE" and not body:
        return _Request(request, b"{}")
    return _Request(request)


def asks_with_metadata(request: httpx.Request) -> bool:
    """Whether the request is a bulk get with ``withMetadata: true``."""
    if request.method != "POST" or not request.url.path.endswith("/bulk/get"):
        return False
    try:
        body = msgspec.json.decode(request.read())
    except msgspec.DecodeError:
        return False
    return isinstance(body, dict) and body.get("withMetadata") is True


def path_template(request: httpx.Request) -> str:
    """The description's path template that the request matched."""
    finder = APICallPathFinder(spec().spec, base_url=None)
    found = finder.find(request.method.lower(), CLOUDFLARE + request.url.path)
    return found.path_result.pattern


def validate(response: httpx.Response) -> None:
    """Validate the exchange: the request, then the emulator's answer."""
    request = spec_request(response.request)
    corrected = spec(asks_with_metadata(response.request))
    corrected.validate_request(request)
    corrected.validate_response(request, _Response(response))


# -- the walk --------------------------------------------------------------

NAMESPACE_TITLE = "walk"
UNKNOWN_NAMESPACE = "0" * 32
UNSERVED_ACCOUNT = "f" * 32
# Over 512 characters, so the description rejects it as a path parameter too
# (openapi-core checks the percent-encoded path segment).
LONG_ASCII_KEY = "k" * 513
# 300 two-byte characters: within the description's 512-character maxLength,
# over Cloudflare's 512-byte key limit.
LONG_KEY = "\u00e9" * 300
SEED = [
    {"key": "plain", "value": "text"},
    {"key": "doc", "value": '{"a": [1, 2]}', "metadata": {"m": 1}},
    {"key": "list", "value": "[1, 2]"},
    {"key": "ttl", "value": "t", "expiration_ttl": 600},
]
TOO_MANY_KEYS = ["k"] * (BULK_DELETE_MAX_KEYS + 1)
TOO_MANY_PAIRS = [{"key": "k", "value": "v"}] * (BULK_WRITE_MAX_PAIRS + 1)
BIG_METADATA = b'{"m": "' + b"x" * MAX_METADATA_BYTES + b'"}'

# Paths of the walk, relative to /accounts/{account}/storage/kv.
NAMESPACES = "namespaces"
NAMESPACE = "namespaces/{ns}"
OTHER_NAMESPACE = "namespaces/{other}"
KEYS = "namespaces/{ns}/keys"
VALUES = "namespaces/{ns}/values/"
METADATA = "namespaces/{ns}/metadata/"
BULK = "namespaces/{ns}/bulk"
BULK_GET_PATH = "namespaces/{ns}/bulk/get"
BULK_DELETE_PATH = "namespaces/{ns}/bulk/delete"


@dataclass(frozen=True)
class Call:
    """One request of the walk and the response the emulator must return.

    ``path`` may name ``{ns}`` (the seeded namespace), ``{other}`` (a second
    namespace) and ``{missing}`` (an id no namespace has). ``raw`` is sent
    as an ``application/octet-stream`` body. ``spec_accepts`` is False where
    the description itself rejects the request, so both agree that the input
    is invalid.
    """

    case: str
    method: str
    path: str
    status: int
    code: int | None = None
    json: Any = None
    raw: bytes | None = None
    files: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    token: str = "valid"  # or "none" (no Authorization header) or "unknown"
    account: str | None = None  # default: the account the emulator serves
    spec_accepts: bool = True


def invalid(
    case: str, method: str, path: str, status: int, code: int, **kw: Any
) -> Call:
    """A call whose request the description rejects as well."""
    return Call(case, method, path, status, code, spec_accepts=False, **kw)


def common_errors(method: str, path: str, **kw: Any) -> list[Call]:
    """No token (401), an unknown token (403), and an unknown namespace (404)."""
    calls = [
        Call("no token", method, path, 401, 10000, token="none", **kw),
        Call("unknown token", method, path, 403, 10000, token="unknown", **kw),
    ]
    if "{ns}" in path or "{other}" in path:
        missing = path.replace("{ns}", "{missing}").replace("{other}", "{missing}")
        calls.append(Call("unknown namespace", method, missing, 404, 10013, **kw))
    return calls


WALK = [
    # GET .../namespaces
    Call(
        "list",
        "GET",
        NAMESPACES,
        200,
        params={"page": 1, "per_page": 5, "order": "title", "direction": "desc"},
    ),
    invalid("per_page 0", "GET", NAMESPACES, 400, 10004, params={"per_page": 0}),
    invalid("per_page 1001", "GET", NAMESPACES, 400, 10004, params={"per_page": 1001}),
    invalid("page 0", "GET", NAMESPACES, 400, 10004, params={"page": 0}),
    invalid("unknown order", "GET", NAMESPACES, 400, 10004, params={"order": "size"}),
    Call("malformed account", "GET", NAMESPACES, 404, 7003, account="no-such"),
    Call("unserved account", "GET", NAMESPACES, 403, 10000, account=UNSERVED_ACCOUNT),
    *common_errors("GET", NAMESPACES),
    # POST .../namespaces
    Call("create", "POST", NAMESPACES, 200, json={"title": "created"}),
    Call(
        "taken title", "POST", NAMESPACES, 400, 10014, json={"title": NAMESPACE_TITLE}
    ),
    Call("empty title", "POST", NAMESPACES, 400, 10019, json={"title": ""}),
    invalid("long title", "POST", NAMESPACES, 400, 10019, json={"title": "t" * 513}),
    invalid("body not JSON", "POST", NAMESPACES, 400, 10001, raw=b"{"),
    *common_errors("POST", NAMESPACES, json={"title": "x"}),
    # GET .../namespaces/{id}
    Call("get", "GET", NAMESPACE, 200),
    *common_errors("GET", NAMESPACE),
    # PUT .../namespaces/{id}
    Call("rename", "PUT", OTHER_NAMESPACE, 200, json={"title": "renamed"}),
    Call(
        "taken title",
        "PUT",
        OTHER_NAMESPACE,
        400,
        10014,
        json={"title": NAMESPACE_TITLE},
    ),
    invalid(
        "long title", "PUT", OTHER_NAMESPACE, 400, 10019, json={"title": "t" * 513}
    ),
    *common_errors("PUT", NAMESPACE, json={"title": "x"}),
    # GET .../keys
    Call("list", "GET", KEYS, 200, params={"limit": 10}),
    Call("prefix", "GET", KEYS, 200, params={"prefix": "d", "limit": 1000}),
    invalid("limit 9", "GET", KEYS, 400, 10004, params={"limit": 9}),
    invalid("limit 1001", "GET", KEYS, 400, 10004, params={"limit": 1001}),
    Call("cursor not base64", "GET", KEYS, 400, 10004, params={"cursor": "!"}),
    *common_errors("GET", KEYS),
    # PUT .../values/{key}
    Call(
        "multipart with metadata",
        "PUT",
        VALUES + "multi",
        200,
        params={"expiration_ttl": 120},
        files={
            "value": ("value", b"\x00\xffbinary", "application/octet-stream"),
            "metadata": (None, b'{"k": "v"}', "application/json"),
        },
    ),
    Call("raw body", "PUT", VALUES + "raw", 200, raw=b"raw text"),
    invalid(
        "expiration_ttl 59",
        "PUT",
        VALUES + "k",
        400,
        10034,
        raw=b"x",
        params={"expiration_ttl": 59},
    ),
    Call(
        "past expiration",
        "PUT",
        VALUES + "k",
        400,
        10033,
        raw=b"x",
        params={"expiration": 1},
    ),
    Call(
        "metadata over 1024 bytes",
        "PUT",
        VALUES + "k",
        413,
        10025,
        files={"value": ("value", b"v"), "metadata": (None, BIG_METADATA)},
    ),
    invalid(
        "multipart without value",
        "PUT",
        VALUES + "k",
        400,
        10001,
        files={"metadata": (None, b"{}", "application/json")},
    ),
    invalid("long key", "PUT", VALUES + LONG_ASCII_KEY, 414, 10022, raw=b"x"),
    *common_errors("PUT", VALUES + "k", raw=b"x"),
    # GET .../values/{key}
    Call("binary value", "GET", VALUES + "multi", 200),
    Call("value with expiration", "GET", VALUES + "ttl", 200),
    Call("missing key", "GET", VALUES + "missing", 404, 10009),
    Call("key '.'", "GET", VALUES + "%2E", 400, 10020),
    invalid("long key", "GET", VALUES + LONG_ASCII_KEY, 414, 10022),
    *common_errors("GET", VALUES + "plain"),
    # GET .../metadata/{key}
    Call("object metadata", "GET", METADATA + "doc", 200),
    Call("no metadata", "GET", METADATA + "plain", 200),
    Call("missing key", "GET", METADATA + "missing", 404, 10009),
    invalid("long key", "GET", METADATA + LONG_ASCII_KEY, 414, 10022),
    *common_errors("GET", METADATA + "doc"),
    # DELETE .../values/{key}
    Call("delete", "DELETE", VALUES + "raw", 200),
    Call("missing key is no error", "DELETE", VALUES + "missing", 200),
    invalid("long key", "DELETE", VALUES + LONG_ASCII_KEY, 414, 10022),
    *common_errors("DELETE", VALUES + "plain"),
    # PUT .../bulk
    Call(
        "bulk write",
        "PUT",
        BULK,
        200,
        json=[
            {"key": "b64", "value": "AAE=", "base64": True},
            {"key": "e", "value": "v", "expiration": 4102444800, "metadata": [1]},
        ],
    ),
    Call("10,001 pairs", "PUT", BULK, 400, 10030, json=TOO_MANY_PAIRS),
    invalid(
        "expiration_ttl 59",
        "PUT",
        BULK,
        400,
        10034,
        json=[{"key": "k", "value": "v", "expiration_ttl": 59}],
    ),
    Call(
        "value not base64",
        "PUT",
        BULK,
        400,
        10001,
        json=[{"key": "k", "value": "!", "base64": True}],
    ),
    invalid("not an array", "PUT", BULK, 400, 10001, json={"key": "k", "value": "v"}),
    Call("long key", "PUT", BULK, 414, 10022, json=[{"key": LONG_KEY, "value": "v"}]),
    *common_errors("PUT", BULK, json=[{"key": "k", "value": "v"}]),
    # POST .../bulk/get
    Call("text", "POST", BULK_GET_PATH, 200, json={"keys": ["plain", "doc"]}),
    Call(
        "text with a missing key",
        "POST",
        BULK_GET_PATH,
        200,
        json={"keys": ["plain", "missing"]},
    ),
    Call(
        "json",
        "POST",
        BULK_GET_PATH,
        200,
        json={"keys": ["doc", "list"], "type": "json"},
    ),
    Call(
        "with metadata",
        "POST",
        BULK_GET_PATH,
        200,
        json={"keys": ["plain", "doc", "ttl"], "withMetadata": True},
    ),
    Call(
        "with metadata and a missing key",
        "POST",
        BULK_GET_PATH,
        200,
        json={"keys": ["doc", "missing"], "withMetadata": True},
    ),
    invalid(
        "101 keys",
        "POST",
        BULK_GET_PATH,
        400,
        10030,
        json={"keys": ["k"] * (BULK_GET_MAX_KEYS + 1)},
    ),
    invalid(
        "unknown type",
        "POST",
        BULK_GET_PATH,
        400,
        10001,
        json={"keys": ["plain"], "type": "xml"},
    ),
    invalid("no keys", "POST", BULK_GET_PATH, 400, 10001, json={"type": "text"}),
    invalid(
        "withMetadata not a boolean",
        "POST",
        BULK_GET_PATH,
        400,
        10001,
        json={"keys": ["plain"], "withMetadata": "yes"},
    ),
    Call(
        "json type, value not JSON",
        "POST",
        BULK_GET_PATH,
        400,
        10041,
        json={"keys": ["plain"], "type": "json"},
    ),
    Call("long key", "POST", BULK_GET_PATH, 414, 10022, json={"keys": [LONG_KEY]}),
    *common_errors("POST", BULK_GET_PATH, json={"keys": ["plain"]}),
    # POST .../bulk/delete
    Call("bulk delete", "POST", BULK_DELETE_PATH, 200, json=["b64"]),
    Call("10,001 keys", "POST", BULK_DELETE_PATH, 400, 10030, json=TOO_MANY_KEYS),
    invalid("not an array", "POST", BULK_DELETE_PATH, 400, 10001, json=5),
    Call("long key", "POST", BULK_DELETE_PATH, 414, 10022, json=[LONG_KEY]),
    *common_errors("POST", BULK_DELETE_PATH, json=["k"]),
    # DELETE .../bulk (deprecated, and what wrangler 4.86.0 sends)
    Call("bulk delete", "DELETE", BULK, 200, json=["e"]),
    Call("10,001 keys", "DELETE", BULK, 400, 10030, json=TOO_MANY_KEYS),
    invalid("not an array", "DELETE", BULK, 400, 10001, json={"keys": ["e"]}),
    Call("long key", "DELETE", BULK, 414, 10022, json=[LONG_KEY]),
    *common_errors("DELETE", BULK, json=["k"]),
    # DELETE .../namespaces/{id}, last because it removes {other}
    *common_errors("DELETE", OTHER_NAMESPACE),
    Call("delete", "DELETE", OTHER_NAMESPACE, 200),
]

# Error responses each operation must have validated in the walk, besides the
# ones that every operation has (see required_answers).
KEY_TOO_LONG = (414, 10022)
BAD_QUERY = (400, 10004)
TOO_MANY_ITEMS = (400, 10030)
BAD_BODY = (400, 10001)
KEY_NOT_FOUND = (404, 10009)
TITLE_ERRORS = {(400, 10014), (400, 10019)}
OPERATION_ERRORS: dict[tuple[str, str], set[tuple[int, int]]] = {
    ("GET", NAMESPACE_PATH): {BAD_QUERY},
    ("POST", NAMESPACE_PATH): {*TITLE_ERRORS, BAD_BODY},
    ("PUT", NAMESPACE_ID_PATH): TITLE_ERRORS,
    ("GET", NAMESPACE_ID_PATH + "/keys"): {BAD_QUERY},
    ("GET", NAMESPACE_ID_PATH + "/values/{key_name}"): {
        KEY_NOT_FOUND,
        KEY_TOO_LONG,
        (400, 10020),
    },
    ("PUT", NAMESPACE_ID_PATH + "/values/{key_name}"): {
        KEY_TOO_LONG,
        (400, 10033),
        (400, 10034),
        (413, 10025),
        BAD_BODY,
    },
    ("DELETE", NAMESPACE_ID_PATH + "/values/{key_name}"): {KEY_TOO_LONG},
    ("GET", NAMESPACE_ID_PATH + "/metadata/{key_name}"): {KEY_NOT_FOUND, KEY_TOO_LONG},
    ("PUT", NAMESPACE_ID_PATH + "/bulk"): {
        KEY_TOO_LONG,
        TOO_MANY_ITEMS,
        BAD_BODY,
        (400, 10034),
    },
    ("DELETE", NAMESPACE_ID_PATH + "/bulk"): {KEY_TOO_LONG, TOO_MANY_ITEMS, BAD_BODY},
    ("POST", NAMESPACE_ID_PATH + "/bulk/delete"): {
        KEY_TOO_LONG,
        TOO_MANY_ITEMS,
        BAD_BODY,
    },
    ("POST", NAMESPACE_ID_PATH + "/bulk/get"): {
        KEY_TOO_LONG,
        TOO_MANY_ITEMS,
        BAD_BODY,
        (400, 10041),
    },
}


def required_answers(method: str, template: str) -> set[tuple[int, int | None]]:
    """The (status, error code) pairs the walk must validate for an operation.

    Every operation needs a success, 401 without a token and 403 with an
    unknown one. Every operation on a namespace also needs 404 for an
    unknown namespace.
    """
    required: set[tuple[int, int | None]] = {(200, None), (401, 10000), (403, 10000)}
    if "{namespace_id}" in template:
        required.add((404, 10013))
    required |= OPERATION_ERRORS.get((method, template), set())
    return required


@dataclass
class Walk:
    """The walk's state: its client, its namespaces and what it validated."""

    client: httpx.Client
    server: EmulatorServer
    namespaces: dict[str, str]
    validated: defaultdict[tuple[str, str], set[tuple[int, int | None]]] = field(
        default_factory=lambda: defaultdict(set)
    )

    def send(self, call: Call) -> httpx.Response:
        account = call.account or self.server.account_id
        path = call.path.format(**self.namespaces)
        headers = {}
        if call.raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = self.client.build_request(
            call.method,
            f"accounts/{account}/storage/kv/{path}",
            params=call.params,
            json=call.json,
            content=call.raw,
            files=call.files,
            headers=headers,
        )
        if call.token == "none":
            del request.headers["Authorization"]
        elif call.token == "unknown":
            request.headers["Authorization"] = "Bearer not-a-token"
        return self.client.send(request)

    def check(self, call: Call) -> None:
        """Send one call, validate request and response, and record the pair."""
        response = self.send(call)
        code = None if response.is_success else response.json()["errors"][0]["code"]
        assert (response.status_code, code) == (call.status, call.code), response.text[
            :300
        ]

        request = spec_request(response.request)
        corrected = spec(asks_with_metadata(response.request))
        request_errors = list(corrected.iter_request_errors(request))
        if call.spec_accepts:
            assert request_errors == []
        else:
            assert request_errors, "the description accepts this request"
        corrected.validate_response(request, _Response(response))
        operation = (call.method, path_template(response.request))
        self.validated[operation].add((call.status, call.code))


@pytest.fixture
def walk(emulator: EmulatorServer) -> Iterator[Walk]:
    with httpx.Client(
        base_url=emulator.base_url + "/",
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=60,
    ) as client:
        base = f"accounts/{emulator.account_id}/storage/kv/namespaces"
        ns = client.post(base, json={"title": NAMESPACE_TITLE}).json()["result"]["id"]
        other = client.post(base, json={"title": "other"}).json()["result"]["id"]
        assert client.put(f"{base}/{ns}/bulk", json=SEED).is_success
        namespaces = {"ns": ns, "other": other, "missing": UNKNOWN_NAMESPACE}
        yield Walk(client, emulator, namespaces)


def test_walk_validates_every_operation(walk: Walk) -> None:
    failures = []
    for call in WALK:
        try:
            walk.check(call)
        except (AssertionError, OpenAPIError, ValueError) as exc:
            where = call.path if len(call.path) < 60 else call.path[:60] + "..."
            reason = f"{type(exc).__name__}: {exc.__cause__ or exc}"
            failures.append(f"{call.method} {where} ({call.case}): {reason}"[:600])
    assert failures == [], "\n".join(failures)

    served = set(served_operations())
    missing = {
        operation: required - walk.validated[operation]
        for operation in served
        if (required := required_answers(*operation)) - walk.validated[operation]
    }
    assert missing == {}


# -- the route table -------------------------------------------------------


def sample_path(template: str) -> str:
    """A path under /client/v4 that fits the template."""
    return template.format(
        account_id="023e105f4ecef8ad9ca31a8372d0c353",
        namespace_id="0f2ac74b498b48028cb68387c421e279",
        key_name="My-Key",
    )


def served_operations() -> dict[tuple[str, str], str]:
    """Spec operations the emulator serves, with its endpoint name for each."""
    served = {}
    for method, template in spec_operations():
        endpoint = match(method, sample_path(template)).endpoint
        if endpoint != OTHER:
            served[method, template] = endpoint
    return served


def test_emulator_routes_match_spec_operations() -> None:
    served = served_operations()

    assert set(spec_operations()) - set(served) == set()
    assert set(HANDLERS) - set(served.values()) == set()
    assert set(HANDLERS) == set(ENDPOINTS)
    # No emulator endpoint serves two operations.
    assert sorted(served.values()) == sorted(set(served.values()))


@pytest.mark.parametrize(("method", "path"), list(EMULATOR_ONLY_ROUTES))
def test_emulator_only_routes_are_served(
    emulator: EmulatorServer, method: str, path: str
) -> None:
    assert not path.startswith(API_PREFIX + "/")

    response = httpx.request(method, emulator.root_url + path)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


# -- known disagreements between the description and the API ---------------


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{emulator.base_url}/accounts/{emulator.account_id}/storage/kv",
        headers={"Authorization": f"Bearer {emulator.token}"},
    ) as client:
        yield client


@pytest.fixture
def ns(api: httpx.Client) -> str:
    response = api.post("namespaces", json={"title": "spec"})
    namespace = response.json()["result"]["id"]
    assert api.put(f"namespaces/{namespace}/bulk", json=SEED).is_success
    return namespace


def validate_published_response(response: httpx.Response) -> None:
    """Validate the response against the published description only."""
    request = spec_request(response.request)
    published_spec().validate_response(request, _Response(response))


def test_spec_rejects_null_bulk_get_value(api: httpx.Client, ns: str) -> None:
    """The published description allows no null in text-mode bulk get.

    The Workers binding's bulk read returns null for missing keys, and the
    emulator does the same in the REST API.
    """
    response = api.post(
        f"namespaces/{ns}/bulk/get", json={"keys": ["plain", "missing"]}
    )

    assert response.json()["result"] == {"values": {"plain": "text", "missing": None}}
    with pytest.raises(InvalidData):
        validate_published_response(response)
    validate(response)


def test_spec_rejects_json_array_bulk_get_value(api: httpx.Client, ns: str) -> None:
    # NOTE: the emulator returns the parsed value whatever its JSON type, as
    # JSON.parse would; an array from the live API is not verified.
    response = api.post(
        f"namespaces/{ns}/bulk/get", json={"keys": ["list"], "type": "json"}
    )

    assert response.json()["result"] == {"values": {"list": [1, 2]}}
    with pytest.raises(InvalidData, match="not valid under any"):
        validate_published_response(response)
    validate(response)


def test_spec_rejects_bulk_get_with_metadata(api: httpx.Client, ns: str) -> None:
    """The published ``oneOf`` matches both shapes of a with-metadata result.

    Every entry ``{"value": ..., "metadata": ...}`` is also a JSON object
    value of the plain shape, so the result is valid under both branches and
    therefore invalid under ``oneOf``.
    """
    response = api.post(
        f"namespaces/{ns}/bulk/get", json={"keys": ["doc"], "withMetadata": True}
    )

    assert response.json()["result"] == {
        "values": {"doc": {"value": '{"a": [1, 2]}', "metadata": {"m": 1}}}
    }
    with pytest.raises(InvalidData, match="valid under each of"):
        validate_published_response(response)
    validate(response)


@pytest.mark.parametrize(
    ("method", "route"), [("PUT", "bulk"), ("POST", "bulk/delete"), ("DELETE", "bulk")]
)
def test_spec_describes_bulk_write_errors_as_successes(
    api: httpx.Client, ns: str, method: str, route: str
) -> None:
    """The published 4XX schema of bulk write and delete requires
    ``success: true``. The emulator returns the failure envelope that every
    other endpoint documents (``success: false``, ``result: null``)."""
    body: Any = [{"key": "k", "value": "v", "expiration": 1}] if route == "bulk" else 5
    response = api.request(method, f"namespaces/{ns}/{route}", json=body)

    assert response.status_code == 400
    assert response.json()["success"] is False
    with pytest.raises(InvalidData):
        validate_published_response(response)
    spec().validate_response(spec_request(response.request), _Response(response))


def test_spec_rejects_rate_limit_code_971(tmp_path: Path) -> None:
    """The published error schema wants codes of 1000 or more.

    Cloudflare answers an exhausted API rate limit with HTTP 429 and code 971
    "Please wait and consider throttling your request speed", and so does
    the emulator. A full response body is quoted in
    https://github.com/cloudflare/terraform-provider-cloudflare/issues/5494.
    Dropping only that minimum makes the response valid.
    """
    with EmulatorServer(tmp_path, rate_limit=(1, 300.0)) as server:
        url = f"{server.base_url}/accounts/{server.account_id}/storage/kv/namespaces"
        headers = {"Authorization": f"Bearer {server.token}"}
        assert httpx.get(url, headers=headers).status_code == 200
        response = httpx.get(url, headers=headers)

    assert response.status_code == 429
    assert response.json()["errors"][0]["code"] == 971
    with pytest.raises(InvalidData, match="minimum of 1000"):
        validate_published_response(response)
    document = _published_document()
    message = document["components"]["schemas"]["workers-kv_messages"]["items"]
    del message["properties"]["code"]["minimum"]
    request = spec_request(response.request)
    _openapi(document).validate_response(request, _Response(response))


def test_spec_file_is_not_modified() -> None:
    document = yaml.safe_load(SPEC_PATH.read_text())
    original = copy.deepcopy(document)
    spec()
    spec(with_metadata=True)
    published_spec()
    assert yaml.safe_load(SPEC_PATH.read_text()) == original
    assert _load_description() == original
