"""Sample efficiency on a Gymnasium task: the emotion agent of a config against a model-free baseline.

Every run, emotion agent or baseline, follows one protocol:

1. Train, evaluating greedily every ``--eval-every`` environment steps on ``--eval-episodes`` episodes (the same
   fixed start states each time). Training stops at the first evaluation whose mean return reaches
   ``--threshold`` (the agent is "solved" there: Lightning's ``EarlyStopping(stopping_threshold=...)`` for the
   emotion agent, stable-baselines3's ``StopTrainingOnRewardThreshold`` for PPO), or at ``--budget`` env steps,
   or after ``--max-minutes`` of training wall time (evaluations excluded), whichever comes first.
2. Evaluate the final agent greedily on ``--final-episodes`` fresh episodes (other start states).

It reports, per run: environment steps and wall time to reach the threshold (wall time of training: collection
and updates, the evaluations excluded; ``wall_with_evals_s`` in the curve includes them), and the final mean
return. A run "solves" the task when its final
evaluation is at or above the threshold.

    python benchmarks/learning.py --seeds 0 1 2 3 4 --variants emotion ppo
    python benchmarks/learning.py --seeds 0 1 2 --variants literal one_emotion sims8 sims25
    python benchmarks/plot_learning.py benchmarks/results/learning   # README table and learning-curve image

Variants: ``emotion`` is the config as shipped; ``literal``, ``one_emotion``, ``sims8``, ``sims25``, ``sims50``
are the config with one setting changed (the ablations); ``ppo`` is stable-baselines3 PPO with the RL Zoo's
CartPole-v1 hyperparameters (``pip install -e .[benchmark]``). Runs go ``--jobs`` at a time, each in its own
process on one torch thread; every finished run writes ``<out>/<variant>_s<seed>.json``, and a rerun skips the
runs whose result exists (``--force`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ABLATIONS: dict[str, list[str]] = {
    "emotion": [],
    "literal": ["--model.phase2_objective", "literal"],
    "one_emotion": ["--model.n_emotions", "1"],
    "sims8": ["--model.num_simulations", "8"],
    "sims25": ["--model.num_simulations", "25"],
    "sims50": ["--model.num_simulations", "50"],
}
"""Emotion-agent variants: command-line overrides of the config (spec section named in the README table)."""

BASELINES = ("ppo",)


# ---------------------------------------------------------------------------------------------------- emotion agent
def run_emotion(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """One emotion-agent run of ``args.config`` with the variant's overrides, in this process."""
    import torch
    from lightning.pytorch.callbacks import Callback, EarlyStopping

    from emotion_rl.cli import main
    from emotion_rl.data import evaluate_policy

    torch.set_num_threads(1)

    class Record(Callback):
        """Evaluation curve against env steps and wall time; stops at the env-step budget."""

        def __init__(self) -> None:
            self.curve: list[dict] = []
            self.start = time.perf_counter()
            self.evaluating_s = 0.0  # wall time spent in evaluations (not training)
            self._batch_end = self.start

        def on_train_batch_end(self, trainer, *_args) -> None:  # noqa: ANN001, ANN002
            self._batch_end = time.perf_counter()
            training_s = self._batch_end - self.start - self.evaluating_s
            if trainer.datamodule.env_steps >= args.budget or training_s >= 60 * args.max_minutes:
                trainer.should_stop = True

        def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            # Lightning plays the evaluation episodes while it prepares the validation loop, before any
            # on_validation_* hook: an evaluation is everything between the training batch that ends before it
            # and this hook (the next batch's collection starts later, inside training_step).
            if trainer.sanity_checking:
                return
            now = time.perf_counter()
            self.evaluating_s += now - self._batch_end
            self.curve.append(
                {
                    "env_steps": int(trainer.datamodule.env_steps),
                    "wall_s": now - self.start - self.evaluating_s,
                    "wall_with_evals_s": now - self.start,
                    "return_mean": float(trainer.callback_metrics["val/return_mean"]),
                }
            )

    overrides = [
        "--config",
        args.config,
        *ABLATIONS[variant],
        "--seed_everything",
        str(seed),
        "--data.val_episodes",
        str(args.eval_episodes),
        "--trainer.max_steps",
        "-1",
        "--trainer.logger.init_args.save_dir",
        str(Path(args.out) / "logs"),
        "--trainer.logger.init_args.name",
        f"{variant}_s{seed}",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_progress_bar",
        "false",
    ]
    cli = main(overrides, run=False)
    data = cli.datamodule
    # Evaluations every --eval-every env steps: one training batch consumes frames_per_batch / updates_per_collection.
    cli.trainer.val_check_interval = max(
        1, round(args.eval_every * data.updates_per_collection / data.frames_per_batch)
    )
    record = Record()
    stop = EarlyStopping("val/return_mean", mode="max", stopping_threshold=args.threshold, patience=10**9)
    cli.trainer.callbacks.extend([record, stop])
    record.start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_wall = time.perf_counter() - record.start - record.evaluating_s
    env_steps = int(data.env_steps)
    env = data.make_env(args.final_episodes, seed + 20_000)
    try:
        final = evaluate_policy(env, cli.model.make_policy(greedy=True), data.max_episode_steps)
    finally:
        env.close()
        data._shutdown_workers()
    return summarize(variant, seed, record.curve, env_steps, train_wall, final["episode_return"].tolist(), args)


