"""The MQTT adapter: paho-mqtt 2.x speaking MQTT 5, bridged into asyncio in one place.

Three parts: :mod:`.pump` (who reads and writes paho's socket, and the network thread that
keeps a stalled loop's connection alive), :mod:`.acks` (which acknowledgements the loop waits
for, decided on paho's thread), and the facade :class:`MqttTransport` in :mod:`.transport`
(connection, reconnects, publish, subscribe). QoS 1 publishes in flight, subscriptions and the
outbox are the shared :class:`~vlabus.bus.session.Session`; what a PUBACK means is decided by
the pure :class:`~vlabus.bus.inflight.InflightTable`. paho is imported in this package only.

Behaviour:

* QoS 1 ``publish`` waits for PUBACK and raises :class:`PublishRejected` with the MQTT 5 reason
  code (0x87 not authorized, ...); a publish over the broker's advertised Maximum Packet Size
  raises it with 0x95 before sending, at any QoS. ``subscribe`` raises
  :class:`SubscribeRejected` the same way. QoS 0 with ``expiry_s`` carries a Message Expiry
  Interval (whole seconds, at least 1).
* Sessions end with the connection by default (``session_expiry_s`` 0): a dead member of a
  shared group must not keep receiving its share (known trap 1). With ``session_expiry_s``
  > 0 the session is resumed (clean start false), so plain subscriptions and queued QoS 1
  messages survive outages and broker restarts with persistence. Reconnect with jittered
  exponential backoff, then always resubscribe (Mosquitto 2.0.11 restores a persisted session
  without its ``$share`` subscriptions).
* A QoS 1 publish with ``expiry_s`` that the broker acknowledges with 0x10 (no matching
  subscribers: say, a worker group still reconnecting) is sent again, with backoff, until
  someone receives it or it expires (then :class:`TransportError`). Without an expiry, 0x10
  counts as delivered to the broker.
* While disconnected, publishes go to a bounded :class:`~vlabus.bus.outbox.Outbox` (paho's own
  queue is unbounded and loses QoS 0 at reconnect, known trap 4).
* TCP_NODELAY on the client socket (known trap 5); MQTT 5 Receive Maximum both ways.

``TransportOptions.extra`` keys: ``session_expiry_s`` (0), ``receive_maximum`` (64, QoS 1
in flight from the broker), ``send_maximum`` (20, to the broker), ``reconnect_min_s`` (0.1),
``reconnect_max_s`` (15), ``connect_timeout_s`` (10), ``clean_start`` ("false"; "true" drops
a previous session of this client id at the first connection), ``stable_s`` (3) and
``takeover_hold_s`` (30): see :class:`~vlabus.bus.backoff.Flaps`.
"""

from vlabus.bus.mqtt.transport import MqttTransport, open_mqtt

__all__ = ["MqttTransport", "open_mqtt"]
