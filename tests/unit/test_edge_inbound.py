"""What the robot refuses on its action topic: replays, reorders, foreign senders, bad chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from edge_agent.inbox import ActionInbox
from edge_agent.metrics import EdgeMetrics
from edge_agent.stats import RunStats
from edge_agent.watchdog import Watchdog
from schemas.arrays import NDArray, pack_array
from schemas.messages import Action
from schemas.topics import action_topic
from security.keys import Signer
from tests.support.keys import KeyDir
from vlabus.bus.transport import Message
from vlabus.inbound import Rejections
from vlabus.wire import Encoder

TOPIC = action_topic("robot-a")
SECOND = 1_000_000_000


def action(step: int, *, robot: str = "robot-a", worker: str = "worker-1",
           values: float = 0.5) -> Action:
    return Action(robot_id=robot, step=step, actions=pack_array(np.full((4, 7), values,
                                                                        np.float32)),
                  model="default", model_version=1, worker_id=worker)


def with_inbox(keydir: KeyDir, body: Callable[[ActionInbox], Awaitable[None]]) -> None:
    async def main() -> None:
        inbox = ActionInbox(keydir.ring, "robot-a", Watchdog(), rejections=Rejections(),
                            stats=RunStats(), metrics=EdgeMetrics(), period_ns=10**7)
        await body(inbox)
    asyncio.run(main())


def expect(receiver: ActionInbox, corr: str, step: int) -> asyncio.Future[object]:
    decide = time.monotonic_ns() + SECOND
    return receiver.expect(corr, step, decide)  # type: ignore[return-value]


def deliver(receiver: ActionInbox, wire: bytes) -> None:
    receiver.handle(Message(TOPIC, wire, time.time_ns()))


def test_duplicate_and_reordered_actions_are_refused(keydir: KeyDir) -> None:
    async def body(receiver: ActionInbox) -> None:
        encoder = Encoder(keydir.signers["worker-1"])
        first = encoder.encode(action(1), corr="s-1")
        second = encoder.encode(action(2), corr="s-2")
        one, two = expect(receiver, "s-1", 1), expect(receiver, "s-2", 2)
        deliver(receiver, second)
        deliver(receiver, first)  # older sequence from the same worker: the strict guard
        deliver(receiver, second)  # exact copy
        assert two.done()
        assert not one.done()
        assert receiver.rejections.by_reason == {"replay": 1, "duplicate": 1}
    with_inbox(keydir, body)


def test_other_workers_have_their_own_sequence(keydir: KeyDir) -> None:
    async def body(receiver: ActionInbox) -> None:
        w1, w2 = Encoder(keydir.signers["worker-1"]), Encoder(keydir.signers["worker-2"])
        later = w1.encode(action(2), corr="s-2")
        w2._seq = 0  # a worker whose counter is far behind worker-1's
        one, two = expect(receiver, "s-1", 1), expect(receiver, "s-2", 2)
        deliver(receiver, later)
        deliver(receiver, w2.encode(action(1, worker="worker-2"), corr="s-1"))
        assert one.done()
        assert two.done()
        assert receiver.rejections.total == 0
    with_inbox(keydir, body)


def test_foreign_senders_and_targets_are_refused_and_attributed(keydir: KeyDir) -> None:
    async def body(receiver: ActionInbox) -> None:
        pending = expect(receiver, "s-1", 1)
        robot = Encoder(keydir.signers["robot-b"])
        deliver(receiver, robot.encode(action(1, worker="robot-b"), corr="s-1"))
        worker = Encoder(keydir.signers["worker-1"])
        deliver(receiver, worker.encode(action(1, robot="robot-b"), corr="s-1"))
        stranger = Encoder(Signer.generate("worker", "worker-1"))
        deliver(receiver, stranger.encode(action(1), corr="s-1"))
        deliver(receiver, b"\x00garbage")
        assert not pending.done()
        assert receiver.rejections.by_reason == {"identity_mismatch": 1, "topic_mismatch": 1,
                                                 "unknown_key": 1, "malformed": 1}
        step = receiver.expire("s-1")
        assert step is not None
        assert step.rejected
    with_inbox(keydir, body)


def test_non_finite_or_misshapen_chunks_are_refused(keydir: KeyDir) -> None:
    async def body(receiver: ActionInbox) -> None:
        pending = expect(receiver, "s-1", 1)
        worker = Encoder(keydir.signers["worker-1"])
        deliver(receiver, worker.encode(action(1, values=float("nan")), corr="s-1"))
        flat = Action(robot_id="robot-a", step=1, actions=pack_array(np.zeros((2, 2, 2),
                                                                             np.float32)),
                      model="default", model_version=1, worker_id="worker-1")
        deliver(receiver, worker.encode(flat, corr="s-1"))
        assert not pending.done()
        assert receiver.rejections.by_reason == {"schema": 2}
        deliver(receiver, worker.encode(action(1), corr="s-1"))
        assert pending.done()  # a good reply after bad ones still counts
    with_inbox(keydir, body)


def test_reply_for_an_unknown_step_is_counted_not_used(keydir: KeyDir) -> None:
    async def body(receiver: ActionInbox) -> None:
        pending = expect(receiver, "s-1", 1)
        worker = Encoder(keydir.signers["worker-1"])
        deliver(receiver, worker.encode(action(7), corr="s-1"))  # right corr, wrong step
        deliver(receiver, worker.encode(action(1), corr="other"))
        assert not pending.done()
        assert receiver.stats.unmatched_replies == 2
    with_inbox(keydir, body)


def test_a_refused_action_does_not_move_its_workers_window(keydir: KeyDir) -> None:
    """Signed by the worker but refused (not finite, another robot's, data not fitting its
    shape): the genuine actions it signed earlier, still on their way, are served."""
    async def body(receiver: ActionInbox) -> None:
        worker = Encoder(keydir.signers["worker-1"])
        genuine = [worker.encode(action(step), corr=f"s-{step}") for step in (1, 2, 3)]
        broken = Action(robot_id="robot-a", step=9, model="default", model_version=1,
                        worker_id="worker-1", actions=NDArray(dtype="float32", shape=[4, 7],
                                                              data=memoryview(b"\0" * 4)))
        refused = [worker.encode(action(9, values=float("nan")), corr="x-1"),
                   worker.encode(action(9, robot="robot-b"), corr="x-2"),
                   worker.encode(broken, corr="x-3")]
        waits = [expect(receiver, f"s-{step}", step) for step in (1, 2, 3)]
        for wire in refused:  # sequence numbers above every genuine one
            deliver(receiver, wire)
        for wire in genuine:
            deliver(receiver, wire)
        assert receiver.rejections.by_reason == {"schema": 2, "topic_mismatch": 1}
        assert all(wait.done() and not wait.cancelled() for wait in waits)
    with_inbox(keydir, body)
