"""ExchangeProtocol driven by real Deribit frames: the 2021-07-22 capture (its subscribe request,
its answer and every notification) and the real error answers of docs/deribit-protocol.md."""

from __future__ import annotations

import random

import orjson
import pytest

from harness.capture import DATA, notifications
from optionfeed.collector.protocol import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    Answered,
    ChannelsAnswered,
    ChannelsFailed,
    ExchangeProtocol,
    Failed,
    Rejected,
    Reply,
    Violation,
)
from optionfeed.deribit import jsonrpc
from optionfeed.deribit.errors import ErrorCode, RpcError

CAPTURE = DATA / "ws-options-2021-07-22.txt"
CLIENT = b"wss://www.deribit.com/ws/api/v2 <- "


def _received() -> list[bytes]:
    """Every frame the client received, byte for byte, in capture order."""
    out = []
    for line in CAPTURE.read_bytes().splitlines():
        head, sep, body = line.partition(b": ")
        if sep and b" " not in head:
            out.append(body)
    return out


RECEIVED = _received()
SUBSCRIBE_ANSWER = RECEIVED[0]  # {"jsonrpc":"2.0","id":0,"result":[...30 channels...],...}
NOTIFICATIONS = RECEIVED[1:]
CAPTURED_REQUEST = orjson.loads(
    next(line for line in CAPTURE.read_bytes().splitlines() if line.startswith(CLIENT)).split(
        b": ", 1
    )[1]
)
CHANNELS: list[str] = CAPTURED_REQUEST["params"]["channels"]

# Real error answers (docs/deribit-protocol.md §2.3 and §6.9); ``{id}`` is the request's id.
RAW_UNAUTHORIZED = (
    '{{"jsonrpc":"2.0","id":{id},"error":{{"message":'
    '"raw_subscriptions_not_available_for_unauthorized","code":13778}},'
    '"usIn":1642494034550822,"usOut":1642494034551046,"usDiff":224,"testnet":false}}'
)
BAD_REQUEST = (
    '{{"jsonrpc":"2.0","id":{id},"error":{{"code":11050,"message":"bad_request"}},'
    '"testnet":false,"usIn":1535037392434763,"usOut":1535037392448119,"usDiff":13356}}'
)
TEST_REQUEST = b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'


def answer(template: str, request_id: int) -> bytes:
    return template.format(id=request_id).encode()


def result(request_id: int, value: object) -> bytes:
    return jsonrpc.encode_result(request_id, value, us_in=1, us_out=2)


def error(request_id: int, code: int, message: str) -> bytes:
    return jsonrpc.encode_error(request_id, RpcError(code, message), us_in=1, us_out=2)


def subscribed_to_the_capture() -> ExchangeProtocol:
    """A protocol that sent the captured subscribe and took the captured answer."""
    protocol = ExchangeProtocol(random.Random(7))
    assert protocol.add(CHANNELS)
    [batch] = protocol.due_subscribes(now=0.0)
    request_id, _frame = protocol.subscribe(batch)
    assert request_id == CAPTURED_REQUEST["id"]
    event = protocol.receive(SUBSCRIBE_ANSWER, now=0.0)
    assert isinstance(event, ChannelsAnswered)
    return protocol


# ----------------------------------------------------------------------------- the capture


def test_the_captured_subscribe_is_asked_for_and_its_answer_acknowledges_every_channel() -> None:
    protocol = ExchangeProtocol(random.Random(7))
    protocol.add(CHANNELS)
    assert protocol.pending == frozenset(CHANNELS)
    [batch] = protocol.due_subscribes(now=0.0)
    request_id, frame = protocol.subscribe(batch)
    sent = orjson.loads(frame)
    assert (sent["id"], sent["method"]) == (CAPTURED_REQUEST["id"], CAPTURED_REQUEST["method"])
    assert sorted(sent["params"]["channels"]) == sorted(CHANNELS)

    event = protocol.receive(SUBSCRIBE_ANSWER, now=0.0)

    assert isinstance(event, ChannelsAnswered)
    assert (event.id, event.method, event.retry) == (request_id, SUBSCRIBE, None)
    assert event.added == frozenset(CHANNELS) == event.acknowledged
    assert protocol.acked == set(CHANNELS)
    assert protocol.pending == frozenset()
    assert protocol.due_subscribes(now=100.0) == []
    assert protocol.holds_tickers()


