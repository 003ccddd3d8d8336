-- optionfeed schema, version 1: the tables of DESIGN.md.
--
-- Conventions
--   * Columns carry Deribit's field names: `greeks.delta` becomes `delta`, `stats.volume_usd`
--     becomes `stats_volume_usd`, `instrument_name` becomes `instrument`, `timestamp` becomes `ts`.
--   * `ts` is the exchange's timestamp (Deribit's milliseconds, exact); `recv_ts` is when the
--     collector received the frame.
--   * Numbers are double precision: Deribit sends JSON numbers, which the collector parses into
--     IEEE doubles, so a double column stores exactly the value that was sent and reads back as
--     the same JSON number. Ids and sequence numbers are bigint, `trade_id` is text (Deribit's ids
--     are strings, e.g. "ETH-284830839").
--   * A JSON null is stored as NULL and a JSON 0.0 as 0.0: nothing is rewritten on the way in.
--   * `extra` (jsonb) keeps any field Deribit sends that has no column of its own (newer fields,
--     perpetual-only or combo fields), so a message is never stored with a field missing. It is
--     NULL when there was none.
--
-- The time tables (option_tickers, option_quotes, option_trades, option_book) are partitioned by
-- day on `ts`. The writer creates each day's partition ahead of time and, on demand, for any day a
-- batch holds (replaying 2021 captures creates 2021 partitions). There is no DEFAULT partition: a
-- row for a day without a partition makes the writer create it, never lands in a catch-all that
-- would block creating that day's partition later.
--
-- A unique key of a partitioned table must contain the partition column, so each natural key of
-- DESIGN.md is declared with `ts` appended when `ts` is not already in it. Deduplication is not
-- weakened by this: a trade, a book change or a ticker carries the exchange timestamp Deribit gave
-- it, and every copy of it (a redundant collector, a reconnect, a REST backfill, a spool replay)
-- carries the same one, so two copies always collide on (key, ts).

CREATE TABLE option_tickers (
    instrument               text             NOT NULL,
    ts                       timestamptz      NOT NULL,
    recv_ts                  timestamptz      NOT NULL,
    state                    text,
    best_bid_price           double precision,
    best_bid_amount          double precision,
    best_ask_price           double precision,
    best_ask_amount          double precision,
    bid_iv                   double precision,
    ask_iv                   double precision,
    mark_price               double precision,
    mark_iv                  double precision,
    last_price               double precision,
    index_price              double precision,
    underlying_price         double precision,
    underlying_index         text,
    open_interest            double precision,
    interest_rate            double precision,
    min_price                double precision,
    max_price                double precision,
    settlement_price         double precision,
    delivery_price           double precision,
    estimated_delivery_price double precision,
    expired                  boolean          NOT NULL DEFAULT false,
    delta                    double precision,
    gamma                    double precision,
    vega                     double precision,
    theta                    double precision,
    rho                      double precision,
    stats_volume             double precision,
    stats_volume_usd         double precision,
    stats_volume_notional    double precision,
    stats_low                double precision,
    stats_high               double precision,
    stats_price_change       double precision,
    extra                    jsonb,
    PRIMARY KEY (instrument, ts)
) PARTITION BY RANGE (ts);

COMMENT ON TABLE option_tickers IS
    'ticker.{instrument}.{interval}: every field of every notification. Natural key (instrument, ts).';
COMMENT ON COLUMN option_tickers.best_bid_price IS
    'As sent. Deribit marks an empty side either with null (the documented form) or with 0.0 price, '
    '0.0 amount and 0.0 IV (what real option data shows); both are stored as sent. No option trades '
    'at 0 (min_price > 0), so best_bid_price = 0.0 means "no bid", exactly like NULL.';
COMMENT ON COLUMN option_tickers.best_ask_price IS
    'As sent; 0.0 (or NULL) means the ask side was empty, see best_bid_price.';
