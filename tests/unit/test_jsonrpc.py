from pathlib import Path

import orjson
import pytest

from optionfeed.deribit import jsonrpc
from optionfeed.deribit.errors import ErrorCode, ProtocolError, RpcError


def test_response_with_result_decodes_with_deribit_extras() -> None:
    raw = (
        b'{"jsonrpc":"2.0","id":0,"result":["a"],"usIn":1,"usOut":582,"usDiff":581,"testnet":false}'
    )
    frame = jsonrpc.decode_frame(raw)
    assert isinstance(frame, jsonrpc.Response)
    assert (frame.id, frame.result, frame.error, frame.us_in, frame.us_out) == (
        0,
        ["a"],
        None,
        1,
        582,
    )


def test_error_response_becomes_rpc_error_with_data() -> None:
    raw = (
        b'{"jsonrpc":"2.0","error":{"message":"Invalid params","data":'
        b'{"reason":"value must be a list","param":"channels"},"code":-32602},'
        b'"testnet":false,"usIn":1,"usOut":2,"usDiff":1,"id":7}'
    )
    frame = jsonrpc.decode_frame(raw)
    assert isinstance(frame, jsonrpc.Response)
    assert frame.error is not None
    assert frame.error.code == ErrorCode.INVALID_PARAMS
    assert frame.error.data == {"reason": "value must be a list", "param": "channels"}
    assert not frame.error.transient


def test_a_subscription_notification_is_read_back_with_its_data_text_byte_for_byte() -> None:
    raw = jsonrpc.subscription_prefix("quote.X") + b'{"a": 1}' + jsonrpc.SUBSCRIPTION_SUFFIX
    assert orjson.loads(raw) == {
        "jsonrpc": "2.0",
        "method": "subscription",
        "params": {"channel": "quote.X", "data": {"a": 1}},
    }
    assert jsonrpc.decode_frame(raw) == jsonrpc.Subscription("quote.X", {"a": 1})
    assert jsonrpc.subscription_data_json(raw, "quote.X") == b'{"a": 1}'
    assert jsonrpc.subscription_data_json(raw, "quote.Y") is None
    spaced = b'{"jsonrpc": "2.0", "method": "subscription", "params": {"channel": "quote.X", '
    assert jsonrpc.subscription_data_json(spaced + b'"data": 1}}', "quote.X") is None


def test_a_heartbeat_is_a_notification_with_its_params() -> None:
    frame = jsonrpc.decode_frame(jsonrpc.TEST_REQUEST)
    assert frame == jsonrpc.Notification("heartbeat", {"type": "test_request"})


def test_rest_responses_without_an_id_decode_as_in_the_real_capture() -> None:
    capture = Path(__file__).parents[1] / "data" / "deribit" / "rest-get_instruments-2021-2022.txt"
    line = capture.read_text().splitlines()[0]
    frame = jsonrpc.decode_frame(line.split(": ", 1)[1])
    assert isinstance(frame, jsonrpc.Response)
    assert frame.id is None
    assert frame.result[0]["instrument_name"].startswith("BTC-")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1,2]",
        b'{"jsonrpc":"2.0"}',
        b'{"method":"subscription","params":{}}',
        b'{"id":1,"error":{"code":"x"}}',
        b'{"id":1}',
    ],
)
def test_malformed_frames_raise_protocol_error_with_the_raw_text(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        jsonrpc.decode_frame(raw)
    assert info.value.raw == raw


def test_request_over_32k_is_rejected_with_minus_32600() -> None:
    big = jsonrpc.encode_request(1, "public/subscribe", {"channels": ["x" * 40_000]})
    with pytest.raises(RpcError) as info:
        jsonrpc.decode_request(big)
    assert info.value.code == -32600


def test_error_encoding_echoes_id_and_timing_extras() -> None:
    body = orjson.loads(
        jsonrpc.encode_error(5, RpcError(11051, "system_maintenance"), us_in=10, us_out=25)
    )
    assert body == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": 11051, "message": "system_maintenance"},
        "usIn": 10,
        "usOut": 25,
        "usDiff": 15,
        "testnet": False,
    }


def test_transient_codes_follow_the_protocol_brief() -> None:
    assert RpcError(10028, "too_many_requests").transient
    assert RpcError(10028, "too_many_requests").ends_session
    assert RpcError(11051, "system_maintenance").transient
    assert not RpcError(13778, "raw_subscriptions_not_available_for_unauthorized").transient


@pytest.mark.parametrize(
    ("raw", "label", "detail"),
    [
        (b'{"a": "\xff"}', "not_utf8", "not UTF-8: invalid start byte at position 7 (byte 0xff)"),
        (
            b'{"a": "\xed\xa0\x80"}',
            "not_utf8",
            "not UTF-8: invalid continuation byte at position 7 (byte 0xed)",
        ),
        (b"{nope", "not_json", "not JSON: unexpected character, expected a string key at "),
        (b"", "not_json", "not JSON: Input is a zero-length, empty document at position 0"),
    ],
)
def test_an_unparsable_frame_is_described_by_what_is_wrong_with_it(
    raw: bytes, label: str, detail: str
) -> None:
    with pytest.raises(orjson.JSONDecodeError) as info:
        orjson.loads(raw)
    got_label, got_detail = jsonrpc.why_unparsable(raw, info.value)
    assert got_label == label
    assert got_detail.startswith(detail), got_detail


def test_a_subscription_without_channel_or_data_says_which() -> None:
    assert jsonrpc.subscription_problem([]).endswith("params is list, not an object")
    assert jsonrpc.subscription_problem({"data": 1}).endswith("no params.channel")
    assert jsonrpc.subscription_problem({"channel": 5}).endswith(
        "params.channel is int, not a string"
    )
    assert jsonrpc.subscription_problem({"channel": "x"}).endswith("no params.data")


def test_a_request_without_an_id_is_refused_as_a_bad_request() -> None:
    # Deribit takes no client notifications: a request must carry an id.
    with pytest.raises(RpcError) as info:
        jsonrpc.decode_request(b'{"jsonrpc":"2.0","method":"public/test","params":{}}')
    assert (info.value.code, info.value.message) == (11050, "bad_request")


def test_a_request_without_the_jsonrpc_member_is_still_taken() -> None:
    # Deribit's reference asks for "jsonrpc": "2.0" but nothing shows it refusing a request
    # without it, so the simulator does not either.
    request = jsonrpc.decode_request(b'{"id":3,"method":"public/test"}')
    assert (request.id, request.method, request.params) == (3, "public/test", {})