def test_every_captured_notification_is_delivered_with_its_channel_and_data() -> None:
    protocol = subscribed_to_the_capture()
    delivered = [protocol.receive(raw, now=1.0) for raw in NOTIFICATIONS]
    expected = [jsonrpc.Subscription(channel, data) for channel, data, _ in notifications()]
    assert len(delivered) == len(expected) == 135
    assert delivered == expected


def test_a_notification_on_a_channel_not_held_is_rejected_naming_it() -> None:
    protocol = ExchangeProtocol()
    event = protocol.receive(NOTIFICATIONS[0], now=0.0)
    channel = notifications()[0][0]
    assert isinstance(event, Rejected)
    assert (event.reason, event.channel) == ("unsubscribed_channel", channel)
    assert channel in event.detail
    assert "did not subscribe" in event.detail


def test_a_channel_stays_deliverable_until_its_unsubscribe_is_answered() -> None:
    protocol = subscribed_to_the_capture()
    channel, data, _ = notifications()[0]
    protocol.remove([channel])
    [batch] = protocol.due_unsubscribes()
    assert batch == [channel]
    request_id, _ = protocol.unsubscribe(batch)
    # Sent before the exchange read the unsubscribe: still ours.
    assert protocol.receive(NOTIFICATIONS[0], now=1.0) == jsonrpc.Subscription(channel, data)

    event = protocol.receive(result(request_id, [channel]), now=1.0)

    assert isinstance(event, ChannelsAnswered)
    assert (event.method, event.removed, event.added) == (UNSUBSCRIBE, {channel}, frozenset())
    assert channel not in protocol.acked
    late = protocol.receive(NOTIFICATIONS[0], now=2.0)
    assert isinstance(late, Rejected)
    assert late.reason == "unsubscribed_channel"


def test_a_resubscribe_unsubscribes_acknowledged_channels_once() -> None:
    protocol = subscribed_to_the_capture()
    book = [c for c in CHANNELS if c.startswith("book.")][:2]
    assert protocol.resubscribe([*book, "book.NOT-HELD.raw"])
    assert protocol.take_resubscribes() == [sorted(book)]
    assert protocol.take_resubscribes() == []
    request_id, _ = protocol.unsubscribe(sorted(book))
    protocol.receive(result(request_id, sorted(book)), now=0.0)
    assert protocol.due_subscribes(now=0.0) == [sorted(book)]


# ----------------------------------------------------------------------------- malformed frames


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (NOTIFICATIONS[0][:300], "not_json", "not JSON: "),  # a captured frame cut short
        (b'{"jsonrpc":"2.0","result":"\xff"}', "not_utf8", "not UTF-8: invalid start byte"),
        (b"[1, 2]", "not_jsonrpc", "not a JSON-RPC frame: not a JSON object"),
        (b'{"jsonrpc":"2.0"}', "not_jsonrpc", "not a JSON-RPC frame: neither a response"),
        (
            b'{"jsonrpc":"2.0","method":"subscription","params":{"data":{}}}',
            "not_jsonrpc",
            "not a JSON-RPC notification: no params.channel",
        ),
        (
            b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"x.y"}}',
            "not_jsonrpc",
            "not a JSON-RPC notification: no params.data",
        ),
        (
            b'{"jsonrpc":"2.0","method":"subscription","params":[1]}',
            "not_jsonrpc",
            "not a JSON-RPC notification: params is list",
        ),
        (
            b'{"jsonrpc":"2.0","id":0,"error":{"code":"x"}}',
            "not_jsonrpc",
            "not a JSON-RPC frame: an error without an integer code",
        ),
        (
            b'{"jsonrpc":"2.0","method":"surprise","params":{}}',
            "unexpected_notification",
            "unexpected notification 'surprise'",
        ),
    ],
)
def test_a_frame_that_cannot_be_used_is_rejected_saying_why(
    raw: bytes, reason: str, detail: str
) -> None:
    protocol = subscribed_to_the_capture()
    event = protocol.receive(raw, now=0.0)
    assert isinstance(event, Rejected)
    assert event.reason == reason
    assert event.detail.startswith(detail), event.detail
    # Nothing about the subscriptions changed, and the next frame is taken as usual.
    assert protocol.acked == set(CHANNELS)
    assert isinstance(protocol.receive(NOTIFICATIONS[0], now=0.0), jsonrpc.Subscription)


