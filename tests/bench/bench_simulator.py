"""Load benchmark of the Deribit simulator: how many notifications per second it delivers.

    uv run python tests/bench/bench_simulator.py [--seconds N] [--rates 20000,40000,...]

For each offered ``--rate`` (market events per second), rising, it starts ``optionfeed
simulate`` and spreads every option of BTC, ETH and USDC over ``--shards`` WebSocket clients
(times ``--replicas``, clients that subscribe to the same share, as redundant collectors do),
each in its own process. Each client authenticates, subscribes to ``--channels`` at
``--interval`` and counts the notifications it receives during a measured window of
``--seconds``. Per stage it prints the notifications per second the clients received in that
window, the simulator's CPU use, and a completeness check: the notifications the simulator's
ledger says it sent to those connections against what the clients received over the whole run.
A stage "kept up" when the clients got at least 99% of what was sent and the simulator skipped
no events (it ran the whole offered rate). At the end it prints the highest rate received in a
stage that kept up, and the exact simulator command of that stage.

The clients are deliberately lean (a hand-written RFC 6455 client that counts frames and checks
each is a subscription notification) so that the measurement is of the simulator, not of a JSON
parser; ``--parse`` makes them decode every frame as well. The machine's other load shares the
same cores, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"listening on http://(?P<host>[\d.]+):(?P<port>\d+)")
NOTIFICATION = b'{"jsonrpc":"2.0","method":"subscription"'
MAX_CHANNELS = 500
MAX_FRAME = 32 * 1024 - 512
CLIENT_ID = "optionfeed-sim"
CLIENT_SECRET = "optionfeed-sim-secret"


# ---------------------------------------------------------------------------- client process


def upgrade_request(host: str, port: int) -> bytes:
    """The HTTP request that opens a WebSocket on the exchange's path."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws/api/v2 HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Counter(asyncio.Protocol):
    """A minimal WebSocket client: handshake, masked requests, unmasked frames counted."""

    def __init__(self, host: str, port: int, parse: bool) -> None:
        self.host, self.port, self.parse = host, port, parse
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.responses: dict[int, asyncio.Future[Any]] = {}
        self.closed = asyncio.get_running_loop().create_future()
        self.notifications = 0
        self.bad = 0
        self.bytes = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(upgrade_request(self.host, self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for future in self.responses.values():
            if not future.done():
                future.set_exception(ConnectionError("the simulator closed the connection"))
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))

    def send_close(self) -> None:
        mask = os.urandom(4)
        body = (1000).to_bytes(2, "big")
        assert self.transport is not None
        self.transport.write(
            bytes((0x88, 0x80 | 2)) + mask + bytes(b ^ mask[i] for i, b in enumerate(body))
        )

    def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes((0x81, 0x80 | n))
        else:
            header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    async def call(self, request_id: int, method: str, params: dict[str, Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.responses[request_id] = future
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self.send(json.dumps(body, separators=(",", ":")).encode())
        return await future

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        self.bytes += len(data)
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(RuntimeError(f"handshake refused: {status!r}"))
                return
            self.upgraded.set_result(None)
        pos, n = 0, len(buf)
        parse = self.parse
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            start = pos + head
            if opcode == 1:
                if buf.startswith(NOTIFICATION, start) and buf[end - 2 : end] == b"}}":
                    self.notifications += 1
                    if parse:
                        json.loads(bytes(buf[start:end]))
                else:
                    self._response(bytes(buf[start:end]))
            elif opcode == 8 and self.transport is not None:
                self.transport.close()  # the server's close frame: nothing follows it
            pos = end
        del buf[:pos]

    def _response(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.bad += 1
            return
        future = self.responses.pop(message.get("id"), None)
        if future is None:
            return
        if "error" in message:
            future.set_exception(RuntimeError(f"error {message['error']}"))
        else:
            future.set_result(message["result"])


def _batches(channels: list[str]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for channel in channels:
        if len(batches[-1]) >= MAX_CHANNELS or size + len(channel) + 3 > MAX_FRAME:
            batches.append([])
            size = 0
        batches[-1].append(channel)
        size += len(channel) + 3
    return [b for b in batches if b]


async def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(  # the parent kills a client that hangs
        lambda: Counter(spec["host"], spec["port"], spec["parse"]), spec["host"], spec["port"]
    )
    await proto.upgraded
    ids = iter(range(1, 1_000_000))
    if spec["interval"] == "raw":
        await proto.call(
            next(ids),
            "public/auth",
            {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        )
    channels = []
    for name in spec["instruments"]:
        for family in spec["channels"]:
            channels.append(
                f"quote.{name}" if family == "quote" else f"{family}.{name}.{spec['interval']}"
            )
    subscribed = 0
    for batch in _batches(channels):
        subscribed += len(await proto.call(next(ids), "public/subscribe", {"channels": batch}))
    # Report readiness, then count over the window the parent announces by start time.
    print(json.dumps({"ready": subscribed}), flush=True)
    # Keep reading the socket while waiting for the parent: a blocked loop is a slow consumer.
    start_at = float(await loop.run_in_executor(None, sys.stdin.readline))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    first = proto.notifications
    t0 = time.perf_counter()
    per_second = []
    for _ in range(int(spec["seconds"])):
        before = proto.notifications
        await asyncio.sleep(1.0)
        per_second.append(proto.notifications - before)
    await asyncio.sleep(max(0.0, spec["seconds"] - (time.perf_counter() - t0)))
    count = proto.notifications - first
    elapsed = time.perf_counter() - t0
    assert proto.transport is not None
    port = proto.transport.get_extra_info("sockname")[1]
    # Say goodbye properly so that everything the server sent before is read: a close frame,
    # then read until the server's close frame ends the stream.
    proto.send_close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proto.closed, 10)
    return {
        "notifications": count,
        "seconds": elapsed,
        "total": proto.notifications,
        "subscribed": subscribed,
        "bad": proto.bad,
        "peer": f"127.0.0.1:{port}",
        "per_second": per_second,
    }


# ---------------------------------------------------------------------------- orchestration


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def totals(base: str) -> dict[str, Any]:
    return get_json(f"{base}/sim/ledger?totals=true")["totals"]  # type: ignore[no-any-return]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def run_stage(rate: float, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "optionfeed", "simulate", "--port", "0", "--seed", str(args.seed),
        "--currencies", args.currencies, "--rate", f"{rate:g}", "--credit-multiplier", "0",
        "--max-connections-per-ip", "0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
    sim = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        match = READY.search(line)
        if match is None:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        port = int(match["port"])
        base = f"http://127.0.0.1:{port}"
        names: list[str] = []
        for currency in args.currencies.split(","):
            url = f"{base}/api/v2/public/get_instruments?currency={currency}&kind=option"
            names.extend(i["instrument_name"] for i in get_json(url)["result"])
        shares = [names[i :: args.shards] for i in range(args.shards)]
        for share in shares:
            for _ in range(args.replicas):
                spec = {
                    "host": "127.0.0.1", "port": port, "instruments": share,
                    "channels": args.channels.split(","), "interval": args.interval,
                    "seconds": args.seconds, "parse": args.parse,
                }  # fmt: skip
                client = subprocess.Popen(
                    [sys.executable, __file__, "--client", json.dumps(spec)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                clients.append(client)
        subscribed = 0
        for client in clients:
            assert client.stdout is not None
            line = client.stdout.readline()
            if not line:
                raise RuntimeError("a client failed before it was subscribed (see its stderr)")
            subscribed += json.loads(line)["ready"]
        start_at = time.time() + args.warmup
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"{start_at}\n")
            client.stdin.flush()
        time.sleep(max(0.0, start_at - time.time()))
        skipped_before = totals(base)["overload_skipped_ms"]
        cpu_before, t0 = cpu_seconds(sim.pid), time.time()
        time.sleep(args.seconds)
        cpu_after, t1 = cpu_seconds(sim.pid), time.time()
        skipped = totals(base)["overload_skipped_ms"] - skipped_before
        reports = []
        for client in clients:
            out, _ = client.communicate(timeout=120)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        ledger = get_json(f"{base}/sim/ledger?instrument=-")
        peers = {r["peer"] for r in reports}
        sent = sum(c["notifications"] for c in ledger["connections"].values() if c["peer"] in peers)
        return {
            "rate": rate,
            "instruments": len(names),
            "channels": subscribed,
            "clients": len(clients),
            "received_per_s": sum(r["notifications"] for r in reports)
            / max(r["seconds"] for r in reports),
            "received_total": sum(r["total"] for r in reports),
            "sent_total": sent,
            "skipped_ms": skipped,
            "per_second": [sum(x) for x in zip(*(r["per_second"] for r in reports), strict=True)],
            "cpu": (cpu_after - cpu_before) / (t1 - t0),
            "command": shlex.join(["optionfeed", *command[3:]]),
        }
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        sim.terminate()
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per stage")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument(
        "--rates", default="10000,20000,30000,40000", help="offered --rate values, rising"
    )
    parser.add_argument(
        "--shards", type=int, default=2, help="client processes sharing the options"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="clients per share (each gets the same channels)"
    )
    parser.add_argument("--channels", default="ticker,book,quote,trades")
    parser.add_argument("--interval", default="raw", choices=["raw", "100ms", "agg2"])
    parser.add_argument("--currencies", default="BTC,ETH,USDC")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parse", action="store_true", help="clients also decode every frame")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        result = asyncio.run(client_main(json.loads(args.client)))
        print(json.dumps(result), flush=True)
        return 0
    from bench_copy import machine  # the script's folder is on sys.path; clients skip it

    print(f"machine: {machine()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"clients: {args.shards} shard(s) x {args.replicas} replica(s), each its own process; "
        f"channels {args.channels} at {args.interval}; {args.seconds:g} s measured after "
        f"{args.warmup:g} s warm-up",
        flush=True,
    )
    best: dict[str, Any] | None = None
    for rate in (float(r) for r in args.rates.split(",")):
        stage = run_stage(rate, args)
        complete = stage["received_total"] >= 0.99 * stage["sent_total"]
        kept_up = complete and stage["skipped_ms"] == 0
        verdict = (
            "kept up"
            if kept_up
            else (
                "simulator overloaded: skipped events"
                if stage["skipped_ms"]
                else "clients fell behind"
            )
        )
        print(
            f"--rate {rate:>8g}: clients received {stage['received_per_s']:>10,.0f} "
            f"notifications/s on {stage['channels']} channels ({stage['instruments']} "
            f"instruments, {stage['clients']} connections); simulator CPU {stage['cpu']:.0%}; "
            f"ledger sent {stage['sent_total']:,}, clients got {stage['received_total']:,}: "
            f"{verdict}",
            flush=True,
        )
        print(f"    command: {stage['command']}", flush=True)
        if kept_up and (best is None or stage["received_per_s"] > best["received_per_s"]):
            best = stage
    if best is None:
        print("no stage kept up")
        return 1
    print(
        f"highest rate reached: {best['received_per_s']:,.0f} notifications/s received by "
        f"{best['clients']} clients"
    )
    print(f"    command: {best['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
