"""The measurements behind the choice of libraries (docs/decisions.md).

    uv run python tests/bench/bench_libraries.py [--runs 5] [--messages 100000]
        [--clients 4] [--per-client 25000] [--skip receive,send,kube]

1. **Receive path** (the collector's): a client receives a stream of real Deribit notifications
   (the 135 ticker and book notifications of ``tests/data/deribit/ws-options-2021-07-22.txt``,
   cycled to ``--messages``) from a local server on 127.0.0.1 and decodes each with
   ``orjson.loads``, checking it is a subscription notification, as the collector's read loop
   does. The client is aiohttp (``ws_connect(decode_text=False)``, ``receive()``) or websockets
   (``connect(compression=None)``, ``recv(decode=False)``). The server is the same for both: a
   bare asyncio socket writing the frames built by ``optionfeed.simulator.frames``. Figures:
   frames/s between the first and the last frame, and the client's CPU seconds per message.
2. **Send path** (the simulator's): a server sends ``--per-client`` of those notifications to each
   of ``--clients`` connections, then closes them: aiohttp (``WebSocketResponse.send_frame``),
   websockets (``ServerConnection.send(text=True)``), and the simulator's own way (aiohttp for the
   handshake, frames prebuilt once and written to the transport below a 1 MiB high-water mark).
   The clients are lean raw-socket readers in another process that count frames. Figures:
   frames/s from the moment all clients are connected until all are closed, and the server's
   CPU seconds per frame.
3. **Kubernetes clients** (the operator's): lightkube (the version installed), kubernetes (its
   synchronous ``kubernetes.client`` and its asyncio ``kubernetes.aio``) and
   kubernetes_asyncio (latest), each in a throwaway virtual environment of its own: the
   distributions it installs and their size on disk, then per fresh interpreter the import time
   of what an operator needs (client, Deployment and ConfigMap types) and the RSS after import
   and after creating a client.

Every A/B pair runs ``--runs`` times, interleaved (the order rotates from run to run), each
in fresh processes, and the figures are the median and the range (min-max). websockets,
kubernetes and kubernetes_asyncio are not the project's dependencies: they are installed with uv
into throwaway virtual environments under ``--envs`` (git-ignored ``bench-results/``), built on
the same interpreter; aiohttp, orjson and lightkube are the project's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from bench_simulator import upgrade_request

from harness.builds import uv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CAPTURE = ROOT / "tests" / "data" / "deribit" / "ws-options-2021-07-22.txt"
RECEIVED = re.compile(rb"^\d+(?:\.\d+)?: (?P<json>.*)$")
NOTIFICATION = b'{"jsonrpc":"2.0","method":"subscription"'
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 16 * 1024 * 1024  # the collector's max_msg_size
HIGH_WATER = 1024 * 1024  # the simulator's TRANSPORT_HIGH_WATER
CHILD_TIMEOUT = 300.0
SERVER = "https://127.0.0.1:6443"  # never contacted: a client is created, not used
LIBRARIES = {
    # name: (requirement, imports, client creation, client close); None: the project's version
    "lightkube": (
        None,
        "from lightkube import AsyncClient\n"
        "from lightkube.config.kubeconfig import KubeConfig\n"
        "from lightkube.config.models import Cluster, User\n"
        "from lightkube.resources.apps_v1 import Deployment\n"
        "from lightkube.resources.core_v1 import ConfigMap\n",
        f"config = KubeConfig.from_one(cluster=Cluster(server={SERVER!r}), user=User(token='t'))\n"
        "client = AsyncClient(config)\n",
        "await client.close()\n",
    ),
    "kubernetes": (
        "kubernetes",
        "from kubernetes import client as k\n"
        "from kubernetes.client import V1ConfigMap, V1Deployment\n",
        f"api = k.ApiClient(k.Configuration(host={SERVER!r}))\n"
        "apps, core = k.AppsV1Api(api), k.CoreV1Api(api)\n",
        "api.close()\n",
    ),
    "kubernetes.aio": (
        "kubernetes",
        "from kubernetes.aio import client as k\n"
        "from kubernetes.aio.client import V1ConfigMap, V1Deployment\n",
        f"api = k.ApiClient(k.Configuration(host={SERVER!r}))\n"
        "apps, core = k.AppsV1Api(api), k.CoreV1Api(api)\n",
        "await api.close()\n",
    ),
    "kubernetes_asyncio": (
        "kubernetes_asyncio",
        "from kubernetes_asyncio import client as k\n"
        "from kubernetes_asyncio.client import V1ConfigMap, V1Deployment\n",
        f"api = k.ApiClient(k.Configuration(host={SERVER!r}))\n"
        "apps, core = k.AppsV1Api(api), k.CoreV1Api(api)\n",
        "await api.close()\n",
    ),
}
PROBE = """\
import asyncio, json, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
start_rss = rss()
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
import_rss = rss()
async def make():
{create}
    t2 = time.perf_counter()
    client_rss = rss()
{close}
    return t2, client_rss
