"""WebSocket frames from server to client, built once and written as bytes (RFC 6455 §5.2).

Server frames are never masked, so one notification's frame is the same bytes for every
subscriber: the publisher builds it once and appends it to each connection's outbox. aiohttp
still performs the handshake, reads the client's frames and answers pings; everything the
simulator sends goes through these helpers so that responses and notifications keep one order.
"""

from __future__ import annotations

import struct

from optionfeed.deribit.jsonrpc import SUBSCRIPTION_SUFFIX

OP_TEXT = 0x1
OP_CLOSE = 0x8
_FIN = 0x80
_TEXT_HEADER_SHORT = bytes((_FIN | OP_TEXT,))
_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame around ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return _TEXT_HEADER_SHORT + bytes((n,)) + payload
    if n < 65536:
        return _U16.pack(_FIN | OP_TEXT, 126, n) + payload
    return _U64.pack(_FIN | OP_TEXT, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a short reason (at most 123 bytes)."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return bytes((_FIN | OP_CLOSE, len(body))) + body


# Text frame headers by payload length, for every length below 64 KiB (built once, ~3 MB).
_HEADERS: list[bytes] = [_TEXT_HEADER_SHORT + bytes((n,)) for n in range(126)]


def text_header(n: int) -> bytes:
    """The header of an unmasked text frame whose payload is ``n`` bytes."""
    if n < 65536:
        if len(_HEADERS) == 126:
            _HEADERS.extend(_U16.pack(_FIN | OP_TEXT, 126, k) for k in range(126, 65536))
        return _HEADERS[n]
    return _U64.pack(_FIN | OP_TEXT, 127, n)


def notification_frame(prefix: bytes, data: bytes) -> bytes:
    """The frame of a notification: ``prefix`` (:func:`jsonrpc.subscription_prefix`), ``data``."""
    header = text_header(len(prefix) + len(data) + len(SUBSCRIPTION_SUFFIX))
    return b"".join((header, prefix, data, SUBSCRIPTION_SUFFIX))
