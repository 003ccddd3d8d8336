"""Telemetry of a collector: Prometheus metrics, health probes, traces."""
