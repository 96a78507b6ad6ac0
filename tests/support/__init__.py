"""Helpers shared by the test suites, each defined once (no tests here).

- ``aio``: ``run`` (an event loop with an overall timeout), ``eventually`` (poll a condition),
  ``recv`` and ``collect`` (bounded receives).
- ``clock``: ``FakeClock``, the injected clock that moves only when a test says so.
- ``frames``: ``make_frame``, the one ``Frame`` builder.
- ``keys``: ``KeyDir`` and the identities of the session keyring (the ``keydir`` fixture).
- ``wire``: a small signed fleet and crafted envelopes for the wire tests.
- ``logs``: synthetic MCAP recordings.
- ``robot``: a robot client speaking the real wire format; ``serving``, a worker on any bus.
- ``edge``: ``FakeCloud``, ``TinyPolicy``, ``SlowPolicy`` for the edge agent.
- ``buses``: the contract suite's view of a bus (``Bus``, ``settle``, ``until_marker``).
- ``policies``: policies the CLI loads by ``module:factory`` in tests.
- ``services``: a deployment's services run as local processes.
- ``mosquitto``, ``hub`` and ``install`` (pytest plugins): a real Mosquitto, a real ZeroMQ hub,
  vlabus built and installed from this checkout.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (where pyproject.toml is)."""