# ---------------------------------------------------------------------------------------------------- PPO baseline
def run_ppo(args: argparse.Namespace, seed: int) -> dict:
    """stable-baselines3 PPO with the RL Zoo's CartPole-v1 hyperparameters, under the same protocol."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    env_id = env_id_of(args.config)
    env = make_vec_env(env_id, n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(0.001),
        clip_range=linear(0.2),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    curve: list[dict] = []
    start = time.perf_counter()

    class Evaluate(EvalCallback):
        """EvalCallback that records the curve and the wall time its evaluations take."""

        evaluating_s = 0.0

        def _on_step(self) -> bool:
            due = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
            begin = time.perf_counter()
            keep_going = super()._on_step()
            if (
                self.num_timesteps >= args.budget
                or time.perf_counter() - start - self.evaluating_s >= 60 * args.max_minutes
            ):
                keep_going = False
            if due:
                now = time.perf_counter()
                self.evaluating_s += now - begin
                curve.append(
                    {
                        "env_steps": int(self.num_timesteps),
                        "wall_s": now - start - self.evaluating_s,
                        "wall_with_evals_s": now - start,
                        "return_mean": float(self.last_mean_reward),
                    }
                )
            return keep_going

    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    evaluation = Evaluate(
        eval_env,
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=args.threshold, verbose=0),
        eval_freq=max(1, args.eval_every // 8),  # calls of the callback: one per step of the 8 envs
        n_eval_episodes=args.eval_episodes,
        deterministic=True,
        verbose=0,
    )
    # The Zoo's linear schedules run over its 100k steps; the budget stops the run (same protocol as the agent).
    model.learn(total_timesteps=max(args.budget, 100_000), callback=evaluation)
    train_wall = time.perf_counter() - start - evaluation.evaluating_s

    returns = []
    final_env = gym.make(env_id)
    for episode in range(args.final_episodes):
        obs, _ = final_env.reset(seed=seed + 20_000 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = final_env.step(int(np.asarray(action)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return summarize("ppo", seed, curve, int(model.num_timesteps), train_wall, returns, args)


# ---------------------------------------------------------------------------------------------------- results
def env_id_of(config: str) -> str:
    from omegaconf import OmegaConf

    return str(OmegaConf.load(config).data.env_id)


def summarize(
    variant: str, seed: int, curve: list[dict], env_steps: int, wall: float, final: list[float], args
) -> dict:  # noqa: ANN001
    """One run's result: the curve, when (env steps, wall time) it first reached the threshold, the final evaluation."""
    reached = next((point for point in curve if point["return_mean"] >= args.threshold), None)
    final_mean = sum(final) / len(final)
    return {
        "variant": variant,
        "seed": seed,
        "config": args.config,
        "threshold": args.threshold,
        "budget": args.budget,
        "eval_episodes": args.eval_episodes,
        "curve": curve,
        "env_steps": env_steps,
        "train_wall_s": wall,
        "reached_env_steps": reached["env_steps"] if reached else None,
        "reached_wall_s": reached["wall_s"] if reached else None,
        "final_episodes": len(final),
        "final_return_mean": final_mean,
        "final_return_min": min(final),
        "solved": final_mean >= args.threshold,
    }


def print_table(results: list[dict]) -> None:
    print(f"{'variant':<12} {'seed':>4} {'steps to thr':>12} {'wall to thr':>11} {'trained':>8} {'final mean':>10}")
    for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
        steps = r["reached_env_steps"]
        wall = r["reached_wall_s"]
        print(
            f"{r['variant']:<12} {r['seed']:>4} {steps if steps is not None else '-':>12} "
            f"{f'{wall:.0f} s' if wall is not None else '-':>11} {r['env_steps']:>8} {r['final_return_mean']:>10.1f}"
        )


# ---------------------------------------------------------------------------------------------------- driver
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=["emotion", "ppo"], choices=[*ABLATIONS, *BASELINES])
    parser.add_argument("--budget", type=int, default=30_000, help="env steps at most per run")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="training wall time at most per run")
    parser.add_argument("--threshold", type=float, default=475.0, help="evaluation mean return that solves the task")
    parser.add_argument("--eval-every", type=int, default=1_000, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation during training")
    parser.add_argument("--final-episodes", type=int, default=100, help="episodes of the final evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU core each)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning"))
    parser.add_argument("--force", action="store_true", help="rerun runs whose result file exists")
    parser.add_argument("--run-one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.run_one:  # one run, in this process (the driver starts one process per run)
        variant, seed = args.run_one[0], int(args.run_one[1])
        result = run_ppo(args, seed) if variant in BASELINES else run_emotion(args, variant, seed)
        (out / f"{variant}_s{seed}.json").write_text(json.dumps(result, indent=1))
        return

    runs = [(v, s) for v in args.variants for s in args.seeds]
    todo = [(v, s) for v, s in runs if args.force or not (out / f"{v}_s{s}.json").exists()]
    passthrough = sys.argv[1:] if argv is None else argv

    def launch(run: tuple[str, int]) -> int:
        variant, seed = run
        log = out / f"{variant}_s{seed}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, __file__, *passthrough, "--run-one", variant, str(seed)]
        with open(log, "w") as handle:
            code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"{variant} seed {seed}: {status}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(launch, todo))
    results = [json.loads((out / f"{v}_s{s}.json").read_text()) for v, s in runs if (out / f"{v}_s{s}.json").exists()]
    print_table(results)
    if any(codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