t2, client_rss = asyncio.run(make())
print(json.dumps({{"import_s": t1 - t0, "client_s": t2 - t1, "rss_start": start_rss,
                  "rss_import": import_rss, "rss_client": client_rss}}))
"""


# ---------------------------------------------------------------------------- payloads


def notifications() -> list[bytes]:
    """The captured subscription notifications, byte for byte as Deribit sent them."""
    found = []
    for line in CAPTURE.read_bytes().splitlines():
        match = RECEIVED.match(line)
        if match and match["json"].startswith(NOTIFICATION):
            found.append(match["json"])
    assert len(found) == 135, f"expected the capture's 135 notifications, found {len(found)}"
    return found


def cycled(payloads: list[bytes], n: int) -> list[bytes]:
    return [payloads[i % len(payloads)] for i in range(n)]


def cpu() -> float:
    return time.process_time()


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


# ---------------------------------------------------------------------------- child roles


async def feed(messages: int) -> None:
    """The receive path's server: one connection, the frames the simulator builds, then close."""
    from optionfeed.simulator import frames

    payloads = notifications()
    blob = b"".join(frames.text_frame(p) for p in payloads)
    rest = b"".join(frames.text_frame(p) for p in payloads[: messages % len(payloads)])
    done = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", request)
        assert key is not None
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key[1]) + b"\r\n\r\n"
        )
        for _ in range(messages // len(payloads)):
            writer.write(blob)
            await writer.drain()
        writer.write(rest + frames.close_frame(1000))
        await writer.drain()
        # The client sends nothing but its close frame; the server then ends the TCP connection.
        await reader.read(65536)
        writer.close()
        done.set_result(None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    await done
    server.close()


def check(frame: Any) -> bool:
    return type(frame) is dict and frame.get("method") == "subscription"


async def receive_aiohttp(port: int, messages: int) -> dict[str, float]:
    import aiohttp
    import orjson

    loads, text = orjson.loads, aiohttp.WSMsgType.TEXT
    n = bad = 0
    t0 = c0 = 0.0
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"ws://127.0.0.1:{port}/ws/api/v2",
            autoping=True,
            max_msg_size=MAX_MESSAGE,
            decode_text=False,
        ) as ws,
    ):
        while n < messages:
            msg = await ws.receive()
            if msg.type is not text:
                break
            if n == 0:
                t0, c0 = time.perf_counter(), cpu()
            n += 1
            if not check(loads(msg.data)):
                bad += 1
        t1, c1 = time.perf_counter(), cpu()
    return {"messages": n, "bad": bad, "seconds": t1 - t0, "cpu": c1 - c0}


async def receive_websockets(port: int, messages: int) -> dict[str, float]:
    import orjson
    from websockets.asyncio.client import connect

    loads = orjson.loads
    n = bad = 0
    t0 = c0 = 0.0
    async with connect(
        f"ws://127.0.0.1:{port}/ws/api/v2", compression=None, max_size=MAX_MESSAGE
    ) as ws:
        while n < messages:
            raw = await ws.recv(decode=False)
            if n == 0:
                t0, c0 = time.perf_counter(), cpu()
            n += 1
            if not check(loads(raw)):
                bad += 1
        t1, c1 = time.perf_counter(), cpu()
    return {"messages": n, "bad": bad, "seconds": t1 - t0, "cpu": c1 - c0}


