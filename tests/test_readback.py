"""Read-back after a write: comparisons, eventual consistency, no writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsnap.cloudflare import KvClient, _BulkEntry
from kvsnap.emulator import EmulatorServer
from kvsnap.errors import NamespaceNotFound
from kvsnap.format import Record
from kvsnap.readback import Mismatch, ReadBackResult, read_back
from tests.kvtools import create_namespace

# Endpoints a read-back may use; anything else would be a write.
READS = {"POST bulk/get", "GET values", "GET metadata"}


class FakeTime:
    """One clock for the emulator and read_back; sleeping advances it."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def stale_emulator(tmp_path: Path, fake_time: FakeTime) -> Iterator[EmulatorServer]:
    """An emulator whose reads lag 3 s (of the fake clock) behind writes."""
    with EmulatorServer(
        tmp_path / "stale", stale_reads_seconds=3, clock=fake_time.clock
    ) as server:
        yield server


def client_for(server: EmulatorServer) -> KvClient:
    return KvClient(
        api_token=server.token, account_id=server.account_id, base_url=server.base_url
    )


def run(server: EmulatorServer, action: Callable[[KvClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with client_for(server) as client:
            return await action(client)

    return asyncio.run(main())


def check(
    server: EmulatorServer,
    namespace_id: str,
    records: Iterable[Record],
    fake_time: FakeTime,
    window: float,
) -> ReadBackResult:
    server.reset_stats()
    result = run(
        server,
        lambda client: read_back(
            client,
            namespace_id,
            records,
            window_seconds=window,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        ),
    )
    assert set(server.stats()["requests"]) <= READS
    return result


def write(server: EmulatorServer, namespace_id: str, records: list[Record]) -> None:
    run(server, lambda client: client.bulk_write(namespace_id, records))


# -- eventual consistency ---------------------------------------------------


def test_readback_waits_for_stale_value(
    stale_emulator: EmulatorServer, fake_time: FakeTime
) -> None:
    namespace_id = create_namespace(stale_emulator, "cfg")
    write(stale_emulator, namespace_id, [Record("cfg/x", "old")])
    fake_time.now += 10
    new = [Record("cfg/x", "new")]
    write(stale_emulator, namespace_id, new)

    result = check(stale_emulator, namespace_id, new, fake_time, window=90)

    assert result.mismatched == []
    assert result.verified == 1
    assert fake_time.slept == [1.0, 2.0]  # "old" at 0 s and 1 s, "new" at 3 s
    assert result.rounds == 3
    assert result.seconds == 3.0


def test_readback_window_shorter_than_staleness(
    stale_emulator: EmulatorServer, fake_time: FakeTime
) -> None:
    namespace_id = create_namespace(stale_emulator, "cfg")
    write(stale_emulator, namespace_id, [Record("cfg/x", "old")])
    fake_time.now += 10
    new = [Record("cfg/x", "new")]
    write(stale_emulator, namespace_id, new)

    result = check(stale_emulator, namespace_id, new, fake_time, window=2.5)

    assert result.mismatched == [Mismatch("cfg/x", ("value",))]
    assert result.verified == 0
    assert fake_time.slept == [1.0, 1.5]  # the last read is at the window's end
    assert not result.ok


def test_readback_of_new_key_reports_missing(
    stale_emulator: EmulatorServer, fake_time: FakeTime
) -> None:
    namespace_id = create_namespace(stale_emulator, "fresh")
    records = [Record("brand/new", "v", metadata={"m": 1})]
    write(stale_emulator, namespace_id, records)

    early = check(stale_emulator, namespace_id, records, fake_time, window=1)
    late = check(stale_emulator, namespace_id, records, fake_time, window=10)

    assert early.mismatched == [Mismatch("brand/new", ("missing",))]
    assert late.verified == 1
    assert late.mismatched == []


# -- comparisons -------------------------------------------------------------------


@pytest.fixture
def written(emulator: EmulatorServer) -> tuple[str, list[Record]]:
    expires = int(time.time()) + 3600
    records = [
        Record("img/header", "iVBORw0KGgoAgP/+", True, metadata={"t": "png"}),
        Record("cfg/app", '{"hello":"world"}', metadata={"v": 2}),
        Record("ttl", "soon gone", expiration=expires),
        Record("odd", "\ufffd is a real character here"),
        Record("plain", "v"),
    ]
    namespace_id = create_namespace(emulator, "compare")
    write(emulator, namespace_id, records)
    return namespace_id, records


def test_readback_verifies_exact_state(
    emulator: EmulatorServer, written: tuple[str, list[Record]], fake_time: FakeTime
) -> None:
    namespace_id, records = written

    result = check(emulator, namespace_id, records, fake_time, window=0)

    assert result.verified == 5
    assert result.mismatched == []
    assert result.rounds == 1
    requests = emulator.stats()["requests"]
    assert requests["POST bulk/get"] == 1
    assert requests["GET values"] == 2  # the binary value and the U+FFFD one


def test_readback_names_differing_fields(
    emulator: EmulatorServer, written: tuple[str, list[Record]], fake_time: FakeTime
) -> None:
    namespace_id, records = written
    header, app, ttl, _, plain = records
    expected = [
        Record(header.key, "iVBORw0KGgoAgP//", True, metadata={"t": "png"}),
        Record(app.key, app.value, metadata={"v": True}),
        Record(ttl.key, ttl.value, expiration=ttl.expiration + 60),  # type: ignore[operator]
        Record(plain.key, plain.value, metadata={"added": 1}),
        Record("never/written", "v"),
    ]

    result = check(emulator, namespace_id, expected, fake_time, window=0)

    assert result.verified == 0
    assert result.mismatched == [
        Mismatch("img/header", ("value",)),
        Mismatch("cfg/app", ("metadata",)),
        Mismatch("ttl", ("expiration",)),
        Mismatch("plain", ("metadata",)),
        Mismatch("never/written", ("missing",)),
    ]
    assert fake_time.slept == []


def test_readback_when_bulk_get_rejects_binary(
    tmp_path: Path, fake_time: FakeTime
) -> None:
    with EmulatorServer(tmp_path / "reject", bulk_get_binary="reject") as server:
        namespace_id = create_namespace(server, "reject")
        records = [
            Record("bin", "//79", True, metadata={"m": [1]}),
            Record("text", "t", expiration=int(time.time()) + 3600),
        ]
        write(server, namespace_id, records)

        result = check(server, namespace_id, records, fake_time, window=0)

        assert result.verified == 2
        assert result.mismatched == []
        requests = server.stats()["requests"]
        assert requests == {"POST bulk/get": 1, "GET values": 2, "GET metadata": 2}


def test_readback_in_batches_of_100(
    emulator: EmulatorServer, fake_time: FakeTime
) -> None:
    namespace_id = create_namespace(emulator, "many")
    records = [Record(f"k{i:03d}", f"v{i}") for i in range(250)]
    write(emulator, namespace_id, records)

    result = check(emulator, namespace_id, iter(records), fake_time, window=0)

    assert result.verified == 250
    assert emulator.stats()["requests"] == {"POST bulk/get": 3}


# -- concurrent batches ------------------------------------------------------------


class RecordingClient:
    """A stand-in KvClient whose bulk gets count how many run at once.

    `stored` contains the values it serves; batch number `n` (in call order)
    waits `delays[n]` event-loop turns, so later batches can finish first.
    """

    def __init__(
        self, stored: dict[str, str], concurrency: int, delays: list[int]
    ) -> None:
        self.stored = stored
        self.concurrency = concurrency
        self.delays = delays
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def bulk_get_text(self, namespace_id: str, names: list[str]) -> Any:
        turns = self.delays[self.calls % len(self.delays)]
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(turns):
                await asyncio.sleep(0)
            return {
                name: _BulkEntry(value=self.stored[name])
                for name in names
                if name in self.stored
            }
        finally:
            self.in_flight -= 1


def test_readback_batches_run_concurrently_in_order(fake_time: FakeTime) -> None:
    records = [Record(f"k{i:04d}", f"v{i}") for i in range(1000)]
    stored = {record.key: record.value for record in records}
    # One key of every batch differs, one is missing.
    for batch in range(10):
        stored[f"k{batch * 100 + 7:04d}"] = "changed"
        del stored[f"k{batch * 100 + 42:04d}"]
    # The first batches are the slowest, so batches finish out of order.
    client = RecordingClient(stored, concurrency=4, delays=[9, 7, 5, 3, 1])

    result = asyncio.run(
        read_back(
            client,  # type: ignore[arg-type]
            "ns",
            iter(records),
            window_seconds=0,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        )
    )

    assert client.calls == 10
    assert client.max_in_flight == 4  # never more than the client's concurrency
    assert result.verified == 980
    expected = []
    for batch in range(10):
        expected.append(Mismatch(f"k{batch * 100 + 7:04d}", ("value",)))
        expected.append(Mismatch(f"k{batch * 100 + 42:04d}", ("missing",)))
    assert result.mismatched == expected  # the input order, not the finishing order


def test_readback_rereads_run_concurrently(fake_time: FakeTime) -> None:
    records = [Record(f"k{i:04d}", "v") for i in range(600)]
    client = RecordingClient({}, concurrency=3, delays=[2])

    result = asyncio.run(
        read_back(
            client,  # type: ignore[arg-type]
            "ns",
            records,
            window_seconds=1.0,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        )
    )

    assert result.rounds == 2
    assert client.calls == 12  # 6 batches, read twice
    assert client.max_in_flight == 3
    assert [m.key for m in result.mismatched] == [r.key for r in records]


def test_readback_failed_batch_stops_the_others(fake_time: FakeTime) -> None:
    class FailingClient(RecordingClient):
        async def bulk_get_text(self, namespace_id: str, names: list[str]) -> Any:
            if self.calls == 2:
                self.calls += 1
                raise NamespaceNotFound("namespace ns is gone")
            return await super().bulk_get_text(namespace_id, names)

    records = [Record(f"k{i:04d}", "v") for i in range(1000)]
    client = FailingClient({}, concurrency=4, delays=[50])

    with pytest.raises(NamespaceNotFound):
        asyncio.run(read_back(client, "ns", records, window_seconds=0))  # type: ignore[arg-type]

    assert client.in_flight == 0  # the other batches were cancelled
    assert client.calls < 10


def test_readback_bulk_gets_overlap_against_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With API latency, several bulk gets of one read-back are in flight at once."""
    in_flight = 0
    max_in_flight = 0
    real_bulk_get = KvClient.bulk_get_text

    async def counting_bulk_get(
        self: KvClient, namespace_id: str, names: list[str]
    ) -> Any:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        try:
            return await real_bulk_get(self, namespace_id, names)
        finally:
            in_flight -= 1

    monkeypatch.setattr(KvClient, "bulk_get_text", counting_bulk_get)
    with EmulatorServer(tmp_path / "slow", latency_ms=(40.0, 40.0), seed=3) as server:
        namespace_id = create_namespace(server, "slow")
        records = [Record(f"k{i:04d}", f"v{i}") for i in range(800)]
        write(server, namespace_id, records)
        server.reset_stats()

        async def main() -> ReadBackResult:
            async with KvClient(
                api_token=server.token,
                account_id=server.account_id,
                base_url=server.base_url,
                concurrency=4,
            ) as client:
                return await read_back(
                    client, namespace_id, iter(records), window_seconds=0
                )

        result = asyncio.run(main())

        assert server.stats()["requests"] == {"POST bulk/get": 8}
    assert result.verified == 800
    assert result.mismatched == []
    assert max_in_flight == 4  # the client's concurrency, not one at a time
