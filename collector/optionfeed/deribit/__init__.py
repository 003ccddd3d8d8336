"""The Deribit protocol, once: names, channels, JSON-RPC framing, payload shapes, credits,
ranking, and the REST client. The simulator and the collector both build on it."""
