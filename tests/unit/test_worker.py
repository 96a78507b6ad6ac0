"""Worker logic over memory://: replies, provenance, routing, rejects, tasks, status, shutdown."""

from __future__ import annotations

import asyncio

import numpy as np

from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import WorkerConfig, open_worker
from schemas import topics
from schemas.arrays import unpack_array
from schemas.messages import Action, Priority, Status, TaskRequest, TaskResult
from security.keys import Signer
from security.replay import ReplayGuard
from tests.support.aio import eventually
from tests.support.clock import MS
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from tests.support.worker import run_on_memory, serving, small_policy
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.policy import Policy
from vlabus.policy.reference import NoopPolicy
from vlabus.wire import Decoder, Encoder


def test_frames_get_signed_actions_with_provenance(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            deadlines = {}
            for step in range(6):
                deadlines[f"c{step}"] = await robot.send_frame(make_frame("robot-a", step),
                                                               f"c{step}")
            await robot.wait_for(6)
            for step in range(6):
                action = robot.replies[f"c{step}"]
                assert isinstance(action, Action)
                assert action.robot_id == "robot-a"
                assert action.step == step
                assert action.model == "reference"
                assert action.model_version == 7
                assert action.worker_id == "worker-1"
                chunk = unpack_array(action.actions)
                assert chunk.shape == (4, 3)
                assert chunk.dtype == np.float32
                assert np.all(np.abs(chunk) <= 1.0)
                assert action.inference_ns > 0
                assert action.decode_ns > 0
                assert action.span_ns >= action.queue_wait_ns
            # encode_ns reports the previous reply's encode: zero only for the very first
            assert sum(1 for a in robot.replies.values()
                       if isinstance(a, Action) and a.encode_ns == 0) == 1
            summary = worker.metrics.summary.as_dict()
            assert summary["served"] == 6
            assert summary["received"] == 6
            await robot.close()
    run_on_memory(body)


def test_reply_carries_frame_deadline_and_goes_to_sender_only(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir):
            a = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            b = await Robot.connect(url, keydir.signers["robot-b"], keydir.ring)
            spy = await open_transport(url, TransportOptions(client_id="spy"))
            await spy.subscribe(topics.PREFIX + "/+/action")
            deadline = await a.send_frame(make_frame("robot-a", 1), "only-a")
            await a.wait_for(1)
            assert b.replies == {}
            message = await asyncio.wait_for(spy.receive(), 5)
            assert message.topic == topics.action_topic("robot-a")
            got = Decoder(keydir.ring).decode(message.payload)
            assert got.header.deadline_ns == deadline
            assert got.header.corr == "only-a"
            assert got.header.sender == "worker-1"
            for client in (a, b):
                await client.close()
            await spy.close()
    run_on_memory(body)


def test_bad_messages_are_counted_and_never_stop_the_loop(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            raw = await open_transport(url, TransportOptions(client_id="attacker"))
            good = Encoder(keydir.signers["robot-b"]).encode(make_frame("robot-b", 1))
            tampered = bytearray(good)
            tampered[-100] ^= 0xFF
            stranger = Encoder(Signer.generate("robot", "robot-b")).encode(make_frame("robot-b", 2))
            forged = Encoder(keydir.signers["robot-b"]).encode(make_frame("robot-a", 3))
            for payload in (b"garbage", bytes(tampered), stranger, forged, b"VB\x09" + b"x" * 80):
                await raw.publish(topics.frame_topic("robot-b"), payload)
            await robot.send_frame(make_frame("robot-a", 9), "good")
            await robot.wait_for(1)
            rejected = worker.metrics.summary.rejected
            assert rejected == {"malformed": 1, "bad_signature": 1, "unknown_key": 1,
                                "identity_mismatch": 1, "unsupported": 1}
            text = worker.metrics.registry.get_sample_value(
                "vlabus_worker_rejected_total", {"reason": "bad_signature"})
            assert text == 1.0
            await robot.close()
            await raw.close()
    run_on_memory(body)


def test_hopeless_frames_are_dropped_before_the_model(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            worker.queue.estimate.observe("reference", 50 * MS)  # pretend the model is slow
            await robot.send_frame(make_frame("robot-a", 1), "late", budget_ms=5)
            await robot.send_frame(make_frame("robot-a", 2), "fine", budget_ms=5000)
            await robot.wait_for(1)
            assert set(robot.replies) == {"fine"}
            # the dropped frame's robot is told at once, not left to wait for its deadline
            notice = robot.declined["late"]
            assert (notice.robot_id, notice.step, notice.reason) == ("robot-a", 1, "deadline")
            assert notice.worker_id == worker.config.worker_id
            assert worker.metrics.summary.dropped["deadline"] == 1
            assert worker.metrics.registry.get_sample_value(
                "vlabus_worker_dropped_total", {"cause": "deadline"}) == 1.0
            await robot.close()
    run_on_memory(body)


def test_tasks_share_the_queue_with_their_own_handler(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir):
            robot = await Robot.connect(url, keydir.signers["robot-c"], keydir.ring)
            await robot.send_task(TaskRequest(robot_id="robot-c", task="plan", params={
                "command": "open the drawer, pick the cup then place it on the shelf"}), "p")
            await robot.send_task(TaskRequest(robot_id="robot-c", task="fly"), "bad")
            await robot.send_task(TaskRequest(robot_id="robot-c", task="models"), "m")
            await robot.wait_for(3)
            plan = robot.replies["p"]
            assert isinstance(plan, TaskResult)
            assert plan.ok
            assert plan.result == {"steps": 3, "step_0": "open the drawer",
                                   "step_1": "pick the cup", "step_2": "place it on the shelf"}
            bad = robot.replies["bad"]
            assert isinstance(bad, TaskResult)
            assert not bad.ok
            assert "unknown task" in bad.error
            models = robot.replies["m"]
            assert isinstance(models, TaskResult)
            assert models.result == {"reference": 7}
            await robot.close()
    run_on_memory(body)


def test_unknown_model_and_misfit_frames_are_dropped_not_fatal(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            await robot.send_frame(make_frame("robot-a", 1, model="nope"), "unknown")
            await robot.send_frame(make_frame("robot-a", 2, state_dim=3), "misfit")
            await robot.send_frame(make_frame("robot-a", 3), "ok")
            await robot.wait_for(1)
            assert set(robot.replies) == {"ok"}
            dropped = worker.metrics.summary.dropped
            assert dropped["unknown_model"] == 1
            assert dropped["policy_error"] == 1
            await robot.close()
    run_on_memory(body)


def test_several_models_batch_apart(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        policies: dict[str, Policy] = {"reference": small_policy(), "noop": NoopPolicy(2, 2)}
        async with serving(url, keydir, policies) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            await robot.send_frame(make_frame("robot-a", 1, model="noop"), "n")
            await robot.send_frame(make_frame("robot-a", 2), "d")
            await robot.wait_for(2)
            n, d = robot.replies["n"], robot.replies["d"]
            assert isinstance(n, Action)
            assert n.model == "noop"
            assert unpack_array(n.actions).shape == (2, 2)
            assert isinstance(d, Action)
            assert d.model == "reference"
            assert worker.runner.models == {"reference": 7, "noop": 0}
            await robot.close()
    run_on_memory(body)


def test_birth_and_death_status(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        watcher = await open_transport(url, TransportOptions(client_id="watcher"))
        await watcher.subscribe(topics.ALL_WORKER_STATUS)
        decoder = Decoder(keydir.ring, ReplayGuard())

        async def next_status() -> Status:
            message = await asyncio.wait_for(watcher.receive(), 10)
            status = decoder.decode(message.payload).message
            assert isinstance(status, Status)
            return status

        async with serving(url, keydir):
            birth = await next_status()
            assert birth.state == "online"
            assert birth.models == {"reference": 7}
            assert birth.client_id == "worker-1"
            assert birth.detail["group"] == "pool"
        death = await next_status()
        assert death.state == "offline"
        assert death.session == birth.session
        await watcher.close()
    run_on_memory(body)


def test_will_is_death_status_when_worker_vanishes(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        runner = PolicyRunner({"noop": NoopPolicy()}, {})
        worker = await open_worker(url, keydir.signers["worker-2"], keydir.ring, runner,
                                   config=WorkerConfig(worker_id="worker-2"))
        worker.transport.abort()  # type: ignore[attr-defined]
        watcher = await open_transport(url, TransportOptions(client_id="watcher"))
        await watcher.subscribe(topics.worker_status_topic("worker-2"))
        message = await asyncio.wait_for(watcher.receive(), 5)
        status = Decoder(keydir.ring).decode(message.payload).message
        assert isinstance(status, Status)
        assert status.state == "offline"
        await watcher.close()
    run_on_memory(body)


def test_replay_keys_need_replay_mode(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        replay = keydir.signers["replay"]
        for mode in (False, True):
            async with serving(url, keydir, replay_mode=mode) as worker:
                client = await Robot.connect(url, replay, keydir.ring)
                await client.send_frame(make_frame("robot-a", 1), f"r{mode}")
                if mode:
                    await client.wait_for(1)
                    assert worker.metrics.summary.rejected == {}
                else:
                    await eventually(lambda: bool(worker.metrics.summary.rejected))
                    assert worker.metrics.summary.rejected == {"identity_mismatch": 1}
                    assert client.replies == {}
                await client.close()
    run_on_memory(body)


def test_critical_frames_served_before_queued_normal_ones(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        # inline_below_ns=0: the held model must run on the inference thread, not the loop
        async with serving(url, keydir, max_batch=1, inline_below_ns=0) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            gate = asyncio.Event()
            entered = asyncio.Event()
            real = worker.runner.run

            def held(batch):  # type: ignore[no-untyped-def]
                loop.call_soon_threadsafe(entered.set)
                asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
                return real(batch)

            loop = asyncio.get_running_loop()
            worker.runner.run = held  # type: ignore[method-assign]
            await robot.send_frame(make_frame("robot-a", 0), "first")
            await asyncio.wait_for(entered.wait(), 10)  # the model now holds "first"
            for i in range(1, 4):
                await robot.send_frame(make_frame("robot-a", i), f"n{i}",
                                       priority=Priority.LOW)
            await robot.send_frame(make_frame("robot-a", 9, critical=True), "crit")
            await eventually(lambda: len(worker.queue) == 4)
            gate.set()
            await robot.wait_for(5)
            order = sorted(robot.replies, key=lambda c: robot.arrived_ns[c])
            assert order[:2] == ["first", "crit"]
            await robot.close()
    run_on_memory(body)


def test_stop_finishes_the_batch_in_hand_then_dies(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        runner = PolicyRunner({"reference": small_policy()}, {})
        worker = await open_worker(url, keydir.signers["worker-1"], keydir.ring, runner,
                                   config=WorkerConfig(worker_id="worker-1", max_batch=2,
                                                       max_delay_ns=0, inline_below_ns=0))
        loop = asyncio.get_running_loop()
        entered, gate = asyncio.Event(), asyncio.Event()
        real = runner.run

        def held(batch):  # type: ignore[no-untyped-def]
            loop.call_soon_threadsafe(entered.set)
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
            return real(batch)

        runner.run = held  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.ready.wait(), 30)
        robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
        await robot.send_frame(make_frame("robot-a", 0), "in-hand")
        await asyncio.wait_for(entered.wait(), 10)
        for step in (1, 2, 3):
            await robot.send_frame(make_frame("robot-a", step), f"queued{step}")
        await eventually(lambda: len(worker.queue) == 3)
        stop.set()
        await eventually(lambda: not worker.ready.is_set())
        gate.set()
        await asyncio.wait_for(task, 10)
        await robot.wait_for(1)
        assert set(robot.replies) == {"in-hand"}
        assert worker.metrics.summary.dropped["shutdown"] == 3
        watcher = await open_transport(url, TransportOptions(client_id="watcher"))
        await watcher.subscribe(topics.worker_status_topic("worker-1"))
        status = Decoder(keydir.ring).decode((await asyncio.wait_for(watcher.receive(), 5)).payload)
        assert isinstance(status.message, Status)
        assert status.message.state == "offline"
        await robot.close()
        await watcher.close()
        await worker.transport.close()
    run_on_memory(body)


def test_warm_up_seeds_the_deadline_estimate(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            assert worker.queue.estimate.get("reference") > 0
    run_on_memory(body)
