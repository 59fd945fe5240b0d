"""Block decoding of parts: same records and errors as line-by-line decoding."""

from __future__ import annotations

import random

import msgspec
import pytest
import zstandard

from kvsnap.errors import CorruptPart
from kvsnap.format import (
    PartBuilder,
    PartInfo,
    Record,
    decode_record,
    iter_part_blocks,
    iter_part_records,
    sha256_hex,
)
from kvsnap.repository import check_part, decode_part


def _records(count: int, seed: int = 3) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for index in range(count):
        key = f"k/{index:06d}"
        if index % 50 == 0:
            out.append(Record.from_bytes(key, b"\xff" + rng.randbytes(40)))
        elif index % 7 == 0:
            out.append(Record(key, "é" * rng.randint(0, 300), metadata={"n": index}))
        else:
            text = rng.randbytes(rng.randint(0, 1500)).hex()
            out.append(Record(key, text, expiration=2e9))
    return out


def _part(records: list[Record]) -> tuple[PartInfo, bytes]:
    builder = PartBuilder()
    for record in records:
        builder.add(record)
    data = builder.finish()
    info = PartInfo(
        number=1,
        path="data/ns/2025-03-01/0123456789abcdef/000001.jsonl.zst",
        size=len(data),
        sha256=sha256_hex(data),
        records=builder.records,
        raw_size=builder.raw_size,
        first_key=records[0].key,
        last_key=records[-1].key,
    )
    return info, data


def _frame(lines: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(lines)


def test_blocks_hold_every_record_in_order() -> None:
    # About 4.5 MB of lines, so lines continue across decompressed chunks.
    records = _records(3000)
    _, data = _part(records)
    blocks = list(iter_part_blocks(data))
    assert len(blocks) > 1
    assert [r for block in blocks for r in block] == records
    assert list(iter_part_records(data)) == records


def test_check_part_totals_match_the_records() -> None:
    records = _records(3000)
    info, data = _part(records)
    totals = check_part(info, data)
    assert totals.records == len(records)
    assert totals.value_bytes == sum(len(r.value_bytes()) for r in records)
    assert decode_part(info, data) == records


def test_value_size_is_the_length_of_the_bytes() -> None:
    for record in _records(400):
        assert record.value_size() == len(record.value_bytes())


@pytest.mark.parametrize(
    "lines",
    [
        b'{"key":"a","value":"1"}\n\n{"key":"b","value":"2"}\n',
        b'{"key":"a","value":"1"} {"key":"b","value":"2"}\n',
        b'{"key":"a","value":"1"}\n{"key":"b"}\n',
    ],
    ids=["blank line", "two records on a line", "missing field"],
)
def test_lines_the_block_decoder_would_accept_still_fail(lines: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        list(iter_part_records(_frame(lines)))
    # The same line fails when decoded alone, as the format requires.
    bad = [line for line in lines.split(b"\n")[:-1] if not _decodes(line)]
    assert bad


def test_bad_line_is_numbered_after_the_good_ones() -> None:
    lines = b"".join(f'{{"key":"k{i:03d}","value":"v"}}\n'.encode() for i in range(10))
    lines += b'{"key":"k999"}\n'
    info = PartInfo(1, "p", 0, "", 11, len(lines), "k000", "k999")
    with pytest.raises(CorruptPart, match=r"^.*record 11 is not a valid record"):
        check_part(info, _frame(lines))


def test_truncated_and_trailing_bytes_fail() -> None:
    info, data = _part(_records(200))
    with pytest.raises(CorruptPart, match="invalid zstd data"):
        check_part(info, data[:-10])
    with pytest.raises(CorruptPart, match="invalid zstd data"):
        check_part(info, data + b"x")
    with pytest.raises(CorruptPart, match="invalid zstd data"):
        check_part(info, b"")


def test_key_order_across_parts_is_utf8() -> None:
    info, data = _part([Record("z", "1"), Record("é", "2")])
    # "é" (c3 a9) sorts after "z" (7a) by UTF-8 bytes.
    assert check_part(info, data).records == 2
    with pytest.raises(CorruptPart, match="previous part's key"):
        check_part(info, data, previous_key="zz")


def _decodes(line: bytes) -> bool:
    try:
        decode_record(line)
    except msgspec.DecodeError:
        return False
    return True


def test_invalid_base64_value_names_record() -> None:
    lines = b'{"key":"a","value":"YQ=="}\n{"key":"b","value":"@@@","base64":true}\n'
    info = PartInfo(1, "p", 0, "", 2, len(lines), "a", "b")
    with pytest.raises(CorruptPart, match=r"record 2 key 'b' has an invalid value"):
        check_part(info, _frame(lines))
    # Without value sizes, as a restore plan reads, the record decodes.
    assert [r.key for r in decode_part(info, _frame(lines))] == ["a", "b"]