# ----------------------------------------------------------------------------- request matching


def test_answers_arriving_out_of_order_are_matched_to_their_requests_by_id() -> None:
    protocol = ExchangeProtocol()
    protocol.add(CHANNELS)
    hello, _ = protocol.request("public/hello", {"client_name": "t", "client_version": "1"})
    heartbeat, _ = protocol.request("public/set_heartbeat", {"interval": 10})
    [batch] = protocol.due_subscribes(now=0.0)
    subscribe, _ = protocol.subscribe(batch)
    assert len({hello, heartbeat, subscribe}) == 3

    answered_subscribe = protocol.receive(
        SUBSCRIBE_ANSWER.replace(b'"id":0,', f'"id":{subscribe},'.encode()), now=0.0
    )
    answered_heartbeat = protocol.receive(result(heartbeat, "ok"), now=0.0)
    answered_hello = protocol.receive(result(hello, {"version": "1.2.26"}), now=0.0)

    assert isinstance(answered_subscribe, ChannelsAnswered)
    assert answered_subscribe.id == subscribe
    assert answered_subscribe.added == frozenset(CHANNELS)
    assert answered_heartbeat == Answered(heartbeat, "public/set_heartbeat", "ok")
    assert answered_hello == Answered(hello, "public/hello", {"version": "1.2.26"})


def test_an_answer_to_no_request_is_rejected_and_an_answer_counts_once() -> None:
    protocol = ExchangeProtocol()
    request_id, _ = protocol.request("public/test", {})
    stranger = protocol.receive(result(999_999, 1), now=0.0)
    assert isinstance(stranger, Rejected)
    assert stranger.reason == "unknown_response"
    assert "id 999999" in stranger.detail
    assert protocol.receive(result(request_id, {"version": "x"}), now=0.0) == Answered(
        request_id, "public/test", {"version": "x"}
    )
    again = protocol.receive(result(request_id, {"version": "x"}), now=0.0)
    assert isinstance(again, Rejected)
    assert again.reason == "unknown_response"
    named = protocol.receive(answer(RAW_UNAUTHORIZED, 0).replace(b'"id":0', b'"id":"x"'), 0.0)
    assert isinstance(named, Rejected)
    assert named.reason == "unknown_response"


def test_an_abandoned_request_and_a_lost_session_leave_nothing_to_answer() -> None:
    protocol = subscribed_to_the_capture()
    abandoned, _ = protocol.request("public/test", {})
    protocol.abandon(abandoned)
    waiting, _ = protocol.request("public/test", {})
    assert protocol.connection_lost() == frozenset(CHANNELS)
    assert protocol.acked == set()
    assert protocol.pending == frozenset(CHANNELS)  # held still: asked for on the next session
    for request_id in (abandoned, waiting):
        event = protocol.receive(result(request_id, "ok"), now=0.0)
        assert isinstance(event, Rejected)
        assert event.reason == "unknown_response"


def test_an_error_answer_to_a_plain_request_names_the_method() -> None:
    protocol = ExchangeProtocol()
    request_id, _ = protocol.request("public/hello", {})
    event = protocol.receive(answer(BAD_REQUEST, request_id), now=0.0)
    assert isinstance(event, Failed)
    assert (event.id, event.error.code, event.error.method) == (
        request_id,
        ErrorCode.BAD_REQUEST,
        "public/hello",
    )
    assert "to public/hello" in str(event.error)


def test_a_test_request_is_answered_with_public_test_whose_answer_is_dropped() -> None:
    protocol = ExchangeProtocol()
    reply = protocol.receive(TEST_REQUEST, now=0.0)
    assert isinstance(reply, Reply)
    sent = orjson.loads(reply.frame)
    assert (sent["method"], sent["params"]) == ("public/test", {})
    assert protocol.receive(result(sent["id"], {"version": "1"}), now=0.0) is None
    assert protocol.receive(b'{"jsonrpc":"2.0","method":"heartbeat","params":{}}', 0.0) is None


# ----------------------------------------------------------------------------- subscribe errors


