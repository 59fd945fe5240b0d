"""Reading and writing Workers KV through the official Cloudflare SDK.

`KvClient` wraps `cloudflare.AsyncCloudflare` with the request discipline a
backup and a restore need and the SDK lacks:

- one `RateLimiter` and one concurrency limit shared by every request;
- retries of 429, 5xx, timeouts, dropped connections and truncated bodies,
  honouring Retry-After of any length (the SDK ignores values above 60 s),
  up to `RetryPolicy.max_attempts`, after which `ApiError` is raised;
- 401 and 403 become `AuthError` at once, other 4xx become `ApiError`;
- keys that a bulk write or bulk delete reports in ``unsuccessful_keys`` are
  sent again alone, up to `limits.BULK_WRITE_MAX_KEY_RETRIES` times, after
  which `WriteFailed` names them.

The SDK's own retries are switched off so that every attempt is counted and
paced here. Response bodies are read raw and decoded with msgspec: a million
keys would cost minutes as pydantic models, and values must stay byte-exact.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import cloudflare
import httpx
import msgspec

from kvsnap import limits
from kvsnap.batching import encode_items, iter_key_chunks, record_item
from kvsnap.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NamespaceNotFound,
    RateLimitExhausted,
    WriteFailed,
)
from kvsnap.format import Record, key_order
from kvsnap.ratelimit import RateLimiter, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from kvsnap.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A replacement character in a bulk-get value may stand for bytes that were
# not UTF-8, so such a value is fetched again alone as raw bytes.
REPLACEMENT_CHARACTER = "\ufffd"

# Bisecting a rejected bulk get stops below this many keys: they are fetched
# alone as raw bytes.
_MIN_SPLIT_KEYS = 4

# A WriteFailed message lists at most this many keys.
_LISTED_KEYS = 20


@dataclass(frozen=True)
class Namespace:
    id: str
    title: str


class KeyInfo(msgspec.Struct, frozen=True):
    """One entry of a key list page."""

    name: str
    expiration: int | float | msgspec.UnsetType = msgspec.UNSET
    metadata: Any = msgspec.UNSET


class _CursorInfo(msgspec.Struct):
    count: int | None = None
    cursor: str | None = None


class _KeysPage(msgspec.Struct):
    result: list[KeyInfo] | None = None
    result_info: _CursorInfo | None = None


class _NamespacesPage(msgspec.Struct):
    result: list[dict[str, Any]] | None = None


class _BulkEntry(msgspec.Struct):
    value: Any = None
    metadata: Any = None
    expiration: int | float | None = None


class _BulkWriteResult(msgspec.Struct):
    successful_key_count: int | None = None
    unsuccessful_keys: list[str] = []


class _BulkWriteEnvelope(msgspec.Struct):
    result: _BulkWriteResult | None = None


class _NamespaceInfo(msgspec.Struct):
    id: str
    title: str


class _NamespaceEnvelope(msgspec.Struct):
    result: _NamespaceInfo | None = None


class _MetadataEnvelope(msgspec.Struct):
    result: Any = None


class _BulkGetResult(msgspec.Struct):
    values: dict[str, _BulkEntry | None] = {}


class _BulkGetEnvelope(msgspec.Struct):
    result: _BulkGetResult | None = None


# Cloudflare error codes in 404 answers (wrangler-legacy's error help, which
# cites Cloudflare's former Workers KV error list).
CODE_KEY_NOT_FOUND = 10009
CODE_NAMESPACE_NOT_FOUND = 10013
CODE_DUPLICATE_TITLE = 10014


class _NotFound(Exception):
    """The API returned 404 for a key or namespace that does not exist."""

    def __init__(self, message: str, codes: list[int]) -> None:
        super().__init__(message)
        self.codes = codes

    @property
    def namespace_missing(self) -> bool:
        return CODE_NAMESPACE_NOT_FOUND in self.codes


class _Rejected(Exception):
    """The API rejected a request with 4xx (other than 401, 403, 404 and 429)."""

    def __init__(self, message: str, codes: list[int]) -> None:
        super().__init__(message)
        self.codes = codes


class _ReadResponse:
    """A response body already read, with the `read()` of the SDK's raw responses."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    async def read(self) -> bytes:
        return self._content


@dataclass
class ReadStats:
    """Counts of one namespace read, filled in as records stream out."""

    keys: int = 0
    value_bytes: int = 0
    pages: int = 0
    bulk_gets: int = 0
    raw_gets: int = 0
    skipped_keys: int = 0  # listed, then gone before the value was read


