"""OpenTelemetry traces: set up from the standard ``OTEL_*`` variables, or not at all.

Callers: ``optionfeed collect`` and ``optionfeed operator`` call :func:`setup` once at start and
:meth:`Tracing.shutdown` on exit, which exports the spans still queued. Everywhere else spans are
made through the OpenTelemetry API (``trace.get_tracer(__name__)``), which needs no setup: until a
provider is installed its tracer hands out non-recording spans, so a process without an endpoint
pays a few attribute-free calls per batch and nothing per message.

What is read, all standard (the SDK and the exporter read them themselves):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``: where spans go. With
  neither, nothing is set up. ``OTEL_SDK_DISABLED=true`` also turns tracing off.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``..._TRACES_PROTOCOL``: only ``http/protobuf`` is shipped
  (the gRPC exporter would bring grpcio, a large native dependency, into every image); any other
  value is reported and spans go over HTTP.
- ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``, ``..._CERTIFICATE``:
  the exporter's own settings.
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource; they override the defaults
  passed to :func:`setup` (service name, ``service.version``, feed, shard).
- ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler (default: parent-based,
  always on).
- ``OTEL_BSP_*``: the batch span processor's queue and schedule.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SUPPORTED_PROTOCOL = "http/protobuf"

# Resource attribute names for a collector's identity (the operator's manifests set the same).
FEED_ATTRIBUTE = "optionfeed.feed"
SHARD_ATTRIBUTE = "optionfeed.shard"
POD_ATTRIBUTE = "k8s.pod.name"

_PROPAGATOR = TraceContextTextMapPropagator()


def endpoint(environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP endpoint tracing would export to, or None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(slots=True)
class Tracing:
    """An installed tracer provider; :meth:`shutdown` exports what is queued and stops it."""

    provider: TracerProvider
    endpoint: str

    def shutdown(self) -> None:
        # shutdown() flushes the batch processor first; a receiver that is down costs at most
        # the exporter's timeout here, never a hang.
        self.provider.shutdown()


def setup(
    service_name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Tracing | None:
    """Install a tracer provider exporting over OTLP/HTTP when an endpoint is configured.

    Returns None, having touched nothing, when tracing is off. ``service_name`` and
    ``attributes`` are defaults for the resource; ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` override them.
    """
    target = endpoint(environ)
    if target is None:
        return None
    # The SDK and the exporter are imported only here: a process without tracing never loads
    # them (nor protobuf and requests behind the exporter).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from optionfeed import __version__

    for name in PROTOCOL_VARIABLES:
        protocol = environ.get(name, "").strip()
        if protocol and protocol != SUPPORTED_PROTOCOL:
            log.warning(
                "%s=%s: this build exports traces over %s only; using that",
                name,
                protocol,
                SUPPORTED_PROTOCOL,
            )
            break
    defaults: dict[str, AttributeValue] = {
        SERVICE_NAME: service_name,
        SERVICE_VERSION: __version__,
        **(attributes or {}),
    }
    detected = Resource.create()  # the SDK's own attributes and the OTEL_* variables
    merged = dict(defaults)
    for key, value in detected.attributes.items():
        if key == SERVICE_NAME and str(value).startswith("unknown_service"):
            continue  # the SDK's placeholder when OTEL_SERVICE_NAME is unset
        merged[key] = value
    provider = TracerProvider(resource=Resource(merged))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info(
        "exporting traces to %s as %s (OTLP %s)", target, merged[SERVICE_NAME], SUPPORTED_PROTOCOL
    )
    return Tracing(provider, target)


# --- carrying a span across processes -------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None when it records nothing."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def link_to(traceparent: str | None) -> list[trace.Link]:
    """A link to the span a ``traceparent`` names; none when it is absent or malformed."""
    if not traceparent:
        return []
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return []
    return [trace.Link(span_context)]
