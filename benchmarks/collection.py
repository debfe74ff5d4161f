"""Collection throughput: the planner as a TorchRL policy, in process and in 1 or 2 MultiCollector worker processes.

    python benchmarks/collection.py                 # CartPole-v1, 16 envs, 50 simulations, 1,024 frames per setting
    python benchmarks/collection.py --frames 256 --simulations 8

Each setting builds the collector the way ``EmotionDataModule`` does (``emotion_rl.data.selfplay.make_collector`` with
``collector_workers`` 0, 1, 2: ``Collector`` in this process, or ``MultiCollector(sync=True)`` with ``16 / workers``
envs per worker), discards the first batch
(worker start-up, first searches), then times ``--frames`` more environment steps and reports environment steps per
second. The model is untrained (episodes of about 20 steps, so histories stay short). Run it on an otherwise idle
machine: each worker uses one core.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch
from torchrl.collectors import Collector, MultiCollector

from emotion_rl import EmotionMCTS, EmotionModel, EmotionPolicy, make_env
from emotion_rl.data.selfplay import shutdown_collector


def measure(workers: int, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = EmotionModel(4, 2, context_window=500)
    policy = EmotionPolicy(model, EmotionMCTS(num_simulations=args.simulations))
    frames_per_batch = args.envs * args.steps_per_batch
    if workers == 0:
        env = make_env(args.env, args.envs, seed=0)
        policy.action_spec = env.action_spec
        collector = Collector(env, policy, frames_per_batch=frames_per_batch, total_frames=-1)
    else:
        make_worker_env = functools.partial(make_env, args.env, args.envs // workers)
        policy.action_spec = make_env(args.env, 1).action_spec
        collector = MultiCollector(
            [make_worker_env] * workers, policy, frames_per_batch=frames_per_batch, total_frames=-1, sync=True
        )
        collector.set_seed(0)
    frames, start = 0, None
    try:
        for batch in collector:
            if start is None:  # the first batch pays for start-up
                start = time.perf_counter()
                continue
            frames += batch.numel()
            if frames >= args.frames:
                break
    finally:
        shutdown_collector(collector)  # its weight-sync schemes too (a MultiCollector's would hang the exit)
    return frames / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--steps-per-batch", type=int, default=8, help="steps per env per collection")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"{args.env}, {args.envs} envs, {args.simulations} simulations, {args.frames} timed frames, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    base = None
    for workers, label in (
        (0, "Collector, in process"),
        (1, "MultiCollector, 1 worker"),
        (2, "MultiCollector, 2 workers"),
    ):
        rate = measure(workers, args)
        base = base or rate
        print(f"{label:28s} {rate:8.1f} env steps/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
