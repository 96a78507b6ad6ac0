"""Gateways: other projects' policy protocols in front of a vlabus worker pool.

* :mod:`vlabus.gateway.openpi` — openpi's WebSocket policy server protocol, so an unmodified
  ``openpi_client.websocket_client_policy.WebsocketClientPolicy`` gets its actions from vlabus
  workers (``vlabus gateway openpi``, docs/openpi.md).

The pieces: :mod:`~vlabus.gateway.npwire` (MessagePack with NumPy arrays, checked),
:mod:`~vlabus.gateway.mapping` (openpi observation keys -> cameras, state, command) and
:mod:`~vlabus.gateway.remote` (one signed request/reply over the bus, with a deadline).
"""
