"""Federated rounds: does the robots' local policy get closer to the cloud, privately, with a
malicious robot, with personal heads, and without disturbing control? And what does face
blurring cost per frame?

    python -m bench.fl --json [--quick] [--seeds N] [--only PART,...]

PARTs (all by default; with --quick: learning on a tiny fleet, control, anonymize):

* ``learning`` — a simulated fleet (:mod:`bench.flsim`) of 4 robots, 5 rounds of DP-SGD with
  the noise calibrated by Opacus' RDP accountant for ε = 8 at δ = 1e-5 per robot, FedAvg, the
  release gate on a held-out recording. Error = mean absolute difference between the robots'
  installed local policy and the cloud's actions on held-out steps (``vlabus log evaluate``'s
  metric); the fall from round 0 to round 5, per seed and the median over seeds. The local
  policy is also what acts when the cloud is cut, so this is the fallback's error too.
* ``malicious`` — the same with a fifth robot holding a valid key that sends, in turn, its
  update x100, sign-flipped, NaN, on a wrong base, replayed; trimmed-mean aggregation.
* ``personal`` — robots with different scenes and commands, the output layer (``head.2.``)
  kept personal against everything shared (global only): error after 5 rounds.
* ``control`` — the robot's lateness (action ready after its deadline) at 30 Hz with a
  224x224 camera, the cloud silent so every step runs the deadline watchdog and the local
  policy, without and then with local training running back to back in the trainer process.
* ``anonymize`` — OpenCV Haar-cascade face blurring per 224x224 frame, with a face
  (scikit-image's astronaut) and without; floor: a 224x224 copy in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, environment, parser, percentile, time_each
from bench.flsim import FleetSpec, make_keys, run_fleet, simulate_data
from cloud_workers.fl.coordinator import CoordinatorConfig
from vlabus.fl.privacy import calibrate_noise

ROUNDS = 5
EPSILON, DELTA = 8.0, 1e-5


def hyper(examples: int, batch: int, epochs: int, *, epsilon: float = EPSILON) -> dict[str, Any]:
    noise = calibrate_noise(epsilon, DELTA, rounds=ROUNDS, examples=examples, batch_size=batch,
                            epochs=epochs)
    return {"examples": examples, "batch_size": batch, "epochs": epochs, "lr": 5.0,
            "example_clip": 0.1, "noise_multiplier": noise, "delta": DELTA,
            "update_clip": 2.0}


def fleet(spec: FleetSpec, pool: Executor, *, aggregate: str = "fedavg",
          malicious: tuple[str, ...] = (), personal: tuple[str, ...] = (),
          examples: int, batch: int, epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fl-") as tmp:
        root = Path(tmp)
        keys = make_keys(root, spec.robots)
        started = time.perf_counter()
        simulate_data(spec, root, keys)
        data_s = time.perf_counter() - started
        config = CoordinatorConfig(
            model="edge", rounds=ROUNDS, min_clients=2, max_clients=spec.robots,
            round_timeout_s=120, spool=root / "spool", aggregate=aggregate,
            eval_path=root / "heldout.mcap", personal=personal,
            hyper=hyper(examples, batch, epochs))
        started = time.perf_counter()
        run = asyncio.run(run_fleet(spec, root, config, bus=f"memory://bench-fl-{spec.seed}",
                                    executor=pool, budget_epsilon=EPSILON,
                                    malicious=malicious))
        rounds_s = time.perf_counter() - started
    before = float(np.mean(list(run.errors[0].values())))
    after = float(np.mean(list(run.errors[-1].values())))
    epsilons = [e for r in run.reports for e in r.epsilon.values()]
    return {
        "seed": spec.seed, "error_round0": round(before, 5), "error_round5": round(after, 5),
        "fall": round(1 - after / before, 4),
        "error_per_round": [round(float(np.mean(list(e.values()))), 5) for e in run.errors],
        "released": [r.version for r in run.reports if r.released],
        "max_epsilon": round(max(epsilons, default=0.0), 4),
        "noise_multiplier": round(config.hyper["noise_multiplier"], 4),
        "refused": run.refused, "per_robot_round5": {
            k: round(v, 5) for k, v in run.errors[-1].items()},
        "data_s": round(data_s, 1), "rounds_s": round(rounds_s, 1)}


def learning(pool: Executor, specs: list[FleetSpec], **kw: Any) -> dict[str, Any]:
    runs = [fleet(spec, pool, **kw) for spec in specs]
    return {"runs": runs, "median_fall": statistics.median(r["fall"] for r in runs),
            "max_epsilon": max(r["max_epsilon"] for r in runs)}


def control(pool: Executor, seconds: float) -> dict[str, Any]:
    """Lateness without and with training in the trainer process (cloud silent)."""
    from edge_agent.agent import AgentConfig
    from edge_agent.breaker import BreakerConfig
    from edge_agent.sim import SimRobot, drive
    from edge_agent.stack import LocalModel, open_edge
    from security.keys import Keyring, load_signer
    from vlabus.policy.reference import ReferencePolicy

    with tempfile.TemporaryDirectory(prefix="bench-fl-ctl-") as tmp:
        root = Path(tmp)
        spec = FleetSpec(robots=1, steps=256, ring=16, size=96, cloud_width=32)
        keys = make_keys(root, 1)
        simulate_data(spec, root, keys)
        base = root / "base.safetensors"
        ReferencePolicy.seeded(device="cpu", width=16, name="edge").save_safetensors(base)
        from edge_agent.fl.trainer import TrainJob, train

        def job(number: int) -> TrainJob:
            return TrainJob(base_path=str(base), buffer_dir=str(root / "robot-0/fl/buffer"),
                            state_dir=str(root / "state"), round=number, examples=128,
                            batch_size=32, epochs=4, lr=5.0, example_clip=0.1,
                            noise_multiplier=1.0, delta=DELTA, update_clip=2.0,
                            budget_epsilon=float("inf"), cpu_share=0.5)

        async def phase(training: bool) -> dict[str, Any]:
            robot = SimRobot(size=224, ring=16, seed=0)
            agent = await open_edge(
                "memory://bench-fl-control", keys=Keyring.load(keys),
                signer=load_signer(keys, "robot", "robot-0"),
                config=AgentConfig(robot_id="robot-0", deadline_ns=25_000_000,
                                   period_ns=33_333_333, breaker=BreakerConfig(
                                       miss_limit=1 << 30, min_rtt_samples=1 << 30)),
                probe=robot.observe(0), model=LocalModel(width=16))
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            rounds = 0

            async def trainer() -> None:
                nonlocal rounds
                while not stop.is_set():
                    await loop.run_in_executor(pool, train, job(rounds))
                    rounds += 1

            task = asyncio.create_task(trainer()) if training else None
            if task is not None:  # the first job pays the process's imports: start after it
                while rounds == 0:
                    await asyncio.sleep(0.05)
            try:
                overruns = await drive(agent, robot, fps=30, seconds=seconds)
            finally:
                stop.set()
                if task is not None:
                    await task
                await agent.close()
                await agent.transport.close()
            late = sorted(agent.stats.lateness_ns)
            return {"steps": len(late), "overruns": overruns,
                    "lateness_p50_ms": round(percentile(late, 50) / 1e6, 3),
                    "lateness_p99_ms": round(percentile(late, 99) / 1e6, 3),
                    "lateness_max_ms": round(late[-1] / 1e6, 3),
                    "training_rounds": rounds}

        # warm the trainer process before measuring either phase
        pool.submit(train, job(10_000)).result()
        without = asyncio.run(phase(False))
        with_training = asyncio.run(phase(True))
    return {"without_training": without, "with_training": with_training,
            "p99_difference_ms": round(with_training["lateness_p99_ms"]
                                       - without["lateness_p99_ms"], 3)}


def anonymize(count: int) -> dict[str, Any]:
    import cv2
    from skimage import data

    from edge_agent.anonymize import FaceBlur
    from edge_agent.scene import TabletopScene

    blur = FaceBlur()
    photo = np.asarray(data.astronaut(), np.uint8)  # type: ignore[no-untyped-call]
    face = np.asarray(cv2.resize(photo, (224, 224), interpolation=cv2.INTER_AREA), np.uint8)
    empty = TabletopScene(224, 224, seed=0).render(0)
    calls: dict[str, Callable[[], object]] = {
        "floor_copy": lambda: np.array(face, copy=True),
        "with_face": lambda: blur(face), "without_face": lambda: blur(empty)}
    out: dict[str, Any] = {}
    for name, call in calls.items():
        samples = sorted(time_each(call, count, warmup=3))
        out[f"{name}_p50_ms"] = round(percentile(samples, 50) / 1e6, 3)
    out["faces_before"] = len(blur.detect(face))
    out["faces_after"] = len(blur.detect(blur(face)[0]))
    return out


def main() -> None:
    parse = parser(__doc__ or "")
    parse.add_argument("--seeds", type=int, default=3)
    parse.add_argument("--only", default=None, metavar="PART,...")
    args = parse.parse_args()
    every = "learning,malicious,personal,control,anonymize"
    parts = set((args.only or ("learning,control,anonymize" if args.quick else every))
                .split(","))
    from edge_agent.fl.client import trainer_pool

    quick = args.quick
    size: dict[str, Any]
    train_kw: dict[str, Any]
    if quick:
        size = {"steps": 64, "ring": 4, "size": 32, "cloud_width": 16}
        train_kw = {"examples": 32, "batch": 16, "epochs": 1}
        seeds = 1
    else:
        size = {"steps": 512, "ring": 32, "size": 64, "cloud_width": 64}
        train_kw = {"examples": 256, "batch": 64, "epochs": 2}
        seeds = args.seeds
    report: dict[str, Any] = {"bench": "fl", "quick": quick, "environment": environment(),
                              "epsilon_target": EPSILON, "delta": DELTA, "rounds": ROUNDS}
    with trainer_pool() as pool:
        if "learning" in parts:
            report["learning"] = learning(pool, [FleetSpec(robots=4, seed=s, **size)
                                                 for s in range(seeds)], **train_kw)
        if "malicious" in parts:
            report["malicious"] = learning(
                pool, [FleetSpec(robots=5, seed=0, **size)], aggregate="trimmed-mean",
                malicious=("robot-4",), **train_kw)
        if "personal" in parts:
            spec = FleetSpec(robots=4, seed=0, **size)
            report["personal"] = {
                "global_only": fleet(spec, pool, **train_kw),
                "personal_head": fleet(spec, pool, personal=("head.2.",), **train_kw)}
        if "control" in parts:
            report["control"] = control(pool, 2.0 if quick else 20.0)
    if "anonymize" in parts:
        report["anonymize"] = anonymize(10 if quick else 100)
    emit(report, compact=args.json)


if __name__ == "__main__":
    main()
