"""Object storage behind a repository: one small interface over obstore.

`Storage` puts, gets, heads, lists and deletes objects by path relative to the
repository root, in a local folder or an S3-compatible bucket (AWS S3,
Cloudflare R2, MinIO, rclone...). It is the only module that calls obstore, so
obstore's exceptions are translated here, once, into `kvsnap.errors`.

Retry policy, two layers (numbers from `kvsnap.limits`):

- obstore retries each request on 5xx responses, connection errors and
  timeouts, up to STORAGE_CLIENT_MAX_RETRIES times with exponential backoff
  from 100 ms to 2 s, and gives up after STORAGE_CLIENT_RETRY_TIMEOUT_SECONDS.
  A request times out after STORAGE_REQUEST_TIMEOUT_SECONDS, or after the
  duration in the variable KVSNAP_STORAGE_TIMEOUT.
- `Storage` then retries the whole operation on the same transient errors,
  STORAGE_MAX_ATTEMPTS tries in all, sleeping 1 s then 2 s (doubling, at most
  STORAGE_BACKOFF_MAX_SECONDS, with jitter) and logging each retry.

Errors that retrying cannot cure (403, 404, a failed precondition, a local
disk error) are raised at once.

obstore is called through its sync API in worker threads. With obstore
0.12.1's async API on an S3 store, about 1 process in 20 ended with SIGABRT
(exit code 134) during interpreter shutdown after all of its work succeeded
(3 of 50 `kvsnap snapshots` runs against rclone); the sync API showed no
abort in 60 runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import obstore
import obstore.exceptions
from obstore.store import LocalStore, S3Store

from kvsnap import limits
from kvsnap.config import ENV_STORAGE_TIMEOUT, storage_request_timeout
from kvsnap.errors import (
    ConfigError,
    KvsnapError,
    ObjectExists,
    ObjectNotFound,
    RepositoryError,
)
from kvsnap.logs import mask, register_secret
from kvsnap.ratelimit import backoff_delay

logger = logging.getLogger(__name__)

T = TypeVar("T")
ObjectStore = LocalStore | S3Store

ACCEPTED_FORMS = (
    "a local path, file:///absolute/path, s3://bucket/prefix or r2://bucket/prefix"
)
DEFAULT_S3_REGION = "us-east-1"
R2_REGION = "auto"
R2_ENDPOINT = "https://{account_id}.r2.cloudflarestorage.com"

# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens (AWS S3
# "Bucket naming rules"; R2 uses the same rules).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A DNS label, because the R2 endpoint puts the account id in the host name.
_ACCOUNT_ID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Error text of obstore 0.12 that marks an error worth another try.
_TRANSIENT_TEXT_RE = re.compile(
    r"status code: (?:5\d\d|429)|error sending request|timed out|timeout"
    r"|connection (?:reset|closed|refused|aborted)|broken pipe|incomplete",
    re.IGNORECASE,
)
_S3_ERROR_CODE_RE = re.compile(r"<Code>([^<]{1,100})</Code>")
# obstore 0.12 reports a request timeout as "HTTP error: error sending
# request", and only the debug dump after the first line names the kind.
_TIMEOUT_KIND_RE = re.compile(r"kind: Timeout\b")
# A URL scheme (RFC 3986) of two or more characters and a colon, as in the
# typo "s3:bucket". One letter is left out so that "C:" never matches.
_SCHEME_WITHOUT_SLASHES_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
# Variables that tell obstore's credential chain to use a role explicitly,
# through a web identity token or a container credentials endpoint.
ROLE_CREDENTIAL_VARIABLES = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How long storage operations are retried; see the module docstring."""

    attempts: int = limits.STORAGE_MAX_ATTEMPTS
    backoff_base: float = limits.STORAGE_BACKOFF_BASE_SECONDS
    backoff_max: float = limits.STORAGE_BACKOFF_MAX_SECONDS
    client_max_retries: int = limits.STORAGE_CLIENT_MAX_RETRIES
    client_init_backoff: float = limits.STORAGE_CLIENT_INIT_BACKOFF_SECONDS
    client_max_backoff: float = limits.STORAGE_CLIENT_MAX_BACKOFF_SECONDS
    client_retry_timeout: float = limits.STORAGE_CLIENT_RETRY_TIMEOUT_SECONDS
    connect_timeout: float = limits.STORAGE_CONNECT_TIMEOUT_SECONDS
    request_timeout: float = limits.STORAGE_REQUEST_TIMEOUT_SECONDS

    def delay(self, attempt: int) -> float:
        """Return the sleep in seconds after failed attempt number `attempt`."""
        return backoff_delay(attempt, self.backoff_base, self.backoff_max)

    def retry_config(self) -> Any:
        return {
            "max_retries": self.client_max_retries,
            "retry_timeout": timedelta(seconds=self.client_retry_timeout),
            "backoff": {
                "init_backoff": timedelta(seconds=self.client_init_backoff),
                "max_backoff": timedelta(seconds=self.client_max_backoff),
                "base": 2,
            },
        }

    def client_options(self, *, allow_http: bool) -> Any:
        return {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=self.connect_timeout),
            "timeout": timedelta(seconds=self.request_timeout),
        }