COMMENT ON COLUMN option_tickers.bid_iv IS 'Percent. 0.0 accompanies an empty bid side.';
COMMENT ON COLUMN option_tickers.ask_iv IS 'Percent. 0.0 accompanies an empty ask side.';
COMMENT ON COLUMN option_tickers.mark_iv IS 'Percent.';
COMMENT ON COLUMN option_tickers.last_price IS 'NULL when the instrument never traded.';
COMMENT ON COLUMN option_tickers.underlying_index IS
    'A string: "index_price", a future name such as ETH-30JUL21, or SYN.<future>.';
COMMENT ON COLUMN option_tickers.estimated_delivery_price IS
    'The number Deribit sent; NULL when it sent the string "expired" (then expired = true).';
COMMENT ON COLUMN option_tickers.expired IS
    'True when Deribit sent estimated_delivery_price = "expired" (an expired instrument).';
COMMENT ON COLUMN option_tickers.extra IS
    'Fields without a column of their own (top level, or under "stats"/"greeks"); NULL when none.';

CREATE TABLE option_quotes (
    instrument      text             NOT NULL,
    ts              timestamptz      NOT NULL,
    recv_ts         timestamptz      NOT NULL,
    best_bid_price  double precision,
    best_bid_amount double precision,
    best_ask_price  double precision,
    best_ask_amount double precision,
    extra           jsonb,
    PRIMARY KEY (instrument, ts)
) PARTITION BY RANGE (ts);

COMMENT ON TABLE option_quotes IS
    'quote.{instrument}: best bid and ask. Natural key (instrument, ts). An empty side is stored as '
    'sent (NULL or 0.0).';

CREATE TABLE option_trades (
    instrument            text             NOT NULL,
    ts                    timestamptz      NOT NULL,
    recv_ts               timestamptz      NOT NULL,
    trade_id              text             NOT NULL,
    trade_seq             bigint           NOT NULL,
    price                 double precision,
    amount                double precision,
    contracts             double precision,
    direction             text,
    tick_direction        integer,
    index_price           double precision,
    mark_price            double precision,
    iv                    double precision,
    liquidation           text,
    block_trade_id        text,
    block_trade_leg_count integer,
    combo_id              text,
    combo_trade_id        text,
    block_rfq_id          bigint,
    extra                 jsonb,
    -- Natural key (instrument, trade_id); ts is appended because the table is partitioned on it.
    -- A trade's timestamp never changes between its copies (stream, backfill, replay), so
    -- duplicates still collide.
    PRIMARY KEY (instrument, trade_id, ts)
) PARTITION BY RANGE (ts);

-- Gap detection and completeness reports walk an instrument's trades by sequence number.
CREATE INDEX option_trades_instrument_trade_seq ON option_trades (instrument, trade_seq);

COMMENT ON TABLE option_trades IS
    'trades.*: one row per trade. Natural key (instrument, trade_id), held as (instrument, trade_id, ts).';
COMMENT ON COLUMN option_trades.trade_seq IS
    'Sequence number of the trade within its instrument: gaps show missed trades.';
COMMENT ON COLUMN option_trades.tick_direction IS '0 plus, 1 zero-plus, 2 minus, 3 zero-minus.';
COMMENT ON COLUMN option_trades.direction IS 'The taker side: buy or sell.';
COMMENT ON COLUMN option_trades.extra IS
    'Fields without a column of their own (for example combo legs); NULL when none.';

CREATE TABLE option_book (
    instrument     text        NOT NULL,
    ts             timestamptz NOT NULL,
    recv_ts        timestamptz NOT NULL,
    change_id      bigint      NOT NULL,
    prev_change_id bigint,
    type           text,
    bids           jsonb       NOT NULL,
    asks           jsonb       NOT NULL,
    extra          jsonb,
    -- Natural key (instrument, change_id); ts is appended because the table is partitioned on it.
    PRIMARY KEY (instrument, change_id, ts)
) PARTITION BY RANGE (ts);

COMMENT ON TABLE option_book IS
    'book.{instrument}.{interval}: snapshots and changes, chained by change_id/prev_change_id.';
COMMENT ON COLUMN option_book.type IS
    'snapshot or change; NULL when the message had no type (old captures).';
