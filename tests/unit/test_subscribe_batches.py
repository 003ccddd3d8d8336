import orjson
import pytest

from optionfeed.collector.protocol import subscribe_batches
from optionfeed.deribit import jsonrpc


def test_batches_hold_at_most_500_channels_in_order() -> None:
    channels = [f"ticker.ETH-1JAN30-{i}-C.100ms" for i in range(1234)]
    batches = list(subscribe_batches(channels))
    assert [len(b) for b in batches] == [500, 500, 234]
    assert [c for b in batches for c in b] == channels


def test_batches_stay_under_32_kb_when_names_are_long() -> None:
    channels = [f"book.XRP_USDC-30JUN23-0d{i:0>40}-C.100ms" for i in range(500)]
    batches = list(subscribe_batches(channels))
    assert len(batches) > 1
    for batch in batches:
        frame = jsonrpc.encode_request(2**31, "public/subscribe", {"channels": batch})
        assert len(frame) <= jsonrpc.MAX_FRAME_BYTES
        assert orjson.loads(frame)["params"]["channels"] == batch
    assert sum(len(b) for b in batches) == 500


def test_a_channel_too_long_for_any_request_is_an_error() -> None:
    with pytest.raises(ValueError, match="too long"):
        list(subscribe_batches(["x" * 40_000]))