@dataclass(frozen=True)
class Location:
    """A parsed repository URL. `display` contains no secret, so it is safe to print."""

    scheme: Literal["file", "s3", "r2"]
    display: str
    path: Path | None = None  # the folder, for file
    bucket: str = ""
    prefix: str = ""  # inside the bucket, without leading or trailing "/"


@dataclass(frozen=True)
class S3Settings:
    """Settings for S3Store. `config` contains secrets, so never log or print it."""

    config: dict[str, str] = field(repr=False)
    endpoint: str | None
    region: str
    allow_http: bool


def parse_location(url: str) -> Location:
    """Parse a repository URL or local path; raise ConfigError if it is invalid."""
    text = url.strip()
    if not text:
        raise ConfigError(f"empty repository URL: use {ACCEPTED_FORMS}")
    if "://" not in text:
        if _SCHEME_WITHOUT_SLASHES_RE.match(text):
            raise ConfigError(
                f"invalid repository URL {text!r}: a scheme must be followed by"
                f" '//'; use {ACCEPTED_FORMS}",
                hint=f"for a local folder whose name contains a colon, write ./{text}",
            )
        path = Path(text).expanduser().absolute()
        return Location("file", str(path), path=path)

    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _parse_file_url(text, parts.netloc, parts.path)
    if scheme in ("s3", "r2"):
        return _parse_bucket_url(text, scheme, parts)
    raise ConfigError(f"unsupported repository URL {text!r}: use {ACCEPTED_FORMS}")


def _parse_file_url(text: str, host: str, raw_path: str) -> Location:
    if host not in ("", "localhost") or not raw_path.startswith("/"):
        raise ConfigError(
            f"invalid repository URL {text!r}: a file URL needs an absolute path,"
            " as in file:///var/backups/kv"
        )
    path = Path(unquote(raw_path))
    return Location("file", str(path), path=path)


def _parse_bucket_url(text: str, scheme: str, parts: Any) -> Location:
    if "@" in parts.netloc:
        # The user part may hold a secret key, so it is not echoed back.
        shown = f"{scheme}://***@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"
        raise ConfigError(
            f"invalid repository URL {shown}: access keys do not belong in the URL",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            " (R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY for r2://)",
        )
    bucket = parts.netloc
    if not _BUCKET_RE.fullmatch(bucket):
        raise ConfigError(
            f"invalid repository URL {text!r}: bucket name {bucket!r} must be 3-63"
            f" lowercase letters, digits, dots or hyphens; use {ACCEPTED_FORMS}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"invalid repository URL {text!r}: query strings and fragments are"
            f" not supported; use {ACCEPTED_FORMS}"
        )
    prefix = unquote(parts.path).strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError(
            f"invalid repository URL {text!r}: the prefix must not contain empty,"
            f" '.' or '..' segments; use {ACCEPTED_FORMS}"
        )
    display = f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"
    return Location(scheme, display, bucket=bucket, prefix=prefix)  # type: ignore[arg-type]


