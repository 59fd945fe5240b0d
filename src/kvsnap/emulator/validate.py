"""Cloudflare's KV limits, enforced on every write and read.

Each check raises `ApiError` with the status and code listed in the package
docstring. The numbers come from `kvsnap.limits`.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from kvsnap.emulator.responses import (
    CODE_BAD_EXPIRATION,
    CODE_BAD_EXPIRATION_TTL,
    CODE_BAD_KEY,
    CODE_BAD_METADATA,
    CODE_KEY_TOO_LONG,
    CODE_METADATA_TOO_LARGE,
    CODE_VALUE_TOO_LARGE,
    ApiError,
)
from kvsnap.limits import (
    MAX_KEY_BYTES,
    MAX_METADATA_BYTES,
    MAX_VALUE_BYTES,
    MIN_EXPIRATION_SECONDS,
    RESERVED_KEYS,
)


def key_bytes(name: Any) -> bytes:
    """Check a key name and return its UTF-8 bytes (how the store keeps it)."""
    if not isinstance(name, str):
        raise ApiError(400, CODE_BAD_KEY, "key name must be a string")
    if name == "":
        raise ApiError(400, CODE_BAD_KEY, "key name cannot be empty")
    if name in RESERVED_KEYS:
        raise ApiError(400, CODE_BAD_KEY, f'key name "{name}" is not allowed')
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, CODE_BAD_KEY, "key name is not valid UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise ApiError(
            414,
            CODE_KEY_TOO_LONG,
            f"UTF-8 encoded length of {len(encoded)} exceeds key length limit "
            f"of {MAX_KEY_BYTES}",
        )
    return encoded


def key_from_path(raw: bytes) -> bytes:
    """Check a percent-decoded key taken from a URL path; it must be UTF-8."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, CODE_BAD_KEY, "key name is not valid UTF-8") from None
    return key_bytes(name)


def value_size(value: bytes, key: str | None = None) -> None:
    if len(value) > MAX_VALUE_BYTES:
        where = f" of key {key!r}" if key is not None else ""
        raise ApiError(
            413,
            CODE_VALUE_TOO_LARGE,
            f"value{where} is {len(value)} bytes, over the limit of "
            f"{MAX_VALUE_BYTES} bytes",
        )


def metadata_text(metadata: Any) -> str | None:
    """Serialize parsed metadata compactly and check its size; None stays None.

    The size is measured on the compact UTF-8 JSON form, as JavaScript's
    ``JSON.stringify`` would write it, so whitespace a client adds does not
    count against the 1,024-byte limit.
    """
    if metadata is None:
        return None
    encoded = msgspec.json.encode(metadata)
    if len(encoded) > MAX_METADATA_BYTES:
        raise ApiError(
            413,
            CODE_METADATA_TOO_LARGE,
            f"metadata is {len(encoded)} bytes serialized, over the limit of "
            f"{MAX_METADATA_BYTES} bytes",
        )
    return encoded.decode("utf-8")


def metadata_from_text(text: bytes) -> str | None:
    """Parse metadata sent as JSON text (a multipart part) and check it."""
    try:
        parsed = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise ApiError(400, CODE_BAD_METADATA, "metadata is not valid JSON") from None
    return metadata_text(parsed)


def _number(value: Any, name: str, code: int) -> float:
    if isinstance(value, bool):
        raise ApiError(400, code, f"Invalid {name} of {value!r}: not a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ApiError(
                400, code, f"Invalid {name} of {value!r}: not a number"
            ) from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, code, f"Invalid {name} of {value!r}: not a number")
    return float(value)


def expiration(absolute: Any, ttl: Any, now: float) -> int | None:
    """Resolve ``expiration``/``expiration_ttl`` to epoch seconds, or None.

    ``expiration_ttl`` wins when both are given (Cloudflare documents this);
    either must land at least 60 seconds after ``now``.
    """
    if ttl is not None:
        seconds = _number(ttl, "expiration_ttl", CODE_BAD_EXPIRATION_TTL)
        if seconds < MIN_EXPIRATION_SECONDS:
            raise ApiError(
                400,
                CODE_BAD_EXPIRATION_TTL,
                f"Invalid expiration_ttl of {ttl}. Expiration TTL must be at "
                f"least {MIN_EXPIRATION_SECONDS}.",
            )
        return int(now) + int(seconds)
    if absolute is not None:
        when = _number(absolute, "expiration", CODE_BAD_EXPIRATION)
        if when < now + MIN_EXPIRATION_SECONDS:
            raise ApiError(
                400,
                CODE_BAD_EXPIRATION,
                f"Invalid expiration of {absolute}. Expiration times must be at "
                f"least {MIN_EXPIRATION_SECONDS} seconds in the future.",
            )
        return int(when)
    return None
