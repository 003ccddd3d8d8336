"""JSON-RPC 2.0 framing as Deribit speaks it (docs/deribit-protocol.md §2), free of I/O.

Both ends use this module: the collector encodes requests and decodes what arrives, the simulator
decodes requests and encodes responses and notifications. Responses carry Deribit's extras
``usIn``, ``usOut``, ``usDiff`` and ``testnet``; notifications carry none of them.
:func:`parse_message` is the one reader of a frame from the exchange (the collector's connection
and the simulator's capture replay); a ``subscription`` notification is written as
:func:`subscription_prefix`, its ``data``, then :data:`SUBSCRIPTION_SUFFIX`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from optionfeed.deribit.errors import ErrorCode, ProtocolError, RpcError, error_message

JSONRPC = "2.0"
MAX_FRAME_BYTES = 32 * 1024  # frames above this get -32600 "request entity too large"
MAX_CHANNELS_PER_SUBSCRIBE = 500

RequestId = int | str


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    id: RequestId | None
    result: Any
    error: RpcError | None
    us_in: int | None = None
    us_out: int | None = None


@dataclass(slots=True)  # not frozen: one is built per market-data frame, and frozen costs more
class Subscription:
    """A ``subscription`` notification: market data on one channel."""

    channel: str
    data: Any


@dataclass(frozen=True, slots=True)
class Notification:
    """Any other server push, such as ``heartbeat`` (``params.type``)."""

    method: str
    params: dict[str, Any]


Frame = Response | Subscription | Notification


def loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}", raw) from None


def why_unparsable(raw: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    """Why ``raw`` did not parse, as (label, detail): ``not_utf8`` or ``not_json``.

    orjson reports any invalid UTF-8 as "surrogates not allowed" at position 0, so the bytes are
    decoded here (only on this failure path) to say what and where.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        byte = raw[bad.start]
        return "not_utf8", f"not UTF-8: {bad.reason} at position {bad.start} (byte 0x{byte:02x})"
    return "not_json", f"not JSON: {exc.msg} at position {exc.pos}"


def subscription_problem(params: Any) -> str:
    """What a ``subscription`` notification lacks, given its ``params``."""
    prefix = "not a JSON-RPC notification"
    if type(params) is not dict:
        return f"{prefix}: params is {type(params).__name__}, not an object"
    if "channel" not in params:
        return f"{prefix}: no params.channel"
    if type(params["channel"]) is not str:
        return f"{prefix}: params.channel is {type(params['channel']).__name__}, not a string"
    return f"{prefix}: no params.data"


def encode_request(
    request_id: RequestId, method: str, params: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {"jsonrpc": JSONRPC, "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)


def parse_message(msg: Any, raw: str | bytes) -> Frame:
    """What one decoded frame from the exchange is; raise :class:`ProtocolError` if malformed.

    ``msg`` is ``raw`` already parsed from JSON. A ``subscription`` must carry ``params`` with a
    string ``channel`` and a ``data`` member; its error says which is missing.
    """
    if type(msg) is dict:
        method = msg.get("method")
        if method == "subscription":
            params = msg.get("params")
            if type(params) is dict and type(params.get("channel")) is str and "data" in params:
                return Subscription(params["channel"], params["data"])
            raise ProtocolError(subscription_problem(params), raw)
    else:
        raise ProtocolError("not a JSON-RPC frame: not a JSON object", raw)
    if method is not None:
        params = msg.get("params")
        if not isinstance(method, str) or not isinstance(params, dict):
            raise ProtocolError(
                "not a JSON-RPC frame: a notification without a method name and params object", raw
            )
        return Notification(method, params)
    if "id" not in msg and "result" not in msg and "error" not in msg:
        raise ProtocolError("not a JSON-RPC frame: neither a response nor a notification", raw)
    # REST answers carry no id (real captures); WebSocket answers echo the request's.
    error = msg.get("error")
    if error is not None:
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise ProtocolError("not a JSON-RPC frame: an error without an integer code", raw)
        rpc_error = RpcError(error["code"], str(error.get("message", "")), error.get("data"))
        return Response(msg.get("id"), None, rpc_error, msg.get("usIn"), msg.get("usOut"))
    if "result" not in msg:
        raise ProtocolError("not a JSON-RPC frame: a response with neither result nor error", raw)
    return Response(msg.get("id"), msg["result"], None, msg.get("usIn"), msg.get("usOut"))


def decode_frame(raw: str | bytes) -> Frame:
    """Decode one frame the exchange sent; raise :class:`ProtocolError` when it is malformed."""
    return parse_message(loads(raw), raw)


def decode_request(raw: str | bytes) -> Request:
    """Decode a client's request; raise :class:`RpcError` with the code Deribit would answer."""
    if len(raw) > MAX_FRAME_BYTES:
        raise RpcError(ErrorCode.REQUEST_ENTITY_TOO_LARGE, error_message(-32600))
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RpcError(ErrorCode.PARSE_ERROR, error_message(-32700)) from None
    if not isinstance(msg, dict):
        # Batches and bare values are not supported.
        raise RpcError(ErrorCode.BAD_REQUEST, error_message(11050))
    method, params = msg.get("method"), msg.get("params", {})
    request_id = msg.get("id")
    if not isinstance(method, str) or not isinstance(request_id, int | str):
        raise RpcError(ErrorCode.BAD_REQUEST, error_message(11050))
    if not isinstance(params, dict):
        raise RpcError(
            ErrorCode.INVALID_PARAMS,
            error_message(-32602),
            {"reason": "params must be an object", "param": "params"},
        )
    return Request(request_id, method, params)


def request_id_of(raw: str | bytes) -> RequestId | None:
    """Best effort: the ``id`` of a request that failed to decode, so the error can echo it."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(msg, dict) and isinstance(msg.get("id"), int | str):
        return msg["id"]  # type: ignore[no-any-return]
    return None


def encode_result(
    request_id: RequestId | None, result: Any, *, us_in: int, us_out: int, testnet: bool = False
) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": JSONRPC,
            "id": request_id,
            "result": result,
            "usIn": us_in,
            "usOut": us_out,
            "usDiff": us_out - us_in,
            "testnet": testnet,
        }
    )


def encode_error(
    request_id: RequestId | None,
    error: RpcError,
    *,
    us_in: int,
    us_out: int,
    testnet: bool = False,
) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return orjson.dumps(
        {
            "jsonrpc": JSONRPC,
            "id": request_id,
            "error": body,
            "usIn": us_in,
            "usOut": us_out,
            "usDiff": us_out - us_in,
            "testnet": testnet,
        }
    )


def subscription_prefix(channel: str) -> bytes:
    """Everything of a ``subscription`` notification before its ``data`` value."""
    return (
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":'
        + orjson.dumps(channel)
        + b',"data":'
    )


SUBSCRIPTION_SUFFIX = b"}}"
"""Everything of a ``subscription`` notification after its ``data`` value."""


def subscription_data_json(raw: bytes, channel: str) -> bytes | None:
    """The ``data`` text of a notification on ``channel`` laid out as this module encodes it,
    byte for byte; None for any other layout (other spacing or member order)."""
    prefix = subscription_prefix(channel)
    if raw.startswith(prefix) and raw.endswith(SUBSCRIPTION_SUFFIX):
        return raw[len(prefix) : -len(SUBSCRIPTION_SUFFIX)]
    return None


TEST_REQUEST = orjson.dumps(
    {"jsonrpc": JSONRPC, "method": "heartbeat", "params": {"type": "test_request"}}
)