def s3_settings(
    location: Location, environ: Mapping[str, str], account_id: str | None = None
) -> S3Settings:
    """Build the S3Store settings of an s3:// or r2:// location from the environment.

    s3:// reads AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_REGION or
    AWS_DEFAULT_REGION. Without the key pair, one of ROLE_CREDENTIAL_VARIABLES
    must be set, and obstore then fetches role credentials itself. Otherwise
    ConfigError is raised before any request, so obstore never falls back to
    the instance metadata service. r2:// uses the account's R2 endpoint,
    region auto, and the pair R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY, or
    else the AWS_* pair. Every key read here is registered as a secret so logs
    mask it.
    """
    if location.scheme == "r2":
        return _r2_settings(environ, account_id)

    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    region = (
        environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_S3_REGION
    )
    key_id = environ.get("AWS_ACCESS_KEY_ID") or ""
    secret = environ.get("AWS_SECRET_ACCESS_KEY") or ""
    token = environ.get("AWS_SESSION_TOKEN") or ""
    for value in (key_id, secret, token):
        register_secret(value)
    if bool(key_id) != bool(secret):
        raise ConfigError(
            "incomplete S3 credentials: set both AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, or neither"
        )
    if not key_id and not any(environ.get(name) for name in ROLE_CREDENTIAL_VARIABLES):
        raise ConfigError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            hint="to use a role instead, set AWS_WEB_IDENTITY_TOKEN_FILE and"
            " AWS_ROLE_ARN, or AWS_CONTAINER_CREDENTIALS_FULL_URI or"
            " AWS_CONTAINER_CREDENTIALS_RELATIVE_URI. kvsnap never asks the"
            " instance metadata service.",
        )

    config = {"region": region}
    if key_id:
        config["access_key_id"] = key_id
        config["secret_access_key"] = secret
    if token:
        config["session_token"] = token
    if endpoint:
        _check_endpoint(endpoint)
        config["endpoint"] = endpoint
    allow_http = bool(endpoint) and endpoint.lower().startswith("http://")
    return S3Settings(config, endpoint, region, allow_http)


def _r2_settings(environ: Mapping[str, str], account_id: str | None) -> S3Settings:
    account = account_id or environ.get("CLOUDFLARE_ACCOUNT_ID") or ""
    if not account:
        raise ConfigError(
            "r2:// repositories need the Cloudflare account id:"
            " set CLOUDFLARE_ACCOUNT_ID"
        )
    if not _ACCOUNT_ID_RE.fullmatch(account):
        raise ConfigError(
            f"invalid Cloudflare account id {account!r}: expected letters and digits,"
            " as shown in the Cloudflare dashboard"
        )

    # Both keys come from one pair, so an R2 key id is never sent with an AWS secret.
    pair_prefix = (
        "R2"
        if environ.get("R2_ACCESS_KEY_ID") or environ.get("R2_SECRET_ACCESS_KEY")
        else "AWS"
    )
    key_id = environ.get(f"{pair_prefix}_ACCESS_KEY_ID") or ""
    secret = environ.get(f"{pair_prefix}_SECRET_ACCESS_KEY") or ""
    register_secret(key_id)
    register_secret(secret)
    if bool(key_id) != bool(secret):
        raise ConfigError(
            f"incomplete R2 credentials: set both {pair_prefix}_ACCESS_KEY_ID and"
            f" {pair_prefix}_SECRET_ACCESS_KEY"
        )
    if not key_id:
        raise ConfigError(
            "r2:// repositories need R2 access keys: set R2_ACCESS_KEY_ID and"
            " R2_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            hint="create them under R2 > Manage API tokens in the Cloudflare dashboard",
        )

    endpoint = R2_ENDPOINT.format(account_id=account)
    config = {
        "endpoint": endpoint,
        "region": R2_REGION,
        "access_key_id": key_id,
        "secret_access_key": secret,
    }
    return S3Settings(config, endpoint, R2_REGION, allow_http=False)


def _check_endpoint(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"invalid AWS_ENDPOINT_URL {endpoint!r}: expected http://host[:port]"
            " or https://host[:port]"
        )


