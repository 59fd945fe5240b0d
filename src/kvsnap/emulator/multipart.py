"""A small multipart/form-data reader for the write-value endpoint.

The standard library's parsers either decode text parts or copy the body
several times; a value of 25 MiB must come back byte for byte, so this reader
slices the body once per part and leaves the bytes alone.
"""

from __future__ import annotations

from email.message import Message

from kvsnap.emulator.responses import CODE_BAD_BODY, ApiError


def boundary_of(content_type: str) -> bytes:
    message = Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, CODE_BAD_BODY, "multipart body without a boundary")
    return boundary.encode("latin-1")


def _part_name(headers: bytes) -> str | None:
    for line in headers.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            message = Message()
            message["Content-Disposition"] = value.strip()
            found = message.get_param("name", header="content-disposition")
            return found if isinstance(found, str) else None
    return None


def parse(body: bytes, content_type: str) -> dict[str, bytes]:
    """Map each part's name to its raw content (the first part of a name wins)."""
    delimiter = b"--" + boundary_of(content_type)
    parts: dict[str, bytes] = {}
    start = body.find(delimiter)
    if start < 0:
        raise ApiError(400, CODE_BAD_BODY, "multipart body has no parts")
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # the closing delimiter
        header_start = body.find(b"\r\n", position)
        if header_start < 0:
            break
        header_end = body.find(b"\r\n\r\n", header_start)
        if header_end < 0:
            break
        content_start = header_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            break
        name = _part_name(body[header_start + 2 : header_end])
        if name is not None and name not in parts:
            parts[name] = body[content_start:content_end]
        position = content_end + 2 + len(delimiter)
    raise ApiError(400, CODE_BAD_BODY, "multipart body is truncated or malformed")
