"""SQLite storage of the emulator: accounts' namespaces and their pairs.

One file, ``kv.sqlite3`` in the data folder, in WAL mode so that readers never
wait for the writer. Keys are UTF-8 BLOBs, so ``ORDER BY key`` is byte order
(the order Cloudflare lists keys in) and a prefix is a byte range, never a
``LIKE`` pattern. Values are BLOBs, stored and returned byte for byte;
metadata is compact JSON text; expiration is epoch seconds or NULL.

Expired pairs stay in the file but every read compares with the ``now`` it is
given, so they vanish from reads, bulk reads and lists at once. Writes go
through one lock (SQLite has one writer anyway); reads use a pool of
connections, one per request in flight.

Stale reads: with ``stale_reads_seconds`` above 0, a write or delete first
copies the key's previous state (its row, or the fact that it was absent)
into the ``stale`` table with ``visible_until = now + stale_reads_seconds``.
Until then every read of that key (value, metadata, bulk get, list) sees the
copy instead of the current row. A second write replaces the copy, so reads
then see the state just before that write.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DB_FILE = "kv.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    pk INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    title TEXT NOT NULL,
    UNIQUE (account, title)
);
CREATE TABLE IF NOT EXISTS pairs (
    ns INTEGER NOT NULL REFERENCES namespaces (pk) ON DELETE CASCADE,
    key BLOB NOT NULL,
    expiration INTEGER,
    metadata TEXT,
    value BLOB NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE TABLE IF NOT EXISTS stale (
    ns INTEGER NOT NULL REFERENCES namespaces (pk) ON DELETE CASCADE,
    key BLOB NOT NULL,
    visible_until REAL NOT NULL,
    present INTEGER NOT NULL,
    expiration INTEGER,
    metadata TEXT,
    value BLOB,
    PRIMARY KEY (ns, key)
);
"""

# Rows as reads see them while stale reads are on: current pairs that have
# no visible stale copy, plus the visible copies of keys that were present.
# Both parameters are `now`.
_VISIBLE_PAIRS = """(
    SELECT ns, key, expiration, metadata, value FROM pairs AS p
    WHERE NOT EXISTS (
        SELECT 1 FROM stale AS s
        WHERE s.ns = p.ns AND s.key = p.key AND s.visible_until > ?
    )
    UNION ALL
    SELECT ns, key, expiration, metadata, value FROM stale
    WHERE visible_until > ? AND present = 1
)"""

# The column order of `pairs` matters: value comes last, so a list query,
# which never reads it, does not load a large value's overflow pages.
_LIVE = "(expiration IS NULL OR expiration > ?)"


@dataclass(frozen=True)
class Namespace:
    pk: int
    id: str
    account: str
    title: str


@dataclass(frozen=True)
class Pair:
    key: bytes
    value: bytes | None  # None when the query did not read values
    expiration: int | None
    metadata: str | None  # compact JSON text


@dataclass(frozen=True)
class Write:
    key: bytes
    value: bytes
    expiration: int | None
    metadata: str | None


