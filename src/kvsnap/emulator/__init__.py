"""A local Cloudflare Workers KV API server: the stand-in for Cloudflare.

The demo and every test talk to it through the official ``cloudflare`` SDK,
with ``base_url`` set to `EmulatorServer.base_url`. It speaks the
``/client/v4/accounts/{account_id}/storage/kv/namespaces...`` endpoints,
keeps data in SQLite, enforces the documented limits and answers in
Cloudflare's envelope. Sources of each behaviour:
``shared/reference/cloudflare-kv-api.md`` (the facts file) and
``cloudflare-kv-openapi.yml`` (the OpenAPI description).

Modules: `server` (HTTP, `EmulatorServer`), `pipeline` (the layers every
request passes), `routing` (endpoint names), `handlers` (the API), `store`
(SQLite), `validate` (limits), `multipart`, `faults`, `ratelimit`, `stats`,
`responses` (envelope and codes).

Authentication and accounts
    Only ``Authorization: Bearer <token>`` is accepted. No such header: 401,
    code 10000. A token the server was not given: 403, code 10000. An
    account id that is not 32 lowercase hex characters: 404, code 7003
    ("Could not route to ..."); a well-formed id the server does not serve:
    403, code 10000, as Cloudflare answers for an account the token cannot
    reach.

Error codes
    Cloudflare publishes no table of KV error codes. "facts" below means the
    facts file names the code with that meaning; "kvsnap" means the code was
    chosen here (the 100xx ones inside the ranges that wrangler-legacy
    associates with namespace and limit errors, per the facts file).

    =====  ======  ===================================================  =======
    code   status  meaning                                              source
    =====  ======  ===================================================  =======
    971    429     rate limit spent: "Please wait and consider          kvsnap
                   throttling your request speed" (+ Retry-After)
    7001   405     method not allowed on a known path (+ Allow)         kvsnap
    7003   404     "No route for the URI"; malformed account id         facts
    10000  401     Authorization header missing or not Bearer           kvsnap
    10000  403     unknown token, or account not served                 kvsnap
    10001  400     body unreadable, not JSON, or of the wrong shape;    kvsnap
                   multipart without a ``value`` part; bad base64
    10002  5xx     internal error; also injected faults other than 429  kvsnap
    10004  400     bad query parameter: limit outside 10..1000,         kvsnap
                   per_page outside 1..1000, page < 1, order,
                   direction, cursor
    10009  404     key not found (or expired)                           facts
    10013  404     namespace not found                                  facts
    10014  400     an account's namespace with this title exists        kvsnap
    10019  400     namespace title empty or over 512 characters         kvsnap
    10020  400     key name empty, ``.`` or ``..``, or not UTF-8         kvsnap
    10022  414     key name over 512 UTF-8 bytes (414 as in workerd)    kvsnap
    10024  413     value over 26,214,400 bytes                          kvsnap
    10025  413     metadata over 1,024 bytes serialized                 kvsnap
    10026  400     metadata is not valid JSON                           kvsnap
    10030  400     too many items: bulk write > 10,000 pairs, bulk      kvsnap
                   delete > 10,000 keys, bulk get > 100 keys
    10031  413     request body over 100,000,000 bytes                  kvsnap
    10033  400     expiration not a number or < 60 s ahead              kvsnap
    10034  400     expiration_ttl not a number or < 60                  kvsnap
    10040  400     bulk get of a non-UTF-8 value in ``reject`` mode,     kvsnap
                   or with ``type: json``
    10041  400     bulk get ``type: json`` of a value that is not JSON  kvsnap
    =====  ======  ===================================================  =======

    Messages for 10033/10034 follow the text Workers users see
    ("Invalid expiration of N. Expiration times must be at least 60 seconds
    in the future."). Size limits answer 413 (414 for key length), schema
    violations 400. Missing keys are not an error for delete or bulk delete.

Choices where Cloudflare documents nothing
    * Bulk write checks every item before writing any: one bad item fails
      the whole request with that item's error (its index and key in the
      message), and nothing is written. Success always reports
      ``unsuccessful_keys: []``.
    * Bulk get of a value that is not UTF-8: ``bulk_get_binary="replace"``
      (default) decodes it with U+FFFD; ``"reject"`` fails the request
      (10040) naming the key.
    * Metadata size is measured on its compact JSON form (no whitespace),
      as ``JSON.stringify`` writes it; JSON ``null`` metadata means none.
    * ``expiration`` is stored as whole epoch seconds; a pair is gone once
      ``expiration <= clock()``.
    * The list cursor is the URL-safe base64 of the last key returned; the
      last page (no more live keys) has cursor ``""``.
    * Query strings are form-decoded (``+`` is a space, as httpx encodes
      them); key path segments are percent-decoded once (``+`` stays ``+``).
    * Namespaces report ``supports_url_encoding: true``.
    * The rate limit is one sliding window for the whole server.

Eventual consistency (stale reads)
    Workers KV may return a key's old state for up to about 60 s after a
    write made elsewhere (facts file, section 4). By default the emulator
    is strongly consistent. ``EmulatorServer(..., stale_reads_seconds=S)``
    or ``kvsnap emulator --stale-reads S`` makes it stale: after a key is
    written or deleted, GET of its value or metadata, bulk get and the key
    list keep returning the key's previous state (its old value, metadata
    and expiration, or its absence) for S seconds of the server's clock. A
    later write of the same key replaces the kept state with the one just
    before that write. Writes themselves are never stale.

Spec disagreements (the facts file and the SDK win)
    The OpenAPI description says DELETE of a namespace or a key has a
    required JSON body; the SDK sends none and the emulator wants none.
"""

from kvsnap.emulator.faults import Fault
from kvsnap.emulator.routing import ENDPOINTS
from kvsnap.emulator.server import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_HOST,
    DEFAULT_TOKEN,
    EmulatorServer,
)

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_HOST",
    "DEFAULT_TOKEN",
    "ENDPOINTS",
    "EmulatorServer",
    "Fault",
]
