"""The ledger's counters: per channel and connection, folded when a connection closes."""

from __future__ import annotations

from optionfeed.simulator import ledger as ledger_module
from optionfeed.simulator.ledger import Generated, Ledger, commit


def report(ledger: Ledger, **kw: object) -> dict:
    return ledger.report(
        now=0, started=0, source="market", rate=1.0, events=0, trades=0, generated=[], **kw
    )


def test_channel_totals_add_up_open_and_closed_connections() -> None:
    ledger = Ledger()
    first = ledger.open_connection(1, "a", 0)
    second = ledger.open_connection(2, "b", 0)
    a = ledger.stats("trades.X.100ms", "X", first)
    b = ledger.stats("trades.X.100ms", "X", second)
    assert ledger.stats("trades.X.100ms", "X", first) is a
    commit(first, [(a, 10, 11, 3, 0, 2), (a, 20, 25, 5, 0, 2)])
    commit(second, [(b, 15, 15, 4, 0, 1)])
    ledger.close_connection(first, 100)
    entry = report(ledger)["channels"]["trades.X.100ms"]
    expected = {
        "instrument": "X",
        "notifications": 3,
        "trades": 5,
        "first_timestamp": 10,
        "last_timestamp": 25,
        "last_trade_seq": 5,
        "last_change_id": None,
        "connections": {"1": 2, "2": 1},
        "closed_connections": 0,
    }
    assert entry == expected
    # Older closed connections are folded together: the totals stay, the split goes.
    for conn_id in range(3, 3 + ledger_module.DETAILED_CLOSED):
        ledger.close_connection(ledger.open_connection(conn_id, "x", 0), 200)
    assert first.stats == {}
    assert first.notifications == 2
    entry = report(ledger)["channels"]["trades.X.100ms"]
    assert entry == {**expected, "connections": {"2": 1}, "closed_connections": 2}
    connections = report(ledger)["connections"]
    assert connections["1"]["closed"] == 100
    assert connections["1"]["notifications"] == 2
    assert report(ledger)["totals"]["notifications"] == 3
    assert report(ledger)["totals"]["connections"] == 1


def test_the_last_change_id_is_that_of_the_latest_frame() -> None:
    ledger = Ledger()
    record = ledger.open_connection(1, "a", 0)
    stats = ledger.stats("book.X.100ms", "X", record)
    commit(record, [(stats, 10, 10, 0, 500, 0), (stats, 20, 20, 0, 700, 0)])
    assert report(ledger)["channels"]["book.X.100ms"]["last_change_id"] == 700


def test_a_report_can_be_narrowed_to_instruments_keeping_currency_channels() -> None:
    ledger = Ledger()
    record = ledger.open_connection(1, "a", 0)
    for channel, instrument in (("ticker.X.100ms", "X"), ("ticker.Y.100ms", "Y"),
                                ("trades.option.BTC.100ms", None)):  # fmt: skip
        commit(record, [(ledger.stats(channel, instrument, record), 1, 1, 0, 0, 0)])
    generated = [
        Generated("X", "BTC", "open", 0, 1, 1, 1, 0, None, None, 1, 1),
        Generated("Y", "BTC", "open", 0, 1, 1, 1, 0, None, None, 1, 1),
    ]
    narrowed = ledger.report(
        now=0, started=0, source="market", rate=1.0, events=2, trades=0,
        generated=generated, instruments={"X"},
    )  # fmt: skip
    assert sorted(narrowed["channels"]) == ["ticker.X.100ms", "trades.option.BTC.100ms"]
    assert list(narrowed["generated"]) == ["X"]
    assert narrowed["totals"]["notifications"] == 3
