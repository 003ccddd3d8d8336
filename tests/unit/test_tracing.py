"""optionfeed.telemetry.tracing: off without an endpoint, and the trace context between processes.

Exporting for real is tested against a real receiver (tests/integration/test_collector_tracing.py,
tests/kube/test_operator_tracing.py); these tests never install a global tracer provider.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from optionfeed.telemetry import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces",
            },
            "http://t:4318/v1/traces",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"},
            "http://c:4318",
        ),
    ],
)
def test_the_endpoint_comes_from_the_standard_variables(
    environ: dict[str, str], expected: str | None
) -> None:
    assert tracing.endpoint(environ) == expected


def test_without_an_endpoint_nothing_is_set_up_or_even_imported() -> None:
    # A fresh interpreter: the SDK and the exporter must not be loaded at all.
    code = (
        "import sys\n"
        "from optionfeed.telemetry import tracing\n"
        "from opentelemetry import trace\n"
        "assert tracing.setup('optionfeed-collector', environ={}) is None\n"
        "assert not any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))"
        " for m in sys.modules), sorted(m for m in sys.modules if 'opentelemetry' in m)\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "span = trace.get_tracer('t').start_span('x')\n"
        "assert not span.is_recording()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_traceparent_becomes_a_link_to_the_span_it_names() -> None:
    (link,) = tracing.link_to(f"00-{TRACE_ID}-{SPAN_ID}-01")
    assert format(link.context.trace_id, "032x") == TRACE_ID
    assert format(link.context.span_id, "016x") == SPAN_ID
    assert link.context.is_remote


@pytest.mark.parametrize("value", [None, "", "garbage", f"00-{'0' * 32}-{SPAN_ID}-01"])
def test_no_link_from_a_missing_or_malformed_traceparent(value: str | None) -> None:
    assert tracing.link_to(value) == []


def test_the_current_span_is_carried_as_a_traceparent() -> None:
    assert tracing.current_traceparent() is None  # no span
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("pass") as span:
        carried = tracing.current_traceparent()
        context = span.get_span_context()
    assert carried is not None
    _, trace_id, span_id, _ = carried.split("-")
    assert (int(trace_id, 16), int(span_id, 16)) == (context.trace_id, context.span_id)
    (link,) = tracing.link_to(carried)
    assert link.context.span_id == context.span_id
    with trace.use_span(trace.INVALID_SPAN):
        assert tracing.current_traceparent() is None