class KvClient:
    """Workers KV access for one account, used as an async context manager.

    `http_client`, when given, replaces the SDK's own httpx client (to add a
    proxy or event hooks); it is closed with the KvClient.
    """

    def __init__(
        self,
        *,
        api_token: str,
        account_id: str,
        base_url: str,
        concurrency: int = limits.DEFAULT_CONCURRENCY,
        rate_limit: tuple[int, float] = (
            limits.API_BUDGET_REQUESTS,
            limits.API_BUDGET_WINDOW_SECONDS,
        ),
        policy: RetryPolicy | None = None,
        timeout: float = limits.DEFAULT_REQUEST_TIMEOUT_SECONDS,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.account_id = account_id
        self.base_url = base_url
        self.policy = policy or RetryPolicy()
        self.limiter = RateLimiter(*rate_limit)
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._sdk = cloudflare.AsyncCloudflare(
            api_token=api_token,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )
        self.requests = 0
        self.retries = 0
        self.write_requests = 0  # bulk writes, bulk deletes, namespace creations

    async def __aenter__(self) -> KvClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._sdk.close()

    # Requests, retries and error translation.

    async def _call(self, operation: str, request: Callable[[], Awaitable[T]]) -> T:
        """Run one API request under the budget, retrying transient failures."""
        last_error = ""
        for attempt in range(1, self.policy.max_attempts + 1):
            async with self._slots:
                await self.limiter.acquire()
                self.requests += 1
                try:
                    return await request()
                except cloudflare.RateLimitError as exc:
                    header = exc.response.headers.get("retry-after")
                    delay = self.policy.backoff(attempt, parse_retry_after(header))
                    self.limiter.pause_until(time.monotonic() + delay)
                    last_error = f"HTTP 429, Retry-After {header or 'absent'}"
                except cloudflare.InternalServerError as exc:
                    delay = self.policy.backoff(attempt)
                    last_error = _describe(exc)
                except (cloudflare.APIConnectionError, httpx.TransportError) as exc:
                    delay = self.policy.backoff(attempt)
                    last_error = f"connection failed: {type(exc).__name__}"
                except msgspec.DecodeError as exc:
                    delay = self.policy.backoff(attempt)
                    last_error = f"unreadable response body: {exc}"
                except (
                    cloudflare.AuthenticationError,
                    cloudflare.PermissionDeniedError,
                ) as exc:
                    raise AuthError(
                        f"{operation} failed: the API token was rejected "
                        f"({_describe(exc)})",
                        hint="check CLOUDFLARE_API_TOKEN, that CLOUDFLARE_ACCOUNT_ID "
                        "is the account that owns the namespaces, and that the "
                        "token has 'Workers KV Storage' permission on it",
                    ) from exc
                except cloudflare.NotFoundError as exc:
                    raise _NotFound(_describe(exc), _error_codes(exc)) from exc
                except cloudflare.APIStatusError as exc:
                    raise _Rejected(_describe(exc), _error_codes(exc)) from exc
            if attempt < self.policy.max_attempts:
                self.retries += 1
                log.warning(
                    "%s failed (%s); retry %d of %d in %.1f s",
                    operation,
                    last_error,
                    attempt,
                    self.policy.max_attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
        error = RateLimitExhausted if last_error.startswith("HTTP 429") else ApiError
        raise error(
            f"{operation} failed after {self.policy.max_attempts} attempts: "
            f"{last_error}",
            hint="the API kept failing; run again later, or raise --max-attempts",
        )

    async def _read_json(
        self, operation: str, send: Callable[[], Awaitable[Any]], type_: type[T]
    ) -> T:
        async def request() -> T:
            response = await send()
            return msgspec.json.decode(await response.read(), type=type_)

        return await self._call(operation, request)

    # Namespaces.

    async def list_namespaces(self) -> list[Namespace]:
        """Return every namespace of the account, paging until a short page."""
        per_page = 100
        found: list[Namespace] = []
        for page in range(1, 10_000):
            body = await self._list_namespaces_page(page, per_page)
            items = body.result or []
            found.extend(
                Namespace(str(item["id"]), str(item["title"])) for item in items
            )
            if len(items) < per_page:
                return found
        raise ApiError("list namespaces returned more than 10,000 pages")

    async def _list_namespaces_page(self, page: int, per_page: int) -> _NamespacesPage:
        try:
            return await self._read_json(
                "list namespaces",
                lambda page=page: self._sdk.kv.namespaces.with_raw_response.list(
                    account_id=self.account_id, page=page, per_page=per_page
                ),
                _NamespacesPage,
            )
        except (_NotFound, _Rejected) as exc:
            raise ConfigError(
                f"listing the namespaces of account {self.account_id} failed: {exc}",
                hint="check that CLOUDFLARE_ACCOUNT_ID or --account names your account",
            ) from exc

    async def resolve_namespaces(
        self, names: tuple[str, ...] | list[str], *, all_namespaces: bool = False
    ) -> list[Namespace]:
        """Resolve ids or exact titles to namespaces; never creates one.

        A name that is the id of one namespace and the title of another is
        ambiguous; `id:NAME` or `title:NAME` picks one explicitly. `all`
        leaves out the sandboxes of restore drills (titles starting with
        `kvsnap-drill-`): they hold copies of other namespaces' keys.
        """
        available = await self.list_namespaces()
        if all_namespaces:
            chosen = [
                ns
                for ns in available
                if not ns.title.startswith(limits.DRILL_SANDBOX_PREFIX)
            ]
            for ns in available:
                if ns not in chosen:
                    log.info("leaving out drill sandbox %s (%s)", ns.title, ns.id)
            return chosen
        if not names:
            raise NamespaceNotFound(
                "no namespace given: name one or more namespaces, or pass --all",
                hint=_candidates(available),
            )
        chosen: list[Namespace] = []
        for name in names:
            namespace = resolve_namespace(name, available)
            if namespace not in chosen:
                chosen.append(namespace)
        return chosen

    async def get_namespace(self, namespace_id: str) -> Namespace:
        """Return the namespace with this id, or raise NamespaceNotFound."""
        try:
            body = await self._read_json(
                f"get namespace {namespace_id}",
                lambda: self._sdk.kv.namespaces.with_raw_response.get(
                    namespace_id, account_id=self.account_id
                ),
                _NamespaceEnvelope,
            )
        except _NotFound as exc:
            raise _namespace_missing(namespace_id, exc) from exc
        except _Rejected as exc:
            raise ApiError(f"get namespace {namespace_id} failed: {exc}") from exc
        return _namespace_from(body, f"get namespace {namespace_id}")

    async def create_namespace(self, title: str) -> Namespace:
        """Create a namespace and return it.

        Creation is not idempotent: Cloudflare rejects a title the account
        already uses (code 10014). When an attempt failed in a way that may
        have reached the API (a lost or cut response, a 5xx) and the retry is
        then rejected for its title, the earlier attempt most likely created
        the namespace. If a namespace of that title exists and contains no
        key, it is returned as this call's own; otherwise ApiError is raised.
        """
        operation = f"create namespace {title!r}"
        attempts = 0

        async def send() -> Any:
            nonlocal attempts
            attempts += 1
            self.write_requests += 1
            return await self._sdk.kv.namespaces.with_raw_response.create(
                account_id=self.account_id, title=title
            )

        try:
            body = await self._read_json(operation, send, _NamespaceEnvelope)
        except ApiError as exc:
            # Every attempt failed, but one whose response was lost may have
            # created the namespace.
            exc.hint = _maybe_created_hint(title)
            raise
        except _Rejected as exc:
            if attempts > 1 and CODE_DUPLICATE_TITLE in exc.codes:
                try:
                    adopted = await self._adopt_created(title)
                except ApiError as lookup:
                    lookup.hint = _maybe_created_hint(title)
                    raise
                if adopted is not None:
                    return adopted
            raise ApiError(
                f"{operation} failed: {exc}",
                hint="a namespace with this title may exist already; "
                "choose it by id, or pick another title",
            ) from exc
        return _namespace_from(body, operation)

    async def _adopt_created(self, title: str) -> Namespace | None:
        """Return the empty namespace titled `title`, or None if there is none."""
        matches = [ns for ns in await self.list_namespaces() if ns.title == title]
        if len(matches) != 1:
            return None
        namespace = matches[0]
        async for page in self.iter_key_pages(namespace.id):
            if page:
                return None
        log.warning(
            "the response to creating namespace %r was lost and the retry "
            "found the title in use; using the empty namespace %s that an "
            "earlier attempt created",
            title,
            namespace.id,
        )
        return namespace

    async def delete_namespace(self, namespace_id: str) -> None:
        """Delete a namespace and every key in it.

        Raises NamespaceNotFound when it does not exist, so a retry after a
        lost response that had deleted it reports it as missing.
        """
        operation = f"delete namespace {namespace_id}"

        async def send() -> Any:
            self.write_requests += 1
            return await self._sdk.kv.namespaces.with_raw_response.delete(
                namespace_id, account_id=self.account_id
            )

        try:
            await self._read_json(operation, send, _MetadataEnvelope)
        except _NotFound as exc:
            raise _namespace_missing(namespace_id, exc) from exc
        except _Rejected as exc:
            raise ApiError(f"{operation} failed: {exc}") from exc

    # Keys and values.

    async def iter_key_pages(
        self, namespace_id: str, *, prefix: str | None = None
    ) -> AsyncIterator[list[KeyInfo]]:
        """Yield pages of the key list in order, following result_info.cursor.

        A page may be empty while more keys remain, so only an empty or
        missing cursor ends the listing. A cursor seen before is an error.
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = await self._list_keys(namespace_id, cursor, prefix)
            yield page.result or []
            cursor = page.result_info.cursor if page.result_info else None
            if not cursor:
                return
            if cursor in seen:
                raise ApiError(
                    f"the key list of namespace {namespace_id} returned cursor "
                    f"{cursor!r} twice; stopping instead of looping"
                )
            seen.add(cursor)

    async def _list_keys(
        self, namespace_id: str, cursor: str | None, prefix: str | None
    ) -> _KeysPage:
        options: dict[str, Any] = {"limit": limits.LIST_PAGE_MAX}
        if cursor:
            options["cursor"] = cursor
        if prefix:
            options["prefix"] = prefix
        try:
            return await self._read_json(
                f"list keys of namespace {namespace_id}",
                lambda: self._sdk.kv.namespaces.keys.with_raw_response.list(
                    namespace_id, account_id=self.account_id, **options
                ),
                _KeysPage,
            )
        except _NotFound as exc:
            raise _namespace_missing(namespace_id, exc) from exc
        except _Rejected as exc:
            raise ApiError(
                f"list keys of namespace {namespace_id} failed: {exc}"
            ) from exc

    async def bulk_get_text(
        self, namespace_id: str, names: list[str]
    ) -> dict[str, _BulkEntry | None]:
        """Return {key: entry or None} for up to 100 keys, or raise _Rejected on 4xx."""
        try:
            return await self._bulk_get_text(namespace_id, names)
        except _NotFound as exc:
            raise _namespace_missing(namespace_id, exc) from exc

    async def _bulk_get_text(
        self, namespace_id: str, names: list[str]
    ) -> dict[str, _BulkEntry | None]:
        body = await self._read_json(
            f"bulk get of {len(names)} keys",
            lambda: self._sdk.kv.namespaces.with_raw_response.bulk_get(
                namespace_id,
                account_id=self.account_id,
                keys=names,
                type="text",
                with_metadata=True,
            ),
            _BulkGetEnvelope,
        )
        return body.result.values if body.result else {}

    async def get_value(
        self, namespace_id: str, key: str
    ) -> tuple[bytes, str | None] | None:
        """Return (raw bytes, expiration header) of one key, or None if absent."""

        async def request() -> tuple[bytes, str | None]:
            response = await self._sdk.kv.namespaces.values.get(
                key, account_id=self.account_id, namespace_id=namespace_id
            )
            return await response.read(), response.headers.get("expiration")

        return await self._read_key("read value", namespace_id, key, request)

    async def _read_key(
        self,
        operation: str,
        namespace_id: str,
        key: str,
        request: Callable[[], Awaitable[T]],
    ) -> T | None:
        """Run a one-key read; None when the key is absent.

        Raises NamespaceNotFound when the namespace is gone, and ApiError for
        other rejections and for keys the SDK cannot put in a URL.
        """
        try:
            return await self._call(operation, request)
        except _NotFound as exc:
            if exc.namespace_missing:
                raise _namespace_missing(namespace_id, exc) from exc
            return None
        except _Rejected as exc:
            raise ApiError(f"{operation} of key {key!r} failed: {exc}") from exc
        except ValueError as exc:  # the SDK refuses empty, "." and ".." keys
            raise ApiError(f"cannot read key {key!r} through the API: {exc}") from exc

    async def read_records(
        self, namespace_id: str, stats: ReadStats, *, prefix: str | None = None
    ) -> AsyncIterator[Record]:
        """Yield the namespace's records in key byte order, values byte-exact.

        Key pages are listed in order while bulk gets for earlier pages run
        concurrently; a bounded queue of pending batches keeps memory flat.
        Metadata and expiration come from the bulk get that returned the
        value, or from the key list for values read alone as raw bytes.
        """
        # NOTE: the key list gives no value sizes, so a batch of 100 values of
        # 25 MiB each would hold 2.5 GB in memory. Memory is bounded by the
        # number of pending batches, not by bytes.
        pending: asyncio.Queue[asyncio.Task[list[Record]] | None] = asyncio.Queue(
            maxsize=2 * self.concurrency
        )

        async def produce() -> None:
            previous: bytes | None = None
            async for page in self.iter_key_pages(namespace_id, prefix=prefix):
                stats.pages += 1
                for info in page:
                    order = key_order(info.name)
                    if previous is not None and order <= previous:
                        raise ApiError(
                            f"the key list of namespace {namespace_id} is not in byte "
                            f"order: {info.name!r} came after a key that sorts after it"
                        )
                    previous = order
                for start in range(0, len(page), limits.BULK_GET_MAX_KEYS):
                    batch = page[start : start + limits.BULK_GET_MAX_KEYS]
                    task = asyncio.create_task(
                        self._fetch_batch(namespace_id, batch, stats)
                    )
                    await pending.put(task)
            await pending.put(None)

        producer = asyncio.create_task(produce())
        try:
            while True:
                task = await _next_pending(pending, producer)
                if task is None:
                    break
                for record in await task:
                    stats.keys += 1
                    stats.value_bytes += len(record.value_bytes())
                    yield record
            producer.result()
        finally:
            producer.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
                    if leftover.done() and not leftover.cancelled():
                        leftover.exception()  # retrieved: the run failed already

    async def _fetch_batch(
        self, namespace_id: str, batch: list[KeyInfo], stats: ReadStats
    ) -> list[Record]:
        """Read one batch by bulk get, falling back to raw reads where needed."""
        try:
            stats.bulk_gets += 1
            values = await self.bulk_get_text(namespace_id, [k.name for k in batch])
        except _Rejected as exc:
            log.debug("bulk get of %d keys rejected (%s)", len(batch), exc)
            return await self._fetch_rejected(namespace_id, batch, stats)
        except RateLimitExhausted:
            raise  # reading keys alone would only add requests to a spent budget
        except ApiError as exc:
            # The batch failed after every retry. Reading its keys alone may
            # still work, but if the first one fails too the API is down, and
            # fanning out to every key would only burn the request budget.
            log.warning("bulk get failed, reading %d keys alone (%s)", len(batch), exc)
            first = await self._fetch_raw(
                namespace_id, batch[:1], stats, keep_gaps=True
            )
            rest = await self._fetch_raw(namespace_id, batch[1:], stats, keep_gaps=True)
            return [record for record in first + rest if record is not None]
        return await self._records_from_bulk(namespace_id, batch, values, stats)

    async def _fetch_rejected(
        self, namespace_id: str, batch: list[KeyInfo], stats: ReadStats
    ) -> list[Record]:
        """Find the keys bulk get cannot return by splitting the batch.

        One binary value among text values costs a few extra bulk gets. When
        the first half is rejected too, the values are probably mostly binary
        and every key of the batch is read alone.
        """
        if len(batch) < _MIN_SPLIT_KEYS:
            return await self._fetch_raw(namespace_id, batch, stats)
        middle = len(batch) // 2
        first, second = batch[:middle], batch[middle:]
        try:
            stats.bulk_gets += 1
            values = await self.bulk_get_text(namespace_id, [k.name for k in first])
        except _Rejected:
            return await self._fetch_raw(namespace_id, batch, stats)
        records = await self._records_from_bulk(namespace_id, first, values, stats)
        return records + await self._fetch_batch(namespace_id, second, stats)

    async def _records_from_bulk(
        self,
        namespace_id: str,
        batch: list[KeyInfo],
        values: dict[str, _BulkEntry | None],
        stats: ReadStats,
    ) -> list[Record]:
        records: list[Record | None] = []
        refetch: list[tuple[int, KeyInfo]] = []
        for info in batch:
            entry = values.get(info.name)
            text = entry.value if entry is not None else None
            if isinstance(text, str) and REPLACEMENT_CHARACTER not in text:
                # Metadata and expiration come from the same response as the
                # value. The key list is older, so a key written in between
                # would otherwise pair its new value with its old metadata.
                assert entry is not None
                records.append(
                    Record(
                        info.name,
                        text,
                        False,
                        msgspec.UNSET if entry.metadata is None else entry.metadata,
                        msgspec.UNSET if entry.expiration is None else entry.expiration,
                    )
                )
            else:
                refetch.append((len(records), info))
                records.append(None)
        if refetch:
            fetched = await self._fetch_raw(
                namespace_id, [info for _, info in refetch], stats, keep_gaps=True
            )
            for (index, _), record in zip(refetch, fetched, strict=True):
                records[index] = record
        return [record for record in records if record is not None]

    async def _fetch_raw(
        self,
        namespace_id: str,
        batch: list[KeyInfo],
        stats: ReadStats,
        *,
        keep_gaps: bool = False,
    ) -> list[Any]:
        """Read each key alone as raw bytes, skipping keys deleted since the list.

        A raw GET returns the value and its expiration (in a header) but not
        its metadata, so the metadata is read after it and compared with the
        metadata seen before the value (first from the key list). When they
        differ, the key was written in between and the value may be older
        than the metadata: both are read again, up to RAW_READ_ROUNDS times.
        A key that is still changing then keeps its last value with the
        metadata read after it, and a warning is logged.
        """

        async def one(info: KeyInfo) -> Record | None:
            before = _metadata_or_none(info.metadata)
            for _ in range(limits.RAW_READ_ROUNDS):
                stats.raw_gets += 1
                found = await self.get_value(namespace_id, info.name)
                if found is None:
                    stats.skipped_keys += 1
                    log.info("key %r was deleted during the backup; skipped", info.name)
                    return None
                data, expiration_header = found
                after = await self.get_metadata(namespace_id, info.name)
                if after == before:
                    break
                before = after
            else:
                log.warning(
                    "key %r changed on each of %d reads; keeping the last value "
                    "with the metadata read after it",
                    info.name,
                    limits.RAW_READ_ROUNDS,
                )
            return Record.from_bytes(
                info.name,
                data,
                metadata=msgspec.UNSET if after is None else after,
                expiration=_expiration_from_header(expiration_header, info.name),
            )

        # A task group cancels the other reads as soon as one fails for good.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(info)) for info in batch]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        results = [task.result() for task in tasks]
        return results if keep_gaps else [r for r in results if r is not None]

    # Writes.

    async def bulk_write(self, namespace_id: str, records: Sequence[Record]) -> None:
        """Write records with one bulk write, then send failed keys again.

        `records` must fit one request: at most 10,000 pairs and 100,000,000
        bytes of body (`kvsnap.batching.iter_batches` cuts them so). Each
        record is sent as `kvsnap.batching.record_item` maps it. The write is
        idempotent, because items carry an absolute expiration or none, so a
        request that `_call` retries after a timeout stores the same pairs
        again. Keys listed in ``unsuccessful_keys`` are sent again alone with
        their whole record, at least 1 s apart (KV takes one write per second
        per key), up to `limits.BULK_WRITE_MAX_KEY_RETRIES` times.

        Raises WriteFailed naming the keys that still failed, or all keys of
        the request when the API rejects it (4xx), and NamespaceNotFound.
        """
        if len(records) > limits.BULK_WRITE_MAX_PAIRS:
            raise ValueError(
                f"a bulk write takes at most {limits.BULK_WRITE_MAX_PAIRS} pairs, "
                f"got {len(records)}"
            )
        by_key = {record.key: record for record in records}  # the last one wins

        async def send(keys: list[str]) -> list[str]:
            # Bytes go out as they are; see kvsnap.batching.encode_items.
            body: Any = encode_items([record_item(by_key[key]) for key in keys])
            return await self._bulk_request(
                namespace_id,
                f"bulk write of {len(keys)} pairs to namespace {namespace_id}",
                lambda: self._put_bulk(namespace_id, body),
                keys,
            )

        await self._until_keys_succeed("bulk write", namespace_id, list(by_key), send)

    async def _put_bulk(self, namespace_id: str, body: bytes) -> _ReadResponse:
        """Send an encoded bulk-write body as it is.

        The SDK's bulk_update takes items and encodes them itself, so the
        request goes through its generic PUT with the bytes as content. The
        route, headers, retries (off) and errors are the SDK's own.
        """
        response = await self._sdk.put(
            f"/accounts/{self.account_id}/storage/kv/namespaces/{namespace_id}/bulk",
            cast_to=httpx.Response,
            content=body,
            options={"headers": {"Content-Type": "application/json"}},
        )
        return _ReadResponse(response.content)

    async def bulk_delete(self, namespace_id: str, keys: Iterable[str]) -> None:
        """Delete keys with bulk deletes of at most 10,000 keys each.

        Deleting a missing key is not an error. Keys listed in
        ``unsuccessful_keys`` are sent again as in `bulk_write`. Raises
        WriteFailed naming the keys that still failed, and NamespaceNotFound.
        """

        async def send(chunk: list[str]) -> list[str]:
            return await self._bulk_request(
                namespace_id,
                f"bulk delete of {len(chunk)} keys in namespace {namespace_id}",
                lambda: self._sdk.kv.namespaces.with_raw_response.bulk_delete(
                    namespace_id, account_id=self.account_id, body=chunk
                ),
                chunk,
            )

        for chunk in iter_key_chunks(keys, limits.BULK_DELETE_MAX_KEYS):
            unique = list(dict.fromkeys(chunk))
            await self._until_keys_succeed("bulk delete", namespace_id, unique, send)

    async def _until_keys_succeed(
        self,
        operation: str,
        namespace_id: str,
        keys: list[str],
        send: Callable[[list[str]], Awaitable[list[str]]],
    ) -> None:
        """Call `send` with the keys that last failed until none fail, or give up."""
        pending = keys
        for attempt in range(1, limits.BULK_WRITE_MAX_KEY_RETRIES + 2):
            if not pending:
                return
            failed = await send(pending)
            known = set(pending)
            unknown = [key for key in failed if key not in known]
            if unknown:
                log.warning(
                    "%s reported %d failed keys that were not in the request "
                    "(first: %r), so they are ignored",
                    operation,
                    len(unknown),
                    unknown[0],
                )
            pending = [key for key in dict.fromkeys(failed) if key in known]
            if not pending or attempt > limits.BULK_WRITE_MAX_KEY_RETRIES:
                break
            delay = max(limits.KEY_WRITE_INTERVAL_SECONDS, self.policy.backoff(attempt))
            self.retries += 1
            log.warning(
                "%s in namespace %s: %d keys failed, sending them again "
                "(retry %d of %d) in %.1f s",
                operation,
                namespace_id,
                len(pending),
                attempt,
                limits.BULK_WRITE_MAX_KEY_RETRIES,
                delay,
            )
            await asyncio.sleep(delay)
        if pending:
            raise WriteFailed(
                f"{operation} in namespace {namespace_id} failed for "
                f"{len(pending)} keys after {limits.BULK_WRITE_MAX_KEY_RETRIES} "
                f"retries: {_list_keys(pending)}",
                pending,
                hint="the API kept reporting these keys as unsuccessful; "
                "run the restore again later, it writes the same values again",
            )

    async def _bulk_request(
        self,
        namespace_id: str,
        operation: str,
        send: Callable[[], Awaitable[Any]],
        keys: list[str],
    ) -> list[str]:
        """Send one bulk write or bulk delete and return its ``unsuccessful_keys``."""

        async def counted() -> Any:
            self.write_requests += 1
            return await send()

        try:
            body = await self._read_json(operation, counted, _BulkWriteEnvelope)
        except _NotFound as exc:
            raise _namespace_missing(namespace_id, exc) from exc
        except _Rejected as exc:
            raise WriteFailed(
                f"{operation} was rejected: {exc}",
                keys,
                hint="the API rejected the whole request, so none of its keys "
                "were changed",
            ) from exc
        return body.result.unsuccessful_keys if body.result else []

    async def get_metadata(self, namespace_id: str, key: str) -> Any:
        """Return the metadata of one key, or None when it has none or is absent."""

        async def request() -> _MetadataEnvelope:
            response = await self._sdk.kv.namespaces.metadata.with_raw_response.get(
                key, account_id=self.account_id, namespace_id=namespace_id
            )
            return msgspec.json.decode(await response.read(), type=_MetadataEnvelope)

        body = await self._read_key("read metadata", namespace_id, key, request)
        return body.result if body is not None else None


def _maybe_created_hint(title: str) -> str:
    return (
        f"an attempt whose response was lost may have created the namespace "
        f"{title!r}; if it exists and is empty, restore into it with --to "
        f"{title!r} and without --create, or delete it"
    )


def _metadata_or_none(metadata: Any) -> Any:
    return None if metadata is msgspec.UNSET else metadata


def _expiration_from_header(
    header: str | None, key: str
) -> int | float | msgspec.UnsetType:
    """Read the `expiration` header of a raw GET (epoch seconds), if any."""
    if not header:
        return msgspec.UNSET
    try:
        seconds = float(header)
    except ValueError as exc:
        raise ApiError(
            f"read value of key {key!r}: unreadable expiration header {header!r}"
        ) from exc
    return int(seconds) if seconds.is_integer() else seconds


async def _next_pending(
    pending: asyncio.Queue[asyncio.Task[list[Record]] | None],
    producer: asyncio.Task[None],
) -> asyncio.Task[list[Record]] | None:
    """Take the next batch task, or raise the producer's error if it failed."""
    while True:
        if producer.done():
            producer.result()
            return await pending.get()
        getter = asyncio.ensure_future(pending.get())
        done, _ = await asyncio.wait(
            {getter, producer}, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()


def resolve_namespace(name: str, available: list[Namespace]) -> Namespace:
    """Pick the namespace whose id or exact title is `name`.

    `id:NAME` and `title:NAME` restrict the match to one field.
    """
    kind, _, value = name.partition(":")
    if kind in ("id", "title") and value:
        matches = [ns for ns in available if getattr(ns, kind) == value]
    else:
        matches = [ns for ns in available if name in (ns.id, ns.title)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(f"{ns.id} (title {ns.title!r})" for ns in matches)
        raise NamespaceNotFound(
            f"namespace {name!r} is ambiguous: it matches {listed}",
            hint=f"write id:{name} or title:{name} to choose one",
        )
    by_folded = {ns.title.casefold(): ns.title for ns in available}
    folded = difflib.get_close_matches(name.casefold(), list(by_folded), n=3)
    close = [by_folded[title] for title in folded]
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise NamespaceNotFound(
        f"namespace {name!r} not found in the account{suggestion}",
        hint=_candidates(available),
    )


def _candidates(available: list[Namespace]) -> str:
    if not available:
        return "the account has no KV namespaces"
    listed = ", ".join(f"{ns.title} ({ns.id})" for ns in available[:20])
    more = f" and {len(available) - 20} more" if len(available) > 20 else ""
    return f"namespaces in the account: {listed}{more}"


def _namespace_from(body: _NamespaceEnvelope, operation: str) -> Namespace:
    if body.result is None:
        raise ApiError(f"{operation} returned no namespace")
    return Namespace(body.result.id, body.result.title)


def _list_keys(keys: list[str]) -> str:
    listed = ", ".join(repr(key) for key in keys[:_LISTED_KEYS])
    more = len(keys) - _LISTED_KEYS
    return f"{listed} and {more} more" if more > 0 else listed


def _namespace_missing(namespace_id: str, exc: Exception) -> NamespaceNotFound:
    return NamespaceNotFound(f"namespace {namespace_id} not found: {exc}")


def _error_codes(exc: cloudflare.APIStatusError) -> list[int]:
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = body.get("errors") or []
    return [
        e["code"]
        for e in errors
        if isinstance(e, dict) and isinstance(e.get("code"), int)
    ]


def _describe(exc: cloudflare.APIStatusError) -> str:
    """Summarise an API error as 'HTTP 400: code 10xxx: message' without secrets."""
    parts = [f"HTTP {exc.status_code}"]
    body = exc.body if isinstance(exc.body, dict) else {}
    for error in (body.get("errors") or [])[:3]:
        if isinstance(error, dict):
            parts.append(f"code {error.get('code')}: {error.get('message')}")
    return ": ".join(parts)


def open_client(settings: Settings) -> KvClient:
    """Build the KV client of `settings`; ConfigError if token or account is missing."""
    token, account = settings.require_cloudflare()
    return KvClient(
        api_token=token,
        account_id=account,
        base_url=settings.base_url,
        concurrency=settings.concurrency,
        rate_limit=settings.rate_limit,
        policy=RetryPolicy(max_attempts=settings.max_attempts),
    )
