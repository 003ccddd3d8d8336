"""The exchange itself: where it is, and which currencies list options (docs/deribit-protocol.md §1,
§3).

Shared by the collector (its defaults and the assignment file's checks) and the operator (the
OptionFeed's defaults and validation), so the two never disagree.
"""

from __future__ import annotations

# Production WebSocket endpoint; the REST endpoint is derived from it (optionfeed.deribit.rest).
DEFAULT_EXCHANGE_URL = "wss://www.deribit.com/ws/api/v2"

# Currencies whose options a feed can record: BTC and ETH (inverse), USDC (linear: SOL_USDC-...,
# XRP_USDC-...).
OPTION_CURRENCIES: tuple[str, ...] = ("BTC", "ETH", "USDC")
