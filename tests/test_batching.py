"""Cutting records into bulk-write batches: limits, escaping, expirations."""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterator

import pytest

from kvsnap import limits
from kvsnap.batching import (
    BatchCounts,
    NearExpiry,
    WriteBatch,
    body_size,
    classify_expiration,
    encode_items,
    iter_batches,
    iter_key_chunks,
    record_item,
    validate_record,
)
from kvsnap.errors import InvalidRecord
from kvsnap.format import Record

NOW = 1_800_000_000.0
MIB = 1024 * 1024


def exact_body(batch: WriteBatch) -> bytes:
    return encode_items([record_item(record) for record in batch.records])


def binary_record(key: str, size: int) -> Record:
    return Record(key, base64.b64encode(os.urandom(size)).decode("ascii"), True)


# -- count and size limits ------------------------------------------------


def test_batches_12000_small_pairs_by_count() -> None:
    records = (Record(f"k{i:05d}", f"v{i}") for i in range(12_000))

    batches = list(iter_batches(records, now=NOW))

    assert [len(batch) for batch in batches] == [10_000, 2_000]
    keys = [record.key for batch in batches for record in batch.records]
    assert keys == [f"k{i:05d}" for i in range(12_000)]


def test_batches_60_binary_2mib_values_by_size() -> None:
    records = [binary_record(f"img/{i:02d}", 2 * MIB) for i in range(60)]

    batches = list(iter_batches(records, now=NOW))

    assert len(batches) == 2
    for batch in batches:
        body = exact_body(batch)
        assert len(body) == batch.body_bytes
        assert batch.body_bytes <= limits.BULK_WRITE_MAX_BYTES
    sent = [record for batch in batches for record in batch.records]
    assert sent == records  # each pair once, in order, none lost at the edge
    # The first batch is full: one more item would have crossed the limit.
    next_item = len(encode_items(record_item(batches[1].records[0])))
    assert batches[0].body_bytes + 1 + next_item > limits.BULK_WRITE_MAX_BYTES


def test_size_is_measured_after_json_escaping() -> None:
    # Each control character takes 6 bytes in JSON (\u0001), so ten values of
    # 6,000,000 characters are 60 MB as text but 360 MB as a request body.
    value = "\x01" * 6_000_000
    records = [Record(f"ctl/{i}", value) for i in range(10)]

    batches = list(iter_batches(records, now=NOW))

    assert [len(batch) for batch in batches] == [2, 2, 2, 2, 2]
    for batch in batches:
        assert len(exact_body(batch)) == batch.body_bytes
        assert batch.body_bytes <= limits.BULK_WRITE_MAX_BYTES
        assert batch.body_bytes > 6 * 6_000_000 * 2


def test_size_counts_quotes_backslashes_and_non_ascii() -> None:
    records = [
        Record("q", '"quoted" \\ back\\slash'),
        Record("c", "tab\tnew\nline\x00\x1f"),
        Record("u", "caf\u00e9 \U0001f600"),
        Record("m", "x", metadata={"a": "\u00e9\n"}, expiration=NOW + 3600.5),
        Record("b", "AAEC", True),
    ]

    [batch] = iter_batches(records, now=NOW)

    assert batch.body_bytes == len(exact_body(batch))
    assert batch.body_bytes == body_size(records)
    raw_text = sum(len(record.value.encode("utf-8")) for record in records)
    assert batch.body_bytes > raw_text


def test_batch_edge_with_a_small_byte_limit() -> None:
    records = [Record(f"k{i}", '"' * 10) for i in range(7)]
    item = len(encode_items(record_item(records[0])))
    # Room for exactly three items: brackets, three items, two commas.
    limit = 2 + 3 * item + 2

    batches = list(iter_batches(records, now=NOW, max_bytes=limit))

    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert [batch.body_bytes for batch in batches] == [limit, limit, 2 + item]
    assert [r for batch in batches for r in batch.records] == records


def test_item_maps_record_fields_one_to_one() -> None:
    binary = Record("img/header", "iVBORw0KGgoAgP/+", True)
    text = Record("cfg/app", '{"hello":"world"}', metadata={"v": 2})
    plain = Record("plain", "v", expiration=NOW + 3600)

    assert record_item(binary) == {
        "key": "img/header",
        "value": "iVBORw0KGgoAgP/+",
        "base64": True,
    }
    assert record_item(text) == {
        "key": "cfg/app",
        "value": '{"hello":"world"}',
        "metadata": {"v": 2},
    }
    assert record_item(plain) == {
        "key": "plain",
        "value": "v",
        "expiration": NOW + 3600,
    }


# -- laziness ---------------------------------------------------------------


