"""Cloudflare's documented limits and kvsnap's defaults, each with its source.

The emulator enforces the Cloudflare limits below and the client plans its
requests around them, so both read them from here.
"""

# Workers KV limits (developers.cloudflare.com/kv/platform/limits/, and the
# KV part of Cloudflare's OpenAPI description, API v4).
MAX_KEY_BYTES = 512  # UTF-8 bytes
MAX_VALUE_BYTES = 26_214_400  # 25 MiB
MAX_METADATA_BYTES = 1024  # serialized JSON
MIN_EXPIRATION_SECONDS = 60  # expiration and expiration_ttl at least 60 s ahead
RESERVED_KEYS = (".", "..")  # "cannot be empty or exactly . or .."

LIST_PAGE_MAX = 1000  # GET .../keys: limit default 1000, max 1000
LIST_PAGE_MIN = 10  # GET .../keys: limit min 10
NAMESPACES_PAGE_MAX = 1000  # GET .../namespaces: per_page max 1000
NAMESPACES_PAGE_DEFAULT = 20  # GET .../namespaces: per_page default 20
BULK_GET_MAX_KEYS = 100  # POST .../bulk/get
# Reads of a binary value and its metadata until the metadata stays the same
# across a value read (see KvClient._fetch_raw).
RAW_READ_ROUNDS = 3
BULK_WRITE_MAX_PAIRS = 10_000  # PUT .../bulk
BULK_WRITE_MAX_BYTES = 100_000_000  # PUT .../bulk: "100 megabytes or less"
BULK_DELETE_MAX_KEYS = 10_000  # POST .../bulk/delete

# Workers KV is eventually consistent: a write can take up to 60 s to be
# visible in other locations (developers.cloudflare.com/kv/api/read-key-value-pairs/).
KV_CONSISTENCY_SECONDS = 60.0

# Cloudflare's global client API limit: 1,200 requests per 5 minutes per user
# or account token (developers.cloudflare.com/fundamentals/api/reference/limits/).
API_BUDGET_REQUESTS = 1200
API_BUDGET_WINDOW_SECONDS = 300.0

# kvsnap defaults.
DEFAULT_CONCURRENCY = 8  # requests in flight at once per run
DEFAULT_MAX_ATTEMPTS = 8  # tries per request before the run fails
DEFAULT_BACKOFF_BASE_SECONDS = 0.5  # first retry delay, doubled each time
DEFAULT_BACKOFF_MAX_SECONDS = 30.0  # ceiling of one computed delay
DEFAULT_MAX_RETRY_AFTER_SECONDS = 600.0  # longest Retry-After kvsnap will wait
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0

# Restore writes. A record keeps its absolute expiration only when that is at
# least MIN_EXPIRATION_SECONDS plus this margin ahead. A batch may wait in the
# rate limiter or be retried for up to the margin and still carry
# expirations that the API accepts.
EXPIRATION_MARGIN_SECONDS = 30
NEAR_EXPIRY_SECONDS = MIN_EXPIRATION_SECONDS + EXPIRATION_MARGIN_SECONDS
# Keys that a bulk write reports in unsuccessful_keys are sent again this many
# times at most. The delay never drops below 1 s because KV allows one write
# per second per key (developers.cloudflare.com/kv/api/write-key-value-pairs/).
BULK_WRITE_MAX_KEY_RETRIES = 5
KEY_WRITE_INTERVAL_SECONDS = 1.0

# Read-back after a restore: how long mismatching keys are read again, and
# the delays between rounds (doubled from the base up to the max).
READBACK_WINDOW_SECONDS = KV_CONSISTENCY_SECONDS + 30.0
READBACK_BACKOFF_BASE_SECONDS = 1.0
READBACK_BACKOFF_MAX_SECONDS = 15.0

# Parts hold about this many uncompressed bytes. The whole compressed part is
# kept in memory until it is uploaded, so this bounds memory per part.
DEFAULT_PART_BYTES = 32 * 1024 * 1024
ZSTD_LEVEL = 3

# Object storage (kvsnap.storage). obstore retries 5xx responses, connection
# errors and timeouts itself (obstore 0.12 RetryConfig); kvsnap keeps that
# inner loop short and wraps each operation in a few attempts of its own. A
# failing request therefore takes at most about STORAGE_MAX_ATTEMPTS x
# (STORAGE_CLIENT_RETRY_TIMEOUT_SECONDS + one request timeout) plus the
# backoff sleeps before the error is raised.
STORAGE_MAX_ATTEMPTS = 3  # kvsnap-level tries per operation
STORAGE_BACKOFF_BASE_SECONDS = 1.0  # first kvsnap-level delay, doubled each time
STORAGE_BACKOFF_MAX_SECONDS = 8.0  # ceiling of one kvsnap-level delay
STORAGE_CLIENT_MAX_RETRIES = 3  # obstore-level retries per request
STORAGE_CLIENT_INIT_BACKOFF_SECONDS = 0.1  # obstore default, 100 ms
STORAGE_CLIENT_MAX_BACKOFF_SECONDS = 2.0
STORAGE_CLIENT_RETRY_TIMEOUT_SECONDS = 30.0  # obstore default is 3 minutes
STORAGE_CONNECT_TIMEOUT_SECONDS = 5.0  # obstore default
STORAGE_REQUEST_TIMEOUT_SECONDS = 120.0  # one whole request; a 32 MiB part at ~0.3 MB/s
# KVSNAP_STORAGE_TIMEOUT replaces the request timeout, but not with less than
# this, because even a small request to a nearby store could time out sooner.
STORAGE_MIN_REQUEST_TIMEOUT_SECONDS = 1.0
STORAGE_CONCURRENCY = 16  # manifest reads and part checks in flight at once

# Titles of the sandbox namespaces that `kvsnap drill` creates start with
# this; `--all` leaves them out of backups.
DRILL_SANDBOX_PREFIX = "kvsnap-drill-"
