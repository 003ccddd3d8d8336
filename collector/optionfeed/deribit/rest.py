"""The REST mirror of the Deribit API (``/api/v2/<method>``): one small async client.

Used for what has no stream: reference data, ranking, and trade backfill. The collector and the
operator both call it; the simulator serves the other end.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from optionfeed.deribit import jsonrpc
from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError
from optionfeed.deribit.messages import BookSummary, Instrument, TradesPage
from optionfeed.deribit.ranking import RankBy, rank_instruments

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


def rest_base_url(exchange_url: str) -> str:
    """``wss://host/ws/api/v2`` -> ``https://host/api/v2`` (and ws -> http)."""
    parts = urlsplit(exchange_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"exchange URL {exchange_url!r} is not a ws://, wss://, http:// or https:// URL"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/ws/api/v2"):
        path = path[: -len("/ws/api/v2")] + "/api/v2"
    elif not path.endswith("/api/v2"):
        path = path + "/api/v2"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RestClient:
    """Calls ``GET {base}/{method}?params`` and returns ``result`` or raises.

    Raises :class:`RpcError` for an error body (whatever the HTTP status),
    :class:`ExchangeUnreachable` when no HTTP answer came, and :class:`ProtocolError` for a body
    that is not a JSON-RPC response.
    """

    def __init__(self, exchange_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = rest_base_url(exchange_url)
        self._session = session

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/{method}"
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._session.get(url, params=query, timeout=DEFAULT_TIMEOUT) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ExchangeUnreachable(self.base_url, reason) from exc
        try:
            frame = jsonrpc.decode_frame(body)
        except ProtocolError as exc:
            if status == 429:
                raise ExchangeUnreachable(self.base_url, "HTTP 429: too many connections") from exc
            raise ProtocolError(
                f"HTTP {status} from {url} is not a JSON-RPC response", body
            ) from exc
        if not isinstance(frame, jsonrpc.Response):
            raise ProtocolError(f"{url} answered with a notification", body)
        if frame.error is not None:
            error = frame.error
            raise RpcError(error.code, error.message, error.data, method=method)
        return frame.result

    async def get_instruments(
        self, currency: str, kind: str = "option", *, expired: bool = False
    ) -> list[Instrument]:
        result = await self.call(
            "public/get_instruments", {"currency": currency, "kind": kind, "expired": expired}
        )
        return cast(list[Instrument], result)

    async def get_book_summary_by_currency(
        self, currency: str, kind: str = "option"
    ) -> list[BookSummary]:
        result = await self.call(
            "public/get_book_summary_by_currency", {"currency": currency, "kind": kind}
        )
        return cast(list[BookSummary], result)

    async def get_last_trades_by_instrument(
        self,
        instrument: str,
        *,
        start_seq: int | None = None,
        end_seq: int | None = None,
        count: int = 1000,
        sorting: str = "asc",
    ) -> TradesPage:
        result = await self.call(
            "public/get_last_trades_by_instrument",
            {
                "instrument_name": instrument,
                "start_seq": start_seq,
                "end_seq": end_seq,
                "count": count,
                "sorting": sorting,
            },
        )
        return cast(TradesPage, result)

    async def get_last_trades_by_instrument_and_time(
        self,
        instrument: str,
        *,
        start_timestamp: int,
        end_timestamp: int,
        count: int = 1000,
        sorting: str = "asc",
    ) -> TradesPage:
        result = await self.call(
            "public/get_last_trades_by_instrument_and_time",
            {
                "instrument_name": instrument,
                "start_timestamp": start_timestamp,
                "end_timestamp": end_timestamp,
                "count": count,
                "sorting": sorting,
            },
        )
        return cast(TradesPage, result)

    async def get_currencies(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], await self.call("public/get_currencies"))


async def fetch_ranking(
    client: RestClient,
    currency: str,
    *,
    top_n: int | None,
    rank_by: RankBy | str = RankBy.VOLUME_USD,
    underlyings: Collection[str] | None = None,
) -> tuple[list[str], list[Instrument]]:
    """Rank the currency's live options from the exchange; returns (ranked names, instruments).

    Liveness is the exchange's own word (``is_active``, ``state``), not this machine's clock: a
    skewed clock, or a simulator replaying a capture, must not empty the ranking.
    """
    instruments = await client.get_instruments(currency)
    summaries = await client.get_book_summary_by_currency(currency)
    ranked = rank_instruments(
        instruments, summaries, top_n=top_n, rank_by=rank_by, underlyings=underlyings
    )
    return ranked, instruments