def test_batches_are_produced_lazily() -> None:
    shared = base64.b64encode(os.urandom(200 * 1024)).decode("ascii")
    pulled = 0

    def records() -> Iterator[Record]:
        nonlocal pulled
        for i in range(5_000):
            pulled += 1
            yield Record(f"blob/{i:04d}", shared, True)

    batches = iter_batches(records(), now=NOW)
    first = next(batches)

    assert len(first) < 400
    assert pulled == len(first) + 1  # the record that did not fit, no more
    assert first.body_bytes <= limits.BULK_WRITE_MAX_BYTES

    total, largest = len(first), len(first)
    for batch in batches:
        assert batch.body_bytes <= limits.BULK_WRITE_MAX_BYTES
        assert pulled - total <= len(batch) + 1
        total += len(batch)
        largest = max(largest, len(batch))
    assert total == 5_000
    assert largest < 400


# -- record limits ------------------------------------------------------------


@pytest.mark.parametrize("size", [26_214_400, 25_000_001])
def test_value_at_or_under_25_mib_is_valid(size: int) -> None:
    assert validate_record(Record("big", "a" * size), NOW) is None


def test_value_over_25_mib_is_invalid() -> None:
    record = Record("too/big", "a" * 26_214_401)

    reason = validate_record(record, NOW)

    assert reason is not None
    assert "26,214,401" in reason
    with pytest.raises(InvalidRecord) as caught:
        list(iter_batches([Record("ok", "v"), record], now=NOW))
    assert caught.value.key == "too/big"
    assert "'too/big'" in str(caught.value)
    assert caught.value.exit_code == 4


def test_binary_value_limit_counts_decoded_bytes() -> None:
    at_limit = Record("b", base64.b64encode(b"\0" * 26_214_400).decode(), True)
    over = Record("b", base64.b64encode(b"\0" * 26_214_401).decode(), True)

    assert validate_record(at_limit, NOW) is None
    assert validate_record(over, NOW) is not None


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (Record("k" * 513, "v"), "513 UTF-8 bytes"),
        (Record("\u00e9" * 257, "v"), "514 UTF-8 bytes"),
        (Record("", "v"), "empty"),
        (Record("..", "v"), "reserved"),
        (Record("m", "v", metadata={"x": "y" * 1020}), "metadata is 1,028 bytes"),
        (Record("b64", "not base64!", True), "not valid base64"),
        (Record("nan", "v", expiration=math.nan), "not a finite number"),
    ],
)
def test_invalid_records_name_the_problem(record: Record, words: str) -> None:
    reason = validate_record(record, NOW)
    assert reason is not None
    assert words in reason


def test_limits_themselves_are_valid() -> None:
    assert validate_record(Record("k" * 512, "v"), NOW) is None
    assert validate_record(Record("m", "v", metadata={"x": "y" * 1016}), NOW) is None


def test_record_over_request_size_fails() -> None:
    # 20,000,000 control characters are valid (20 MB) but 120 MB as JSON.
    record = Record("ctl/huge", "\x02" * 20_000_000)
    assert validate_record(record, NOW) is None

    with pytest.raises(InvalidRecord) as caught:
        list(iter_batches([record], now=NOW))

    assert caught.value.key == "ctl/huge"
    assert "100,000,000" in str(caught.value)


# -- expirations ---------------------------------------------------------------


def test_classify_expiration() -> None:
    assert classify_expiration(Record("a", "v", expiration=NOW - 3600), NOW) == (
        "expired"
    )
    assert classify_expiration(Record("b", "v", expiration=NOW + 30), NOW) == (
        "expiring"
    )
    assert classify_expiration(Record("c", "v"), NOW) == "ok"
    assert classify_expiration(Record("d", "v", expiration=NOW + 3600), NOW) == "ok"
    assert classify_expiration(Record("e", "v", expiration=NOW), NOW) == "expired"


def test_expired_and_expiring_are_skipped_and_counted() -> None:
    records = [
        Record("expired", "v", expiration=NOW - 3600),
        Record("soon", "v", expiration=NOW + 30),
        Record("normal", "v"),
    ]
    counts = BatchCounts()

    batches = list(iter_batches(records, now=NOW, counts=counts))

    assert [r.key for batch in batches for r in batch.records] == ["normal"]
    assert counts == BatchCounts(
        records=3, written=1, expired=1, expiring_skipped=1, expiring_extended=0
    )


def test_expiring_can_be_extended() -> None:
    records = [
        Record("expired", "v", expiration=NOW - 3600),
        Record("soon", "v", metadata={"m": 1}, expiration=NOW + 30),
        Record("normal", "v"),
    ]
    counts = BatchCounts()

    [batch] = iter_batches(
        records, now=NOW + 0.25, near_expiry=NearExpiry.EXTEND, counts=counts
    )

    soon, normal = batch.records
    assert soon.key == "soon"
    assert soon.metadata == {"m": 1}
    assert soon.expiration == NOW + 1 + limits.NEAR_EXPIRY_SECONDS
    assert classify_expiration(soon, NOW + 0.25) == "ok"
    assert normal == records[2]
    assert counts.expired == 1
    assert counts.expiring_extended == 1


def test_key_chunks() -> None:
    chunks = list(iter_key_chunks((f"k{i}" for i in range(25)), 10))
    assert [len(chunk) for chunk in chunks] == [10, 10, 5]
    assert [key for chunk in chunks for key in chunk] == [f"k{i}" for i in range(25)]
