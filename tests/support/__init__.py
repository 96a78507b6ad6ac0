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
- ``mosquitto`` and ``hub`` (pytest plugins): a real Mosquitto and a real ZeroMQ hub.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (where pyproject.toml is)."""
