"""A real OTLP receiver for the tracing tests: an OpenTelemetry Collector on 127.0.0.1.

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}   # http://127.0.0.1:PORT
        ...  # run something that exports spans
        spans = receiver.wait_for(lambda spans: any(s.name == "optionfeed.flush" for s in spans))

The binary is built from Go modules by ``build-otel-receiver.sh`` and cached (built here when it
is missing, with its progress on stderr). It takes OTLP/HTTP on a port of its own and writes what
it receives with the file exporter, one OTLP/JSON document per line, which :meth:`spans` reads
back: every span with its resource and its attributes decoded to plain Python values.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import builds, processes
from harness.ports import free_port
from harness.processes import Service, die_with_parent

HARNESS_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = HARNESS_DIR / "build-otel-receiver.sh"
READY_LINE = "Everything is ready"


class ReceiverError(RuntimeError):
    """The receiver could not be built or started, or the spans waited for never came."""


def ensure_receiver() -> Path:
    """The receiver's binary, building it first when it is not cached (minutes when cold)."""
    try:
        return builds.ensure_built(BUILD_SCRIPT, check_flag="--print-bin")
    except builds.BuildFailed as exc:
        raise ReceiverError(str(exc)) from exc


def _value(value: Mapping[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as a Python value (64-bit integers arrive as strings)."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items or ()}


@dataclass(frozen=True)
class Span:
    """One received span, decoded."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    events: list[str] = field(default_factory=list)

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def parse_export(document: Mapping[str, Any]) -> list[Span]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest``."""
    spans: list[Span] = []
    for resource_spans in document.get("resourceSpans", ()):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans", ()):
            scope = scope_spans.get("scope", {}).get("name", "")
            for raw in scope_spans.get("spans", ()):
                spans.append(
                    Span(
                        name=raw["name"],
                        trace_id=raw["traceId"],
                        span_id=raw["spanId"],
                        parent_span_id=raw.get("parentSpanId", ""),
                        kind=int(raw.get("kind", 0)),
                        start_ns=int(raw.get("startTimeUnixNano", 0)),
                        end_ns=int(raw.get("endTimeUnixNano", 0)),
                        status_code=int(raw.get("status", {}).get("code", 0)),
                        attributes=_attributes(raw.get("attributes")),
                        resource=resource,
                        scope=scope,
                        links=[(link["traceId"], link["spanId"]) for link in raw.get("links", ())],
                        events=[event.get("name", "") for event in raw.get("events", ())],
                    )
                )
    return spans


class OtlpReceiver(Service):
    """One collector process taking OTLP/HTTP on 127.0.0.1; a context manager."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="optionfeed-otlp-"))
        self.spans_path = self._dir / "spans.jsonl"
        self.log_path = self._dir / "receiver.log"
        self._log = self.log_path.open("wb")

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        return json.dumps(  # JSON is YAML: no YAML writer needed
            {
                "receivers": {
                    "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.port}"}}}
                },
                "exporters": {"file": {"path": str(self.spans_path), "flush_interval": "100ms"}},
                "service": {
                    # No metrics server of its own: tests run several receivers side by side.
                    "telemetry": {"metrics": {"level": "none"}},
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                },
            }
        )

    def start(self) -> OtlpReceiver:
        binary = ensure_receiver()
        self.port = free_port()
        config = self._dir / "config.yaml"
        config.write_text(self._config())
        self.process = subprocess.Popen(
            [str(binary), "--config", f"file:{config}"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self.startup_timeout
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise ReceiverError(
                    f"the OTLP receiver exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ReceiverError(
                    f"the OTLP receiver was not ready within {self.startup_timeout:g} s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def spans(self) -> list[Span]:
        """Every span received so far (a line still being written is left for the next call)."""
        try:
            text = self.spans_path.read_text()
        except FileNotFoundError:
            return []
        spans: list[Span] = []
        for line in text.splitlines():
            try:
                document = json.loads(line)
            except ValueError:
                continue
            spans.extend(parse_export(document))
        return spans

    def wait_for(
        self, condition: Callable[[list[Span]], bool], timeout: float = 60.0, what: str = ""
    ) -> list[Span]:
        """Poll the received spans until ``condition`` holds; the spans, or ReceiverError."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                names: dict[str, int] = {}
                for span in spans:
                    names[f"{span.service}/{span.name}"] = (
                        names.get(f"{span.service}/{span.name}", 0) + 1
                    )
                raise ReceiverError(
                    f"spans never showed {what or 'the condition'} within {timeout:g} s; "
                    f"received: {names}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        processes.stop(self.process)
        with contextlib.suppress(OSError):
            self._log.close()


def by_name(spans: list[Span], name: str, service: str | None = None) -> list[Span]:
    return [s for s in spans if s.name == name and (service is None or s.service == service)]