class Timing:
    """When the last of ``clients`` connected, and the process's CPU time then."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.connected = 0
        self.ready = asyncio.Event()
        self.t0 = self.c0 = 0.0

    async def arrive(self) -> None:
        self.connected += 1
        if self.connected == self.clients:
            self.t0, self.c0 = time.perf_counter(), cpu()
            self.ready.set()
        await self.ready.wait()

    def result(self, frames: int) -> dict[str, float]:
        return {"frames": frames, "seconds": time.perf_counter() - self.t0, "cpu": cpu() - self.c0}


async def send_aiohttp(clients: int, per_client: int, prebuilt: bool) -> dict[str, float]:
    from aiohttp import WSMsgType, web

    from optionfeed.simulator import frames

    payloads = cycled(notifications(), per_client)
    blob = b"".join(frames.text_frame(p) for p in payloads)
    timing, finished = Timing(clients), asyncio.Event()
    closed = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal closed
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False, autoping=True)
        await ws.prepare(request)
        await timing.arrive()
        if prebuilt:
            transport = request.transport
            assert transport is not None
            step = 1024 * 1024
            for i in range(0, len(blob), step):
                while transport.get_write_buffer_size() > HIGH_WATER:
                    await asyncio.sleep(0.005)  # the simulator's pump cycle
                transport.write(blob[i : i + step])
        else:
            for payload in payloads:
                await ws.send_frame(payload, WSMsgType.TEXT)
        await ws.close()
        closed += 1
        if closed == clients:
            finished.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws/api/v2", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.addresses
    print(f"port {runner.addresses[0][1]}", flush=True)
    await finished.wait()
    result = timing.result(clients * per_client)
    await runner.cleanup()
    return result


async def send_websockets(clients: int, per_client: int) -> dict[str, float]:
    from websockets.asyncio.server import ServerConnection, serve

    payloads = cycled(notifications(), per_client)
    timing, finished = Timing(clients), asyncio.Event()
    closed = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal closed
        await timing.arrive()
        for payload in payloads:
            await ws.send(payload, text=True)
        await ws.close()
        closed += 1
        if closed == clients:
            finished.set()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=MAX_MESSAGE) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await finished.wait()
        return timing.result(clients * per_client)


class Sink(asyncio.Protocol):
    """A lean WebSocket client: handshake, counts unmasked text frames, answers the close."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.buf = bytearray()
        self.upgraded = False
        self.frames = 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(upgrade_request("127.0.0.1", self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            assert buf.startswith(b"HTTP/1.1 101"), bytes(buf[:80])
            del buf[: end + 4]
            self.upgraded = True
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + n:
                break
            if opcode == 0x1:
                self.frames += 1
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.write(bytes((0x88, 0x82)) + bytes(4) + (1000).to_bytes(2, "big"))
            pos += head + n
        del buf[:pos]


async def sink(port: int, clients: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sinks = [Sink(port) for _ in range(clients)]
    for s in sinks:
        await loop.create_connection(lambda s=s: s, "127.0.0.1", port)  # type: ignore[misc]
    await asyncio.gather(*(s.done for s in sinks))
    return {"frames": sum(s.frames for s in sinks)}


# ---------------------------------------------------------------------------- orchestration


def version(distribution: str) -> str:
    from importlib.metadata import version as installed

    return installed(distribution)


def throwaway_env(envs: Path, name: str, requirements: Sequence[str]) -> Path:
    """A virtual environment on this interpreter holding ``requirements``; its python."""
    where = envs / name
    python = where / "bin" / "python"
    stamp = where / "requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        shutil.rmtree(where, ignore_errors=True)
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        env.pop("VIRTUAL_ENV", None)
        run = [uv(), "--quiet"]
        subprocess.run([*run, "venv", "--python", sys.executable, str(where)], check=True, env=env)
        subprocess.run(
            [*run, "pip", "install", "--python", str(python), "--compile-bytecode", *requirements],
            check=True,
            env=env,
        )
        stamp.write_text(wanted)
    return python


def child(python: Path | str, args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(python), str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def port_of(server: subprocess.Popen[str]) -> int:
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("port "):
        server.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return int(line.split()[1])


def last_json(process: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = process.communicate(timeout=CHILD_TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def receive_once(python: Path, library: str, messages: int) -> dict[str, float]:
    server = child(sys.executable, ["--role", "feed", "--messages", str(messages)])
    try:
        port = str(port_of(server))
        client = child(python, ["--role", f"receive-{library}", "--port", port,
                                "--messages", str(messages)])  # fmt: skip
        result = last_json(client)
        server.wait(timeout=CHILD_TIMEOUT)
    finally:
        server.kill()
    if result["messages"] != messages or result["bad"]:
        raise RuntimeError(f"{library} received {result}, expected {messages} notifications")
    return {
        "frames_per_s": result["messages"] / result["seconds"],
        "cpu_us_per_msg": result["cpu"] / result["messages"] * 1e6,
    }


def send_once(python: Path, variant: str, clients: int, per_client: int) -> dict[str, float]:
    server = child(python, ["--role", f"send-{variant}", "--clients", str(clients),
                            "--per-client", str(per_client)])  # fmt: skip
    try:
        port = str(port_of(server))
        counts = last_json(child(sys.executable, ["--role", "sink", "--port", port,
                                                  "--clients", str(clients)]))  # fmt: skip
        result = last_json(server)
    finally:
        server.kill()
    if counts["frames"] != clients * per_client:
        raise RuntimeError(f"{variant}: clients got {counts['frames']} of {result['frames']}")
    return {
        "frames_per_s": result["frames"] / result["seconds"],
        "cpu_us_per_msg": result["cpu"] / result["frames"] * 1e6,
    }


def probe_once(python: Path, imports: str, create: str, close: str) -> dict[str, float]:
    """One fresh interpreter: import, create a client, with times and RSS."""

    def indent(code: str) -> str:
        return "".join(f"    {line}\n" for line in code.splitlines())

    code = PROBE.format(imports=imports, create=indent(create), close=indent(close))
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def interleaved(
    names: Sequence[str], runs: int, measure: Callable[[str], dict[str, float]]
) -> dict[str, list[dict[str, float]]]:
    """``runs`` rounds, each measuring every name once; the order turns each round."""
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(runs):
        order = list(names[r % len(names) :]) + list(names[: r % len(names)])
        for name in order:
            results[name].append(measure(name))
            print(f"  run {r + 1}/{runs} {name}: {fmt_sample(results[name][-1])}", flush=True)
    return results


def fmt_sample(sample: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.1f}" for k, v in sample.items())


def spread(values: Sequence[float], digits: int = 0) -> str:
    """median (min-max, n)."""
    f = f"{{:,.{digits}f}}"
    return (
        f"{f.format(statistics.median(values))} "
        f"({f.format(min(values))}-{f.format(max(values))}, n={len(values)})"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def ws_tables(results: dict[str, list[dict[str, float]]]) -> None:
    table(
        ["library", "frames/s: median (min-max, n)", "CPU us/message: median (min-max, n)"],
        [
            [
                name,
                spread([s["frames_per_s"] for s in samples]),
                spread([s["cpu_us_per_msg"] for s in samples], 1),
            ]
            for name, samples in results.items()
        ],
    )


def extensions(aiohttp_python: Path, ws_python: Path) -> str:
    """Whether each library runs its compiled frame reader/masking, as installed."""
    aiohttp_reader = subprocess.run(
        [str(aiohttp_python), "-c",
         "from aiohttp._websocket import reader; print(reader.WebSocketReader.__module__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ws_speedups = (
        subprocess.run(
            [str(ws_python), "-c", "import websockets.speedups"], capture_output=True
        ).returncode
        == 0
    )
    return (
        f"aiohttp reader {aiohttp_reader}; websockets.speedups "
        f"{'present' if ws_speedups else 'absent'}"
    )


def site_size(python: Path) -> int:
    lib = next((python.parent.parent / "lib").glob("python*/site-packages"))
    return sum(
        p.stat().st_size for p in lib.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def distributions(python: Path) -> list[str]:
    out = subprocess.run(
        [uv(), "pip", "list", "--python", str(python), "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(f"{d['name']}=={d['version']}" for d in json.loads(out))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per A/B pair")
    parser.add_argument("--messages", type=int, default=100_000, help="receive path: frames")
    parser.add_argument("--clients", type=int, default=4, help="send path: connections")
    parser.add_argument("--per-client", type=int, default=25_000, help="send path: frames each")
    parser.add_argument("--skip", default="", help="comma list of: receive, send, kube")
    parser.add_argument("--envs", type=Path, default=ROOT / "bench-results" / "library-envs")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return role(args)

    from bench_copy import machine

    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    print("optionfeed benchmark: the choice of libraries")
    print(f"machine:  {machine()}")
    command = f"uv run python tests/bench/bench_libraries.py {shlex.join(sys.argv[1:])}"
    print(f"command:  {command.rstrip()}")
    print(f"python:   {sys.version.split()[0]}; aiohttp {version('aiohttp')}, "
          f"orjson {version('orjson')}, lightkube {version('lightkube')}")  # fmt: skip

    if skip >= {"receive", "send"}:
        ws_python = Path(sys.executable)
    else:
        ws_python = throwaway_env(
            args.envs, "websockets", ["websockets", f"orjson=={version('orjson')}"]
        )
        ws_version = subprocess.run(
            [str(ws_python), "-c", "import websockets; print(websockets.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        print(f"websockets {ws_version} in a throwaway environment ({ws_python.parent.parent})")
        print(f"C extensions: {extensions(Path(sys.executable), ws_python)}")
    pythons = {"aiohttp": Path(sys.executable), "websockets": ws_python}

    if "receive" not in skip:
        print(f"\n1. receive path: {args.messages:,} captured notifications, one client, orjson")
        received = interleaved(
            ["aiohttp", "websockets"],
            args.runs,
            lambda lib: receive_once(pythons[lib], lib, args.messages),
        )
        print()
        ws_tables(received)

    if "send" not in skip:
        print(
            f"\n2. send path: {args.clients} clients x {args.per_client:,} captured "
            "notifications; server CPU"
        )
        variants = {"aiohttp": "aiohttp", "websockets": "websockets",
                    "aiohttp+prebuilt (simulator)": "prebuilt"}  # fmt: skip
        sent = interleaved(
            list(variants),
            args.runs,
            lambda v: send_once(
                pythons["websockets" if v == "websockets" else "aiohttp"],
                variants[v],
                args.clients,
                args.per_client,
            ),
        )
        print()
        ws_tables(sent)

    if "kube" not in skip:
        print("\n3. Kubernetes clients: installed footprint, import time, RSS")
        kube_pythons = {}
        for name, (requirement, *_) in LIBRARIES.items():
            spec = requirement or f"lightkube=={version('lightkube')}"
            kube_pythons[name] = throwaway_env(args.envs, spec.split("=")[0], [spec])
        footprint = {}
        for name, python in kube_pythons.items():
            dists = distributions(python)
            footprint[name] = (len(dists), site_size(python) / 1e6)
            print(f"  {name} ({python.parent.parent.name}): {len(dists)} distributions: "
                  f"{' '.join(dists)}")  # fmt: skip
        for name, python in kube_pythons.items():  # a first import, not counted
            probe_once(python, *LIBRARIES[name][1:])
        probes = interleaved(
            list(LIBRARIES),
            args.runs,
            lambda n: probe_once(kube_pythons[n], *LIBRARIES[n][1:]),
        )
        print()
        table(
            ["client", "dists", "MB on disk", "import ms", "RSS after import MB",
             "RSS with a client MB", "bare interpreter MB"],
            [
                [
                    name,
                    str(footprint[name][0]),
                    f"{footprint[name][1]:.1f}",
                    spread([s["import_s"] * 1000 for s in samples]),
                    spread([s["rss_import"] for s in samples], 1),
                    spread([s["rss_client"] for s in samples], 1),
                    spread([s["rss_start"] for s in samples], 1),
                ]
                for name, samples in probes.items()
            ],
        )  # fmt: skip
        print(
            "async: lightkube.AsyncClient (httpx), kubernetes.aio and kubernetes_asyncio (both "
            "aiohttp) are asyncio clients; kubernetes.client is synchronous (urllib3): under kopf "
            "each of its calls would need a thread"
        )
    print(f"\nload average after: {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


def role(args: argparse.Namespace) -> int:
    result: dict[str, float] | None
    match args.role:
        case "feed":
            asyncio.run(feed(args.messages))
            return 0
        case "receive-aiohttp":
            result = asyncio.run(receive_aiohttp(args.port, args.messages))
        case "receive-websockets":
            result = asyncio.run(receive_websockets(args.port, args.messages))
        case "send-aiohttp":
            result = asyncio.run(send_aiohttp(args.clients, args.per_client, prebuilt=False))
        case "send-prebuilt":
            result = asyncio.run(send_aiohttp(args.clients, args.per_client, prebuilt=True))
        case "send-websockets":
            result = asyncio.run(send_websockets(args.clients, args.per_client))
        case "sink":
            result = asyncio.run(sink(args.port, args.clients))
        case _:
            raise SystemExit(f"unknown role {args.role}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