def check_object_path(path: str) -> None:
    """Raise ValueError unless `path` is a relative path of plain segments."""
    if not path or path.startswith("/") or path.endswith("/"):
        raise ValueError(f"invalid object path {path!r}")
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise ValueError(f"invalid object path {path!r}")


class Storage:
    """Objects under one repository root, by path relative to that root.

    Contract:
    - `put` replaces an object atomically (S3 PUT, or obstore's write to a
      temporary file and rename). With ``create_only=True`` it raises
      ObjectExists when the path is taken; see `put` for the limits of that.
    - `get` raises ObjectNotFound for a missing object; `head` returns None.
    - `delete` of a missing object succeeds, so it is idempotent.
    - Every operation is retried as the module docstring describes. Failures
      are raised as RepositoryError subclasses chained to obstore's exception.

    A local folder that does not exist yet reads as empty and is created by
    the first write, so reading never creates folders.
    """

    def __init__(
        self, location: Location, store: ObjectStore | None, retry: RetryPolicy
    ) -> None:
        self.location = location
        self.url = location.display
        self.retry = retry
        self._store = store

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        account_id: str | None = None,
        retry: RetryPolicy | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Storage:
        """Open the storage at `url`; no request is made until the first operation.

        Without `retry`, the request timeout comes from KVSNAP_STORAGE_TIMEOUT
        in `environ`, which defaults to the process environment. An invalid
        value raises ConfigError, even for a local folder.
        """
        location = parse_location(url)
        environ = os.environ if environ is None else environ
        if retry is None:
            retry = RetryPolicy(request_timeout=storage_request_timeout(environ))
        if location.scheme == "file":
            assert location.path is not None
            _check_local_root(location.path)
            return cls(location, None, retry)

        settings = s3_settings(location, environ, account_id)
        try:
            store = S3Store(
                location.bucket,
                prefix=location.prefix or None,
                config=settings.config,  # type: ignore[arg-type]
                client_options=retry.client_options(allow_http=settings.allow_http),
                retry_config=retry.retry_config(),
            )
        except (obstore.exceptions.BaseError, ValueError) as exc:
            raise ConfigError(
                f"cannot use repository {location.display}: {_summarize(exc)}"
            ) from exc
        return cls(location, store, retry)

    def describe(self, path: str) -> str:
        """Return the display form of an object: repository URL plus path."""
        return f"{self.url.rstrip('/')}/{path}"

    async def put(self, path: str, data: bytes, *, create_only: bool = False) -> None:
        """Store `data` at `path`, replacing any object there unless create-only.

        With ``create_only=True`` the write raises ObjectExists when an object
        already exists at the path. A HEAD request checks first, then the PUT
        is sent with ``If-None-Match: *`` (obstore mode "create"). Servers that
        ignore that header (rclone 1.75 does) leave the race between the HEAD
        and the PUT unguarded: two writers of the same path at the same moment
        can both succeed, and the later one wins.
        """
        check_object_path(path)
        if create_only and await self.head(path) is not None:
            raise ObjectExists(
                f"{self.describe(path)} already exists; it is never overwritten"
            )
        store = self._writable_store()
        mode: Literal["create", "overwrite"] = "create" if create_only else "overwrite"

        async def attempt(number: int) -> None:
            try:
                # One PUT per object: parts are at most tens of MiB, and an
                # interrupted multipart upload would leave hidden, billed parts.
                await asyncio.to_thread(
                    obstore.put, store, path, data, mode=mode, use_multipart=False
                )
            except obstore.exceptions.AlreadyExistsError:
                # A retried create may find the object its own lost attempt wrote.
                if number > 1 and await self._contains_data(store, path, data):
                    return
                raise

        await self._retrying("PUT", path, attempt)

    async def get(self, path: str) -> bytes:
        """Return the whole object at `path`; raise ObjectNotFound if there is none."""
        check_object_path(path)
        store = self._readable_store()
        if store is None:
            raise ObjectNotFound(f"{self.describe(path)} not found")

        async def attempt(number: int) -> bytes:
            return await asyncio.to_thread(_get_bytes, store, path)

        return await self._retrying("GET", path, attempt)

    async def head(self, path: str) -> int | None:
        """Return the size of the object at `path` in bytes, or None if missing."""
        check_object_path(path)
        store = self._readable_store()
        if store is None:
            return None

        async def attempt(number: int) -> int | None:
            try:
                meta = await asyncio.to_thread(obstore.head, store, path)
            except FileNotFoundError:
                return None
            return int(meta["size"])

        return await self._retrying("HEAD", path, attempt)

    async def exists(self, path: str) -> bool:
        return await self.head(path) is not None

    async def list(
        self, prefix: str = "", *, limit: int | None = None
    ) -> list[tuple[str, int]]:
        """Return (path, size) of the objects under `prefix`, sorted by path.

        The prefix matches whole path segments: "data/a" lists "data/a/1" but
        not "data/ab/1". `limit` stops after that many objects (in the order
        the store lists them, before sorting).
        """
        if prefix:
            check_object_path(prefix)
        store = self._readable_store()
        if store is None:
            return []

        def list_all() -> list[tuple[str, int]]:
            found: list[tuple[str, int]] = []
            for chunk in obstore.list(store, prefix or None):
                found.extend((meta["path"], int(meta["size"])) for meta in chunk)
                if limit is not None and len(found) >= limit:
                    return sorted(found[:limit])
            return sorted(found)

        async def attempt(number: int) -> list[tuple[str, int]]:
            return await asyncio.to_thread(list_all)

        return await self._retrying("LIST", prefix or "/", attempt)

    async def list_modified(self, prefix: str = "") -> list[tuple[str, int, datetime]]:
        """Return (path, size, last modified time) of the objects under `prefix`.

        Sorted by path; the prefix matches whole segments as in `list`. The
        time is the store's Last-Modified (the file's mtime in a local folder).
        """
        if prefix:
            check_object_path(prefix)
        store = self._readable_store()
        if store is None:
            return []

        def list_all() -> list[tuple[str, int, datetime]]:
            found: list[tuple[str, int, datetime]] = []
            for chunk in obstore.list(store, prefix or None):
                found.extend(
                    (meta["path"], int(meta["size"]), meta["last_modified"])
                    for meta in chunk
                )
            return sorted(found)

        async def attempt(number: int) -> list[tuple[str, int, datetime]]:
            return await asyncio.to_thread(list_all)

        return await self._retrying("LIST", prefix or "/", attempt)

    async def remove_stale_uploads(self, older_than: timedelta) -> list[str]:
        """Delete the temporary files of interrupted writes to a local folder.

        obstore writes a local object to ``NAME#N`` and renames it when done,
        and its listing leaves such files out, so a process killed mid-write
        leaves one behind that nothing else sees. Those older than
        `older_than` are deleted and their paths returned. Object stores need
        nothing: a PUT that does not finish stores nothing.
        """
        root = self.location.path
        if self.location.scheme != "file" or root is None or not root.is_dir():
            return []

        def sweep() -> list[str]:
            limit = time.time() - older_than.total_seconds()
            removed = []
            for path in root.rglob("*#*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and path.stat().st_mtime < limit:
                        path.unlink()
                        removed.append(path.relative_to(root).as_posix())
            return sorted(removed)

        return await asyncio.to_thread(sweep)

    async def delete(self, path: str) -> None:
        """Delete the object at `path`; a missing object is not an error."""
        check_object_path(path)
        store = self._readable_store()
        if store is None:
            return

        async def attempt(number: int) -> None:
            try:
                await asyncio.to_thread(obstore.delete, store, path)
            except FileNotFoundError:
                return

        await self._retrying("DELETE", path, attempt)

    def _readable_store(self) -> ObjectStore | None:
        if self._store is None:
            root = self.location.path
            assert root is not None
            if not root.is_dir():
                return None
            self._store = self._open_local(root)
        return self._store

    def _writable_store(self) -> ObjectStore:
        if self._store is None:
            root = self.location.path
            assert root is not None
            self._store = self._open_local(root)
        return self._store

    def _open_local(self, root: Path) -> LocalStore:
        try:
            return LocalStore(root, mkdir=True)
        except (obstore.exceptions.BaseError, OSError) as exc:
            raise RepositoryError(
                f"cannot use folder {root} as a repository: {_summarize(exc)}"
            ) from exc

    @staticmethod
    async def _contains_data(store: ObjectStore, path: str, data: bytes) -> bool:
        try:
            return await asyncio.to_thread(_get_bytes, store, path) == data
        except (obstore.exceptions.BaseError, OSError):
            return False

    async def _retrying(
        self, operation: str, path: str, attempt: Callable[[int], Awaitable[T]]
    ) -> T:
        attempts = max(1, self.retry.attempts)
        for number in range(1, attempts + 1):
            try:
                return await attempt(number)
            except (obstore.exceptions.BaseError, OSError, ValueError) as exc:
                if number == attempts or not _is_transient(exc):
                    raise self._translate(exc, operation, path) from exc
                delay = self.retry.delay(number)
                logger.warning(
                    "%s %s failed (attempt %d of %d), retrying in %.1f s: %s",
                    operation,
                    self.describe(path),
                    number,
                    attempts,
                    delay,
                    _summarize(exc),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _translate(self, exc: Exception, operation: str, path: str) -> KvsnapError:
        target = self.describe(path)
        detail = _summarize(exc)
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"{target} not found")
        if isinstance(
            exc,
            obstore.exceptions.AlreadyExistsError
            | obstore.exceptions.PreconditionError,
        ):
            return ObjectExists(f"{target} already exists; it is never overwritten")
        if isinstance(
            exc,
            obstore.exceptions.PermissionDeniedError
            | obstore.exceptions.UnauthenticatedError,
        ):
            return RepositoryError(
                f"{operation} {target} was denied: {detail}",
                hint="check that the access keys may read and write the bucket",
            )
        if _TIMEOUT_KIND_RE.search(str(exc)):
            return RepositoryError(
                f"{operation} {target} failed: {detail}",
                hint=f"each request may take {self.retry.request_timeout:g} s. If"
                f" the store is slow rather than down, set {ENV_STORAGE_TIMEOUT}"
                " to a longer duration such as 5m",
            )
        return RepositoryError(f"{operation} {target} failed: {detail}")


def _check_local_root(root: Path) -> None:
    """Raise ConfigError if `root`, or its nearest parent that exists, is not a
    folder, because no repository can be read or created there."""
    for candidate in (root, *root.parents):
        if not candidate.exists():
            continue
        if candidate.is_dir():
            return
        kind = "a file, not a folder" if candidate.is_file() else "not a folder"
        if candidate == root:
            message = f"--repo {root} is {kind}"
        else:
            message = f"--repo {root} is inside {candidate}, which is {kind}"
        raise ConfigError(
            message,
            hint="give the path of a folder, which kvsnap creates if it is missing",
        )


def _get_bytes(store: ObjectStore, path: str) -> bytes:
    return bytes(obstore.get(store, path).bytes())


def _is_transient(exc: BaseException) -> bool:
    """Tell whether another try may succeed: 5xx, 429, timeouts, dropped connections."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if type(exc) in (obstore.exceptions.GenericError, obstore.exceptions.JoinError):
        return bool(_TRANSIENT_TEXT_RE.search(str(exc)))
    return False


def _summarize(exc: BaseException) -> str:
    """Return the first line of an obstore error, without the response body, masked.

    obstore appends a multi-line debug dump and the XML error body; the S3
    error code from that body is kept because it names the cause.
    """
    text = str(exc)
    first_line = text.split("\n", 1)[0].strip()
    summary = first_line.split(": <?xml", 1)[0].rstrip(": ")
    code = _S3_ERROR_CODE_RE.search(text)
    if code and code.group(1) not in summary:
        summary += f" ({code.group(1)})"
    elif _TIMEOUT_KIND_RE.search(text):
        summary += " (timed out)"
    return mask(summary or type(exc).__name__)
