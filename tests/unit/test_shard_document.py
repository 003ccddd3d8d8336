import json
from dataclasses import replace
from typing import Any

import pytest

from optionfeed.deribit.channels import Interval
from optionfeed.shard_document import (
    InvalidShardDocument,
    ShardDocument,
    parse_shard_document,
    render_shard_document,
)

# The example in docs/design.md, "Assignment: operator → collector".
CONTENT: dict[str, Any] = {
    "feed": "eth-top50",
    "namespace": "md",
    "shard": 0,
    "shards": 2,
    "generation": 7,
    "currency": "ETH",
    "interval": "100ms",
    "channels": ["ticker", "trades"],
    "instruments": ["ETH-9NOV25-3375-P", "ETH-9NOV25-3400-C"],
    "exchangeUrl": "wss://www.deribit.com/ws/api/v2",
}

DOCUMENT = ShardDocument(
    feed="eth-top50",
    namespace="md",
    shard=0,
    shards=2,
    generation=7,
    currency="ETH",
    interval=Interval.MS100,
    channels=("ticker", "trades"),
    instruments=("ETH-9NOV25-3375-P", "ETH-9NOV25-3400-C"),
    exchange_url="wss://www.deribit.com/ws/api/v2",
)


def test_the_documented_example_parses_field_by_field() -> None:
    assert parse_shard_document(json.dumps(CONTENT)) == DOCUMENT
    assert parse_shard_document(json.dumps(CONTENT).encode()) == DOCUMENT


def test_rendering_writes_the_documented_keys_in_order_one_item_a_line() -> None:
    text = render_shard_document(DOCUMENT)
    assert json.loads(text) == CONTENT
    assert list(json.loads(text)) == list(CONTENT)
    assert '\n  "ETH-9NOV25-3375-P",\n' in text
    assert text.endswith("}\n")


@pytest.mark.parametrize(
    "document",
    [
        DOCUMENT,
        replace(DOCUMENT, exchange_url=None),
        replace(DOCUMENT, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        replace(DOCUMENT, instruments=(), shard=1, interval=Interval.RAW, channels=("book",)),
        replace(DOCUMENT, currency="BTC", instruments=("BTC_USDC-29NOV25-90000-C",)),
    ],
)
def test_parsing_what_was_rendered_gives_the_same_document(document: ShardDocument) -> None:
    text = render_shard_document(document)
    assert parse_shard_document(text) == document
    assert render_shard_document(parse_shard_document(text)) == text


def test_fields_left_out_of_the_json_are_none_and_stay_out() -> None:
    content = {k: v for k, v in CONTENT.items() if k != "exchangeUrl"}
    document = parse_shard_document(json.dumps(content))
    assert document.exchange_url is None
    assert document.traceparent is None
    assert "exchangeUrl" not in json.loads(render_shard_document(document))
    assert "traceparent" not in json.loads(render_shard_document(DOCUMENT))


def test_a_trace_context_that_is_not_a_string_is_ignored_not_refused() -> None:
    assert parse_shard_document(json.dumps({**CONTENT, "traceparent": 7})) == DOCUMENT


def test_repeated_channels_and_instruments_collapse_in_order() -> None:
    content = {
        **CONTENT,
        "channels": ["trades", "ticker", "trades"],
        "instruments": ["ETH-9NOV25-3400-C", "ETH-9NOV25-3375-P", "ETH-9NOV25-3400-C"],
    }
    document = parse_shard_document(json.dumps(content))
    assert document.channels == ("trades", "ticker")
    assert document.instruments == ("ETH-9NOV25-3400-C", "ETH-9NOV25-3375-P")


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in CONTENT.items() if k != key}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({**CONTENT, "currency": "DOGE"}, "currency must be one of BTC, ETH, USDC, not 'DOGE'"),
        ({**CONTENT, "interval": "1s"}, "interval must be one of raw, 100ms, agg2, not '1s'"),
        ({**CONTENT, "interval": 100}, "field 'interval' must be str, not int"),
        (
            {**CONTENT, "channels": ["ticker", "candles"]},
            "channels must be a non-empty subset of ['ticker', 'quote', 'trades', 'book'];"
            " unknown: ['candles']",
        ),
        (
            {**CONTENT, "channels": []},
            "channels must be a non-empty subset of ['ticker', 'quote', 'trades', 'book']",
        ),
        ({**CONTENT, "channels": "ticker"}, "field 'channels' must be list, not str"),
        ({**CONTENT, "instruments": ["ETH-PERPETUAL"]}, "not option names: ['ETH-PERPETUAL']"),
        (
            {**CONTENT, "instruments": ["ETH-9NOV25-3375-P", 7]},
            "field 'instruments' must list strings, not [7]",
        ),
        ({**CONTENT, "shard": 2}, "shard 2 is not in 0..1"),
        ({**CONTENT, "shard": -1}, "shard -1 is not in 0..1"),
        ({**CONTENT, "shards": 0, "shard": 0}, "shards must be at least 1, not 0"),
        ({**CONTENT, "shard": "0"}, "field 'shard' must be int, not str"),
        ({**CONTENT, "shard": True}, "field 'shard' must be int, not bool"),
        ({**CONTENT, "generation": -3}, "generation must not be negative, not -3"),
        ({**CONTENT, "generation": 7.5}, "field 'generation' must be int, not float"),
        ({**CONTENT, "feed": None}, "field 'feed' must be str, not NoneType"),
        ({**CONTENT, "exchangeUrl": 443}, "field 'exchangeUrl' must be str, not int"),
        (_without("namespace"), "missing field 'namespace'"),
        (_without("instruments"), "missing field 'instruments'"),
        ([CONTENT], "expected a JSON object"),
    ],
)
def test_a_malformed_document_says_where_and_what_is_wrong(content: Any, message: str) -> None:
    with pytest.raises(InvalidShardDocument) as raised:
        parse_shard_document(json.dumps(content), where="shard-0.json")
    assert str(raised.value) == f"shard-0.json: {message}"


def test_text_that_is_not_json_is_refused_with_the_parser_s_reason() -> None:
    with pytest.raises(InvalidShardDocument, match=r"^/etc/optionfeed/assignment\.json: not JSON"):
        parse_shard_document("{broken", where="/etc/optionfeed/assignment.json")


def test_an_invalid_document_cannot_be_built_either() -> None:
    with pytest.raises(InvalidShardDocument, match=r"shard 2 is not in 0\.\.1"):
        replace(DOCUMENT, shard=2)
    with pytest.raises(InvalidShardDocument, match="not option names"):
        replace(DOCUMENT, instruments=("BTC-PERPETUAL",))
