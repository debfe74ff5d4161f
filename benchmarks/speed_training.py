"""Speed sections 3 and 4a: the two training schedules through ``EmotionAgent.train_batch``, and an end-to-end
``fit`` of configs/cartpole.yaml in a subprocess."""

from __future__ import annotations

import gc
import resource
import shutil
import tempfile
import time

import torch
from speed_common import (
    CARTPOLE_MAX_STEPS,
    CONFIG,
    N_ACTIONS,
    OBS_DIM,
    Sizes,
    Table,
    cartpole_model_config,
    fmt,
    make_episodes,
    proc_status_mib,
    repeat_median,
    run_worker,
    timed,
)

from emotion_rl.agent import EmotionAgent
from emotion_rl.testing import training_batch


def make_manual_agent(schedule: str) -> EmotionAgent:
    """An agent with configs/cartpole.yaml's model section, driven outside a Trainer (as tests/test_agent.py)."""
    torch.manual_seed(0)
    config = {**cartpole_model_config(), "schedule": schedule}
    agent = EmotionAgent(obs_dim=OBS_DIM, n_actions=N_ACTIONS, max_episode_steps=CARTPOLE_MAX_STEPS, **config)
    optimizers = agent.configure_optimizers()  # the four Adams of spec 3.2
    agent.optimizers = lambda: optimizers
    agent.manual_backward = lambda loss: loss.backward()
    agent.log = lambda *args, **kwargs: None
    agent.log_dict = lambda *args, **kwargs: None
    return agent.train()


def bench_training(sizes: Sizes, results: dict) -> Table:
    n, length = sizes.train_episodes, sizes.train_length
    episodes = make_episodes(n, length)
    k = min(sizes.timestep_steps, length)
    table = Table(
        f"3. Training timesteps per second on {length}-step episodes (agent.train_batch, 4 Adam optimizers)",
        ["schedule", "batch", "timesteps timed", "optimizer steps", "seconds", "timesteps/s", "ratio"],
        notes=[
            "episode: each phase once on the whole batch (median of repeated train_batch calls, after one warm-up).",
            f"timestep: spec 2.3's loop, four optimizer steps per timestep on the prefix [:t+1]; timed on the first "
            f"{k} timesteps of one {length}-step episode (train_batch on that episode cut to t < {k}; its prefixes "
            f"are exactly those of the full episode's loop)"
            + ("" if k == length else ", so the per-timestep cost of the later, longer prefixes is not included")
            + ".",
        ],
    )
    agent = make_manual_agent("episode")
    batch = training_batch(episodes)
    t_episode, reps, _ = repeat_median(lambda: agent.train_batch(batch), 0.0, sizes.episode_reps)
    steps_episode = int(episodes["mask"].sum())
    rate_episode = steps_episode / t_episode

    agent = make_manual_agent("timestep")
    agent.train_batch(training_batch(episodes[:1, :2]))  # warm-up (Adam state)
    gc.collect()
    t_timestep, _ = timed(agent.train_batch, training_batch(episodes[:1, :k]))
    rate_timestep = k / t_timestep
    ratio = rate_episode / rate_timestep
    results["training"] = dict(ratio=ratio, k=k, length=length)
    table.add("timestep", f"1 x {length} (first {k})", k, 4 * k, fmt(t_timestep), fmt(rate_timestep), "1.0x")
    table.add("episode", f"{n} x {length}", steps_episode, 4, fmt(t_episode), fmt(rate_episode), f"{ratio:.0f}x")
    return table


def worker_fit(envs: int, sims: int, max_steps: int, threads: int) -> dict:
    """``emotion_rl.cli.main([...], run=False)`` then ``trainer.fit``: env steps per second and peak RSS."""
    import lightning as L

    from emotion_rl.cli import main

    save_dir = tempfile.mkdtemp(prefix="speed_fit_")
    try:
        start = time.perf_counter()
        cli = main(
            [
                "--config",
                str(CONFIG),
                "--data.num_envs",
                str(envs),
                "--model.planner.num_simulations",
                str(sims),
                "--trainer.max_steps",
                str(max_steps),
                "--trainer.val_check_interval",
                "1000000",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.logger.init_args.save_dir",
                save_dir,
            ],
            run=False,
        )
        torch.set_num_threads(threads)  # the CLI sets 1 unless OMP_NUM_THREADS is set; --threads wins here
        setup = time.perf_counter() - start
        marks: list[tuple[float, int]] = []
        datamodule = cli.datamodule

        class Marks(L.Callback):
            def on_train_batch_end(self, *args, **kwargs) -> None:
                marks.append((time.perf_counter(), datamodule.env_steps))

        cli.trainer.callbacks.append(Marks())
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=datamodule)
        wall = time.perf_counter() - start
        steady = float("nan")
        if len(marks) >= 2:
            (t0, s0), (t1, s1) = marks[0], marks[-1]
            steady = (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")
        return dict(
            env_steps=datamodule.env_steps,
            episodes=datamodule.episodes,
            batches=len(marks),
            global_step=cli.trainer.global_step,
            setup_s=setup,
            fit_s=wall,
            rate=datamodule.env_steps / wall,
            steady_rate=steady,
            peak_rss_mib=proc_status_mib("VmHWM"),
            ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)


def bench_fit(sizes: Sizes, threads: int, results: dict) -> Table:
    out = run_worker(
        [
            "--worker",
            "fit",
            "--envs",
            str(sizes.fit_envs),
            "--sims",
            str(sizes.fit_simulations),
            "--max-steps",
            str(sizes.fit_max_steps),
        ],
        threads,
    )
    results["fit"] = out
    table = Table(
        f"4a. End-to-end fit on CartPole-v1 ({sizes.fit_envs} envs, {sizes.fit_simulations} simulations, "
        f"max_steps {sizes.fit_max_steps}, no validation)",
        [
            "env steps",
            "episodes",
            "mean ep. length",
            "train batches",
            "fit s",
            "env steps/s (fit)",
            "env steps/s (steady)",
            "peak RSS MiB",
        ],
        notes=[
            "emotion_rl.cli.main(['--config', 'configs/cartpole.yaml', overrides], run=False), then trainer.fit, "
            "in a subprocess; env steps = the datamodule's env_steps counter. 'fit' = over the whole fit call "
            "(warm-up collection of 16 episodes, checkpoint at the end included); 'steady' = between the first and "
            "the last training batch. Peak RSS = VmHWM of that subprocess (/proc/self/status; its ru_maxrss "
            "would include this benchmark process's own peak, inherited over vfork/exec).",
            "a fresh agent plays short CartPole episodes: the histories it searches are short (mean episode length).",
        ],
    )
    table.add(
        out["env_steps"],
        out["episodes"],
        fmt(out["env_steps"] / max(out["episodes"], 1)),
        out["batches"],
        fmt(out["fit_s"]),
        fmt(out["rate"]),
        fmt(out["steady_rate"]),
        f"{out['peak_rss_mib']:.0f}",
    )
    return table
