"""Keys change without restarts, on both buses: a robot key added to a running worker's keyring
is served within 5 s, and refused again within 5 s of its removal. Real processes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from security.keys import Keyring, add_key
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, render
from vlabus.cli.procs import Child, free_port
from vlabus.hub.config import HubConfig
from vlabus.hub.server import Hub

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WITHIN_S = 5.0
CLOUD = "vlabus_edge_actions_total{source=cloud}"
UNKNOWN = "vlabus_worker_rejected_total{reason=unknown_key}"


@pytest.fixture
def fleet_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "fleet-keys"
    for role, ident in (("worker", "worker-1"), ("robot", "robot-a"), ("robot", "robot-new")):
        add_key(keys, role, ident)  # type: ignore[arg-type]
    return keys


@pytest.fixture(params=["hub", "mosquitto"])
def bus(request: pytest.FixtureRequest, fleet_keys: Path,
        tmp_path: Path) -> Iterator[list[str]]:
    """Bus flags for the children: an in-process hub, or Mosquitto for the whole fleet."""
    if request.param == "hub":
        hub = Hub(HubConfig(bind="tcp://127.0.0.1:0")).start()
        try:
            yield ["--bus", hub.url]
        finally:
            hub.stop()
        return
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    config = tmp_path / "broker"
    render(fleet_keys, config, limits=Limits(persistence=False))
    with LocalMosquitto(config) as broker:
        yield ["--bus", broker.url, "--broker-config", str(config)]


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             alive: list[Child]) -> float:
    """Seconds until ``condition`` held; fails after ``timeout`` or when a child died."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < timeout, f"{what}: not within {timeout} s"
        for child in alive:
            assert child.running, f"{child.name} exited: {child.stderr_tail()}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_added_key_served_and_removed_key_refused_within_5_s(
        bus: list[str], fleet_keys: Path, tmp_path: Path) -> None:
    worker_keys = tmp_path / "worker-keys"
    shutil.copytree(fleet_keys, worker_keys)
    new_public = worker_keys / "robot" / "robot-new.pub.pem"
    new_public.unlink()  # the worker starts without the new robot
    assert Keyring.load(worker_keys).find("robot", "robot-new") is None
    worker_port, robot_port = free_port(), free_port()
    worker = Child("worker", ["worker", *bus, "--keys", str(worker_keys), "--id", "worker-1",
                              "--policy", "noop", "--keys-poll", "0.5",
                              "--metrics-port", str(worker_port), "--json"],
                   tmp_path, metrics_port=worker_port).start()
    robot = Child("robot", ["edge", "--sim", *bus, "--keys", str(fleet_keys), "--robot-id",
                            "robot-new", "--fps", "20", "--deadline-ms", "150",
                            "--metrics-port", str(robot_port)],
                  tmp_path, metrics_port=robot_port).start()
    children = [worker, robot]
    try:
        # refused while unknown, counted, and logged with the sender named and a hint
        wait_for(lambda: worker.scrape().get(UNKNOWN, 0) >= 5, 120, "unknown key counted",
                 children)
        assert robot.scrape().get(CLOUD, 0) == 0
        log = worker.stderr_tail(200)
        assert "'robot-new'" in log
        assert "add its public key" in log

        shutil.copy(fleet_keys / "robot" / "robot-new.pub.pem", new_public)
        served_after = wait_for(lambda: robot.scrape().get(CLOUD, 0) > 0, 30,
                                "the added robot served", children)
        assert served_after < WITHIN_S, f"served {served_after:.1f} s after the key was added"
        assert "1 added (robot/robot-new)" in worker.stderr_tail(200)

        refused_before = worker.scrape().get(UNKNOWN, 0)
        new_public.unlink()
        refused_after = wait_for(lambda: worker.scrape().get(UNKNOWN, 0) > refused_before, 30,
                                 "the removed robot refused", children)
        assert refused_after < WITHIN_S, f"refused {refused_after:.1f} s after removal"
        # and it stays refused: no cloud action for the next second of steps
        cloud = robot.scrape().get(CLOUD, 0)
        steps_seen = robot.scrape().get("vlabus_edge_fallbacks_total{cause=timeout}", 0)
        wait_for(lambda: robot.scrape().get("vlabus_edge_fallbacks_total{cause=timeout}", 0)
                 >= steps_seen + 20, 60, "steps after removal", children)
        assert robot.scrape().get(CLOUD, 0) <= cloud + 1  # at most a reply already in flight
        assert robot.terminate() == 0, robot.stderr_tail()
        assert worker.terminate() == 0, worker.stderr_tail()
        served = worker.stdout_json()
        assert served is not None
        assert served["unknown_senders"]["robot-new"] > 0  # counted with the sender named
    finally:
        for child in children:
            child.terminate(timeout=5)


def test_watcher_swaps_keys_in_place_and_keeps_them_on_a_bad_file(tmp_path: Path) -> None:
    from security.watch import KeyringWatcher

    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    ring = Keyring.load(keys)
    seen: list[tuple[list[str], list[str]]] = []
    watcher = KeyringWatcher(keys, ring, on_change=lambda added, removed: seen.append(
        ([k.identity for k in added], [k.identity for k in removed])))
    assert watcher.check() is False
    signer = add_key(keys, "robot", "robot-b")
    assert watcher.check() is True
    assert ring.get(signer.key_id) is not None
    (keys / "robot" / "robot-a.pub.pem").unlink()
    (keys / "robot" / "broken.pub.pem").write_text("not a key")
    assert watcher.check() is False  # unreadable: the keys in force stay
    assert ring.find("robot", "robot-a") is not None
    assert watcher.failures == 1
    (keys / "robot" / "broken.pub.pem").unlink()
    assert watcher.check() is True
    assert ring.find("robot", "robot-a") is None
    assert seen == [(["robot-b"], []), ([], ["robot-a"])]


def test_unknown_senders_are_counted_by_name_and_logged_once_a_minute() -> None:
    from schemas.errors import UnknownKeyError
    from vlabus.inbound import Rejections

    rejections = Rejections()
    first = rejections.unknown_key(UnknownKeyError("ab" * 8, "robot-9"))
    again = rejections.unknown_key(UnknownKeyError("ab" * 8, "robot-9"))
    other = rejections.unknown_key(UnknownKeyError("cd" * 8, "robot-7"))
    assert (first, again, other) == (True, False, True)
    assert rejections.unknown_senders == {"robot-9": 2, "robot-7": 1}
    for n in range(Rejections.MAX_UNKNOWN_SENDERS + 10):
        rejections.unknown_key(UnknownKeyError("ef" * 8, f"made-up-{n}"))
    assert len(rejections.unknown_senders) <= Rejections.MAX_UNKNOWN_SENDERS + 1
    assert rejections.unknown_senders["(others)"] > 0