def test_raw_channels_refused_without_auth_are_kept_out_and_the_rest_asked_again() -> None:
    protocol = ExchangeProtocol()
    extra = "ticker.ETH-30JUL21-2800-C.100ms"
    protocol.add([*CHANNELS, extra])
    [batch] = protocol.due_subscribes(now=0.0)
    request_id, _ = protocol.subscribe(batch)

    event = protocol.receive(answer(RAW_UNAUTHORIZED, request_id), now=0.0)

    assert isinstance(event, ChannelsFailed)
    assert event.refusal is not None
    assert event.retry is None
    assert event.refusal.reason == "unauthorized"
    assert event.refusal.channels == frozenset(CHANNELS)  # every captured channel is .raw
    assert event.ask_again_now
    assert not event.ends_session
    assert protocol.refused == dict.fromkeys(CHANNELS, "unauthorized")
    assert protocol.due_subscribes(now=0.0) == [[extra]]


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [(11051, "system_maintenance", "maintenance"), (10040, "retry", "transient")],
)
def test_a_transient_error_asks_for_the_batch_again_after_a_delay(
    code: int, message: str, reason: str
) -> None:
    protocol = ExchangeProtocol(random.Random(3))
    protocol.add(CHANNELS)
    [batch] = protocol.due_subscribes(now=100.0)
    request_id, _ = protocol.subscribe(batch)

    event = protocol.receive(error(request_id, code, message), now=100.0)

    assert isinstance(event, ChannelsFailed)
    assert event.retry is not None
    assert event.refusal is None
    assert (event.retry.reason, event.retry.channels) == (reason, frozenset(CHANNELS))
    assert event.retry.delay >= 1.0
    assert protocol.next_retry_at() == 100.0 + event.retry.delay
    assert protocol.due_subscribes(now=100.0 + event.retry.delay - 0.01) == []
    assert protocol.due_subscribes(now=100.0 + event.retry.delay) == [batch]


def test_too_many_requests_ends_the_session_and_an_unknown_error_refuses_for_good() -> None:
    protocol = ExchangeProtocol()
    protocol.add(CHANNELS)
    [batch] = protocol.due_subscribes(now=0.0)
    first, _ = protocol.subscribe(batch)
    limited = protocol.receive(error(first, 10028, "too_many_requests"), now=0.0)
    assert isinstance(limited, ChannelsFailed)
    assert limited.ends_session
    assert protocol.refused == {}
    assert protocol.retry_at == {}

    second, _ = protocol.subscribe(batch)
    refused = protocol.receive(answer(BAD_REQUEST, second), now=0.0)
    assert isinstance(refused, ChannelsFailed)
    assert refused.refusal is not None
    assert refused.refusal.reason == "error"
    assert "bad_request" in refused.refusal.detail
    assert protocol.pending == frozenset()
    protocol.remove(batch[:1])
    assert batch[0] not in protocol.refused


def test_channels_the_answer_leaves_out_are_asked_for_again_later() -> None:
    protocol = ExchangeProtocol(random.Random(5))
    protocol.add(CHANNELS)
    [batch] = protocol.due_subscribes(now=0.0)
    request_id, _ = protocol.subscribe(batch)
    granted = sorted(CHANNELS)[:20]

    event = protocol.receive(result(request_id, [*granted, 7]), now=50.0)

    assert isinstance(event, ChannelsAnswered)
    assert event.added == frozenset(granted) == event.acknowledged
    assert event.retry is not None
    assert (event.retry.reason, event.retry.channels) == (
        "left_out",
        frozenset(sorted(CHANNELS)[20:]),
    )
    assert protocol.due_subscribes(now=50.0) == []
    assert protocol.due_subscribes(now=50.0 + event.retry.delay) == [sorted(CHANNELS)[20:]]


def test_a_subscribe_answered_with_no_list_is_a_violation() -> None:
    protocol = ExchangeProtocol()
    protocol.add(CHANNELS)
    [batch] = protocol.due_subscribes(now=0.0)
    request_id, _ = protocol.subscribe(batch)
    event = protocol.receive(result(request_id, "ok"), now=0.0)
    assert event == Violation(request_id, SUBSCRIBE, "public/subscribe answered str")
    assert protocol.acked == set()
