"""When a chunked robot sends its next frame: when its queue runs low, or at the worker's hint.

A robot executing action chunks asks for the next chunk when fewer than ``refill_below``
actions are left: seconds of actions in hand. A ``vlabus`` worker may answer with a hint
(``Action.slot_ns``, wall clock): when to send the next frame so that it arrives just before a
batch starts (see ``cloud_workers.slots``). :class:`RefillTimer` decides the send time:

* no hint, or a hint already past: now, as without hints;
* a hint before the next control tick, while the queue holds less than half an interval more
  than ``refill_below``: at the hint (:meth:`RefillTimer.due` asks for the frame early), so a
  robot may send up to half an interval early — with more actions in hand, never fewer;
* a hint later than ``latest`` — the robot's own refill deadline, the last send whose answer,
  at the robot's full deadline, still lands before the queue runs dry — is ignored: now;
* otherwise the hint, less this robot's own time to encode and send a frame (measured);
* after a request the cloud did not answer in time (or declined without a hint), and with no
  hint: a random moment in the next half interval (never after ``latest``), so a robot whose
  frames keep arriving just after a batch starts does not stay in lock step with it. This
  applies whatever the worker (it cannot tell a worker that plans from one that does not when
  nothing came back); ``AgentConfig.slot_hints=False`` turns it off with the hints. A worker
  that plans tells a robot whose frame it dropped its slot in the ``declined`` notice.

A hint is used once. A robot that gets none, or a bad one, and whose requests are answered,
sends when it always did. Pure logic
on the agent's clocks.
"""

from __future__ import annotations

import random

from schemas.deadline import Clocks

#: weight of the newest measurement of the time from deciding to send until the frame is out
ALPHA = 0.2


class RefillTimer:
    """See the module docstring. Times are the agent's monotonic ns unless named wall."""

    def __init__(self, clocks: Clocks, interval_ns: int, *, seed: int | None = None) -> None:
        self._clocks = clocks
        self.interval_ns = interval_ns
        self._rng = random.Random(seed)
        self._missed = False
        self.waiting = False  # a send planned for later has not gone out yet
        self._hint: int | None = None  # monotonic
        self.lead_ns = 0.0
        self.received = 0  # hints received (from actions and declined notices)
        self.followed = 0
        self.ignored = 0

    def hinted(self, slot_wall_ns: int) -> None:
        """A reply suggested sending the next frame at ``slot_wall_ns`` (0: no suggestion)."""
        if slot_wall_ns <= 0:
            self._hint = None
            return
        self.received += 1
        self._hint = slot_wall_ns - self._clocks.wall() + self._clocks.monotonic()

    def due(self, before_ns: int) -> bool:
        """Whether the hint falls before ``before_ns`` (the next control tick)."""
        return self._hint is not None and self._hint - self.lead_ns < before_ns

    def send_at(self, now_ns: int, latest_ns: int) -> int:
        """When to send the frame the queue asks for at ``now_ns``; never after ``latest_ns``
        (the refill deadline), never before ``now_ns``."""
        hint, self._hint = self._hint, None
        missed, self._missed = self._missed, False
        if hint is None:
            if missed:
                self.waiting = True
                return min(latest_ns, now_ns + round(self._rng.uniform(0, self.interval_ns / 2)))
            return now_ns
        at = hint - round(self.lead_ns)
        if at <= now_ns:
            return now_ns
        if at > latest_ns:
            self.ignored += 1
            return now_ns
        self.followed += 1
        self.waiting = True
        return at

    def missed(self) -> None:
        """The last request got no answer in time (so no hint either)."""
        self._missed = True

    def sending_took(self, duration_ns: int) -> None:
        """Deciding to send until the frame was handed to the transport took ``duration_ns``."""
        self.waiting = False
        self.lead_ns += ALPHA * (max(0, duration_ns) - self.lead_ns)
