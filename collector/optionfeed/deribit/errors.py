"""Errors at the Deribit boundary.

::

    DeribitError
    ├── RpcError            the exchange answered with a JSON-RPC error object
    ├── ProtocolError       a frame we cannot make sense of (not JSON, wrong shape, wrong types)
    └── ExchangeUnreachable the exchange could not be reached or the connection was lost

``RpcError.transient`` says whether retrying later can succeed (docs/deribit-protocol.md §9);
callers retry only those, with backoff, and treat the rest as permanent.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Deribit error codes a market-data client or the simulator meets (protocol doc §9)."""

    TOO_MANY_REQUESTS = 10028
    RETRY = 10040
    SETTLEMENT_IN_PROGRESS = 10041
    MATCHING_ENGINE_QUEUE_FULL = 10047
    TOO_MANY_CONCURRENT_REQUESTS = 10066
    INVALID_OR_UNSUPPORTED_INSTRUMENT = 10020
    MUST_BE_WEBSOCKET_REQUEST = 10030
    INVALID_ARGUMENTS = 11029
    BAD_ARGUMENT = 11043
    BAD_ARGUMENTS = 11049
    BAD_REQUEST = 11050
    SYSTEM_MAINTENANCE = 11051
    SUBSCRIBE_ERROR_UNSUBSCRIBED = 11052
    UNAUTHENTICATED_PUBLIC_REQUESTS_TEMPORARILY_DISABLED = 11056
    INTERNAL_SERVER_ERROR = 11094
    INVALID_CREDENTIALS = 13004
    UNAUTHORIZED = 13009
    NOT_FOUND = 13020
    METHOD_SWITCHED_OFF_BY_ADMIN = 13025
    TEMPORARILY_UNAVAILABLE = 13028
    UNAVAILABLE = 13503
    RAW_SUBSCRIPTIONS_NOT_AVAILABLE_FOR_UNAUTHORIZED = 13778
    TIMED_OUT = 13888
    REQUEST_ENTITY_TOO_LARGE = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    PARSE_ERROR = -32700
    MISSING_PARAMS = -32000


# The wire message for each code, as Deribit spells it.
ERROR_MESSAGES: dict[int, str] = {
    ErrorCode.TOO_MANY_REQUESTS: "too_many_requests",
    ErrorCode.RETRY: "retry",
    ErrorCode.SETTLEMENT_IN_PROGRESS: "settlement_in_progress",
    ErrorCode.MATCHING_ENGINE_QUEUE_FULL: "matching_engine_queue_full",
    ErrorCode.TOO_MANY_CONCURRENT_REQUESTS: "too_many_concurrent_requests",
    ErrorCode.INVALID_OR_UNSUPPORTED_INSTRUMENT: "invalid_or_unsupported_instrument",
    ErrorCode.MUST_BE_WEBSOCKET_REQUEST: "must_be_websocket_request",
    ErrorCode.INVALID_ARGUMENTS: "invalid_arguments",
    ErrorCode.BAD_ARGUMENT: "bad_argument",
    ErrorCode.BAD_ARGUMENTS: "bad_arguments",
    ErrorCode.BAD_REQUEST: "bad_request",
    ErrorCode.SYSTEM_MAINTENANCE: "system_maintenance",
    ErrorCode.SUBSCRIBE_ERROR_UNSUBSCRIBED: "subscribe_error_unsubscribed",
    ErrorCode.UNAUTHENTICATED_PUBLIC_REQUESTS_TEMPORARILY_DISABLED: (
        "unauthenticated_public_requests_temporarily_disabled"
    ),
    ErrorCode.INTERNAL_SERVER_ERROR: "internal_server_error",
    ErrorCode.INVALID_CREDENTIALS: "invalid_credentials",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.NOT_FOUND: "not_found",
    ErrorCode.METHOD_SWITCHED_OFF_BY_ADMIN: "method_switched_off_by_admin",
    ErrorCode.TEMPORARILY_UNAVAILABLE: "temporarily_unavailable",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.RAW_SUBSCRIPTIONS_NOT_AVAILABLE_FOR_UNAUTHORIZED: (
        "raw_subscriptions_not_available_for_unauthorized"
    ),
    ErrorCode.TIMED_OUT: "timed_out",
    ErrorCode.REQUEST_ENTITY_TOO_LARGE: "request entity too large",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.MISSING_PARAMS: "Missing params",
}

# Codes where a later retry can succeed. 10028 also ends the session: reconnect after backoff.
TRANSIENT_CODES: frozenset[int] = frozenset(
    {
        ErrorCode.TOO_MANY_REQUESTS,
        ErrorCode.RETRY,
        ErrorCode.SETTLEMENT_IN_PROGRESS,
        ErrorCode.MATCHING_ENGINE_QUEUE_FULL,
        ErrorCode.TOO_MANY_CONCURRENT_REQUESTS,
        ErrorCode.SYSTEM_MAINTENANCE,
        ErrorCode.UNAUTHENTICATED_PUBLIC_REQUESTS_TEMPORARILY_DISABLED,
        ErrorCode.INTERNAL_SERVER_ERROR,
        ErrorCode.TEMPORARILY_UNAVAILABLE,
        ErrorCode.UNAVAILABLE,
        ErrorCode.TIMED_OUT,
    }
)


def error_message(code: int) -> str:
    return ERROR_MESSAGES.get(code, "error")


class DeribitError(Exception):
    """Base class of every error raised at the Deribit boundary."""


class RpcError(DeribitError):
    """The exchange answered a request with ``{"error": {code, message[, data]}}``."""

    def __init__(self, code: int, message: str, data: Any = None, *, method: str = "") -> None:
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        where = f" to {method}" if method else ""
        detail = f" ({data})" if data not in (None, {}) else ""
        super().__init__(f"Deribit answered{where} with error {code} {message}{detail}")

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    @property
    def ends_session(self) -> bool:
        """Deribit closes the session after 10028: the caller must reconnect, not just retry."""
        return self.code == ErrorCode.TOO_MANY_REQUESTS


class ProtocolError(DeribitError):
    """A frame that is not JSON, or not the shape or types the protocol promises."""

    def __init__(self, reason: str, raw: str | bytes = "") -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(reason)


class ExchangeUnreachable(DeribitError):
    """The exchange could not be reached (DNS, TCP, TLS, HTTP status) or the connection dropped."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the exchange at {url}: {reason}")