class DuplicateTitle(Exception):
    """An account already has a namespace with this title."""


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string that starts with prefix."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Store:
    """The emulator's data; safe to share between request threads."""

    def __init__(self, data_dir: Path, *, stale_reads_seconds: float = 0.0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self.stale_reads_seconds = stale_reads_seconds
        self._pool: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- connections -----------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._open()
            with self._pool_lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            with self._pool_lock:
                self._pool.append(conn)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._pool_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._pool.clear()

    # -- namespaces ------------------------------------------------------

    def list_namespaces(
        self, account: str, order: str, descending: bool, limit: int, offset: int
    ) -> tuple[list[Namespace], int]:
        """One page of an account's namespaces and the account's total."""
        column = {"id": "id", "title": "title"}[order]
        direction = "DESC" if descending else "ASC"
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT pk, id, account, title FROM namespaces WHERE account = ? "
                f"ORDER BY {column} {direction}, id {direction} LIMIT ? OFFSET ?",
                (account, limit, offset),
            ).fetchall()
            (total,) = conn.execute(
                "SELECT count(*) FROM namespaces WHERE account = ?", (account,)
            ).fetchone()
        return [Namespace(*row) for row in rows], total

    def create_namespace(self, account: str, title: str) -> Namespace:
        namespace_id = uuid.uuid4().hex
        with self._transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO namespaces (id, account, title) VALUES (?, ?, ?)",
                    (namespace_id, account, title),
                )
            except sqlite3.IntegrityError:
                raise DuplicateTitle(title) from None
            return Namespace(cursor.lastrowid or 0, namespace_id, account, title)

    def get_namespace(self, account: str, namespace_id: str) -> Namespace | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT pk, id, account, title FROM namespaces "
                "WHERE id = ? AND account = ?",
                (namespace_id, account),
            ).fetchone()
        return Namespace(*row) if row else None

    def rename_namespace(self, namespace: Namespace, title: str) -> Namespace:
        with self._transaction() as conn:
            try:
                conn.execute(
                    "UPDATE namespaces SET title = ? WHERE pk = ?",
                    (title, namespace.pk),
                )
            except sqlite3.IntegrityError:
                raise DuplicateTitle(title) from None
        return Namespace(namespace.pk, namespace.id, namespace.account, title)

    def delete_namespace(self, namespace: Namespace) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM pairs WHERE ns = ?", (namespace.pk,))
            conn.execute("DELETE FROM namespaces WHERE pk = ?", (namespace.pk,))

    # -- pairs -----------------------------------------------------------

    def put(self, namespace: Namespace, writes: Sequence[Write], now: float) -> None:
        """Write pairs in one transaction; later writes of a key win."""
        with self._transaction() as conn:
            self._keep_previous(conn, namespace, [w.key for w in writes], now)
            conn.executemany(
                "INSERT INTO pairs (ns, key, expiration, metadata, value) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET "
                "expiration = excluded.expiration, metadata = excluded.metadata, "
                "value = excluded.value",
                [
                    (namespace.pk, w.key, w.expiration, w.metadata, w.value)
                    for w in writes
                ],
            )

    def delete(self, namespace: Namespace, keys: Sequence[bytes], now: float) -> None:
        """Delete pairs; deleting a missing key is not an error."""
        with self._transaction() as conn:
            self._keep_previous(conn, namespace, keys, now)
            conn.executemany(
                "DELETE FROM pairs WHERE ns = ? AND key = ?",
                [(namespace.pk, key) for key in keys],
            )

    def _keep_previous(
        self,
        conn: sqlite3.Connection,
        namespace: Namespace,
        keys: Sequence[bytes],
        now: float,
    ) -> None:
        """Copy the keys' current state into ``stale`` before they change."""
        if self.stale_reads_seconds <= 0:
            return
        until = now + self.stale_reads_seconds
        unique = list(dict.fromkeys(keys))
        conn.execute("DELETE FROM stale WHERE visible_until <= ?", (now,))
        conn.executemany(
            "INSERT OR REPLACE INTO stale (ns, key, visible_until, present) "
            "VALUES (?, ?, ?, 0)",
            [(namespace.pk, key, until) for key in unique],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO stale "
            "(ns, key, visible_until, present, expiration, metadata, value) "
            "SELECT ns, key, ?, 1, expiration, metadata, value FROM pairs "
            "WHERE ns = ? AND key = ?",
            [(until, namespace.pk, key) for key in unique],
        )

    def _source(self, now: float) -> tuple[str, tuple[float, ...]]:
        """Return the table expression that reads select from, and its parameters."""
        if self.stale_reads_seconds <= 0:
            return "pairs", ()
        return _VISIBLE_PAIRS, (now, now)

    def get(
        self, namespace: Namespace, key: bytes, now: float, *, with_value: bool = True
    ) -> Pair | None:
        """One live pair, or None when it is missing or expired."""
        column = "value" if with_value else "NULL"
        source, source_params = self._source(now)
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT key, {column}, expiration, metadata FROM {source} "
                f"WHERE ns = ? AND key = ? AND {_LIVE}",
                (*source_params, namespace.pk, key, int(now)),
            ).fetchone()
        return Pair(*row) if row else None

    def get_many(
        self, namespace: Namespace, keys: Sequence[bytes], now: float
    ) -> dict[bytes, Pair]:
        """The live pairs among keys (missing and expired ones are absent)."""
        found: dict[bytes, Pair] = {}
        unique = list(dict.fromkeys(keys))
        source, source_params = self._source(now)
        with self._connection() as conn:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, value, expiration, metadata FROM {source} "
                    f"WHERE ns = ? AND key IN ({marks}) AND {_LIVE}",
                    (*source_params, namespace.pk, *chunk, int(now)),
                )
                for row in rows:
                    found[row[0]] = Pair(*row)
        return found

    def list_keys(
        self,
        namespace: Namespace,
        now: float,
        *,
        prefix: bytes = b"",
        after: bytes | None = None,
        limit: int,
    ) -> list[Pair]:
        """Live keys in byte order, starting after ``after``; no values."""
        source, source_params = self._source(now)
        clauses = ["ns = ?", _LIVE]
        params: list[object] = [*source_params, namespace.pk, int(now)]
        if prefix:
            clauses.append("key >= ?")
            params.append(prefix)
            end = prefix_end(prefix)
            if end is not None:
                clauses.append("key < ?")
                params.append(end)
        if after is not None:
            clauses.append("key > ?")
            params.append(after)
        params.append(limit)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT key, NULL, expiration, metadata FROM {source} "
                f"WHERE {' AND '.join(clauses)} ORDER BY key LIMIT ?",
                params,
            ).fetchall()
        return [Pair(*row) for row in rows]
