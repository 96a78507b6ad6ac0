"""vlabus: the bus core — transports, the envelope codec, the ZeroMQ hub, record/replay, CLI."""

__version__ = "0.1.0"
