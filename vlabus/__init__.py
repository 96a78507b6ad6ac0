"""vlabus: the bus core — transports, the envelope codec, the ZeroMQ hub, record/replay, CLI."""

import importlib.metadata as _md

__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version; ``__version__`` when run from a bare checkout."""
    try:
        return _md.version("vlabus")
    except _md.PackageNotFoundError:
        return __version__