COMMENT ON COLUMN option_book.prev_change_id IS 'NULL on a snapshot that carried none.';
COMMENT ON COLUMN option_book.bids IS
    'The levels exactly as Deribit sent them: [[action, price, amount], ...] with action new, '
    'change or delete ([[price, amount], ...] for grouped books). [] for an empty side.';
COMMENT ON COLUMN option_book.asks IS 'As bids.';

CREATE TABLE instruments (
    instrument                   text PRIMARY KEY,
    kind                         text,
    base_currency                text,
    quote_currency               text,
    counter_currency             text,
    settlement_currency          text,
    option_type                  text,
    strike                       double precision,
    expiration_timestamp         timestamptz,
    creation_timestamp           timestamptz,
    settlement_period            text,
    tick_size                    double precision,
    tick_size_steps              jsonb,
    contract_size                double precision,
    min_trade_amount             double precision,
    maker_commission             double precision,
    taker_commission             double precision,
    block_trade_commission       double precision,
    block_trade_min_trade_amount double precision,
    block_trade_tick_size        double precision,
    max_leverage                 double precision,
    max_liquidation_commission   double precision,
    instrument_id                bigint,
    price_index                  text,
    instrument_type              text,
    state                        text,
    is_active                    boolean,
    rfq                          boolean,
    extra                        jsonb,
    first_seen                   timestamptz NOT NULL,
    last_seen                    timestamptz NOT NULL,
    expired_at                   timestamptz
);

COMMENT ON TABLE instruments IS
    'Reference data from public/get_instruments, upserted: first_seen is kept, every other field '
    'and last_seen follow the latest listing.';
COMMENT ON COLUMN instruments.expired_at IS
    'When the instrument was first seen expired (listed by get_instruments with expired=true, or '
    'marked by the collector); NULL while it is live.';

CREATE TABLE data_gaps (
    gap_id         uuid PRIMARY KEY,
    feed           text,
    shard          integer,
    instrument     text,
    channel        text        NOT NULL,
    gap_start      timestamptz NOT NULL,
    gap_end        timestamptz,
    reason         text        NOT NULL
        CHECK (reason IN ('disconnect', 'sequence', 'stale', 'outage')),
    seq_from       bigint,
    seq_to         bigint,
    rows_recovered bigint      NOT NULL DEFAULT 0,
    detected_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE INDEX data_gaps_instrument_start ON data_gaps (instrument, gap_start);

COMMENT ON TABLE data_gaps IS
    'Every interval the collector knows it missed. gap_id is made by the collector, so the row can '
    'be written before the gap closes and updated (gap_end, rows_recovered) through the same '
    'idempotent upsert.';
COMMENT ON COLUMN data_gaps.instrument IS 'NULL for a gap that covers a whole connection.';
COMMENT ON COLUMN data_gaps.seq_from IS
    'First missing sequence number (trade_seq, or the change_id expected) when known.';
COMMENT ON COLUMN data_gaps.seq_to IS 'Last missing sequence number when known.';
COMMENT ON COLUMN data_gaps.rows_recovered IS 'Rows fetched back by backfill.';

CREATE TABLE collector_status (
    feed        text        NOT NULL,
    shard       integer     NOT NULL,
    pod         text        NOT NULL,
    started_at  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    version     text,
    instruments integer,
    connections integer,
    counters    jsonb,
    PRIMARY KEY (feed, shard, pod)
);

COMMENT ON TABLE collector_status IS 'Heartbeat of each collector, upserted.';

CREATE TABLE rejected_messages (
    id      uuid PRIMARY KEY,
    recv_ts timestamptz NOT NULL,
    channel text,
    reason  text        NOT NULL,
    raw     text        NOT NULL
);

CREATE INDEX rejected_messages_recv_ts ON rejected_messages (recv_ts);

COMMENT ON TABLE rejected_messages IS
    'Frames that could not be parsed or stored, with the reason: nothing is dropped silently.';
COMMENT ON COLUMN rejected_messages.raw IS
    'The frame as received. Bytes that are not UTF-8, and NUL characters (which PostgreSQL text '
    'cannot hold), appear as backslash escapes (\xNN).';
