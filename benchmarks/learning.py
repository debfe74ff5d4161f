"""Sample efficiency on a Gymnasium task: the emotion agent of a config against a model-free baseline.

Every run trains its whole ``--budget`` of env steps, evaluated greedily every ``--eval-every`` env steps on the same
``--eval-episodes`` start states (the agent through ``emotion_rl.evaluation.EvalCallback``), and is scored by what it
holds: ``score``, the mean of its evaluations over the last third of the budget, and ``held`` (no evaluation after
its first at ``--threshold`` fell below ``--hold-floor``). Then ``--final-episodes`` fresh greedy episodes, the
weights (``<out>/models/``, not committed) and the search gain (``--search-gain`` episodes per row of
``emotion_rl.evaluation.measure_gain``). ``--cost-only`` instead runs two variants side by side for ``--cost-steps``
env steps and records the training seconds per env step (``--cost-against REV``: against revision REV's config and
code). Protocol, defaults per env (``ENVS``), variants (``ABLATIONS``, ``--variant``), the PPO baseline (the RL Zoo's
settings, ``PPO_ZOO``) and the result files: docs/benchmarks.md.

    python benchmarks/learning.py --seeds 0 1 2 3 4 --variants emotion ppo
    python benchmarks/learning.py --env-id Acrobot-v1 --seeds 0 1 2 --variants emotion ppo
    python benchmarks/learning.py --seeds 0 1 2 --variant fast=--model.planner.num_simulations=8,--data.batch_size=32
    python benchmarks/learning.py --cost-only --variants emotion sims8          # seconds per env step, side by side
    python benchmarks/learning.py --cost-only --variants emotion --cost-against 9d2c413
    python benchmarks/plot_learning.py benchmarks/results/hold   # README table and learning-curve image
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emotion_rl.evaluation import held, last_third_mean

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "hold"
"""Default results, one folder per env: runs of the hold protocol (earlier protocols' results: results/learning)."""

ABLATIONS: dict[str, list[str]] = {
    "emotion": [],
    "literal": ["--model.action_loss", "emotion_rl.LiteralActionLoss"],
    "one_emotion": ["--model.n_emotions", "1"],
    "sims8": ["--model.planner.num_simulations", "8"],
    "sims25": ["--model.planner.num_simulations", "25"],
    "sims50": ["--model.planner.num_simulations", "50"],
}
"""Emotion-agent variants: command-line overrides of the config (spec section named in the README table)."""

BASELINES = ("ppo",)

ENVS: dict[str, dict] = {
    "CartPole-v1": {"threshold": 475.0, "budget": 30_000, "eval_every": 1_000},
    "Acrobot-v1": {"threshold": -100.0, "budget": 50_000, "eval_every": 2_000},
    "MountainCar-v0": {"threshold": -110.0, "budget": 200_000, "eval_every": 5_000},
    "LunarLander-v3": {"threshold": 200.0, "budget": 500_000, "eval_every": 10_000},
}
"""Protocol defaults per environment: the threshold is Gymnasium's registered reward threshold."""
OTHER_ENV = {"budget": 100_000, "eval_every": 1_000}
"""Defaults for an environment not in ``ENVS`` (its threshold: Gymnasium's registered one, or ``--threshold``)."""

PPO_ZOO: dict[str, dict] = {
    "CartPole-v1": dict(n_envs=8, n_timesteps=100_000, normalize=False, n_steps=32, batch_size=256, gae_lambda=0.8,
                        gamma=0.98, n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    "Acrobot-v1": dict(n_envs=16, n_timesteps=1_000_000, normalize=True, n_steps=256, gae_lambda=0.94, gamma=0.99,
                       n_epochs=4, ent_coef=0.0),
    "MountainCar-v0": dict(n_envs=16, n_timesteps=1_000_000, normalize=True, n_steps=16, gae_lambda=0.98, gamma=0.99,
                           n_epochs=4, ent_coef=0.0),
    "LunarLander-v3": dict(n_envs=16, n_timesteps=1_000_000, normalize=False, n_steps=1024, batch_size=64,
                           gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01),
}  # fmt: skip
"""The RL Zoo's PPO hyperparameters per env (DLR-RM/rl-baselines3-zoo, ``hyperparams/ppo.yml``): ``n_envs``
vectorized copies of the env, linear schedules written ``lin_<initial value>`` over the Zoo's ``n_timesteps``,
``normalize`` = a ``VecNormalize`` of observations and rewards (discounted with the run's ``gamma``; the evaluation
envs normalize observations only, with the training statistics). Unlisted settings are stable-baselines3's
defaults. An env not listed here gets the Zoo's ``default`` entry: stable-baselines3's PPO defaults, one env."""
PPO_DEFAULT = {"n_envs": 1, "n_timesteps": 1_000_000, "normalize": False}

NO_EVALUATION = 10**12
"""``--eval-every`` of a cost run: no evaluation happens within its budget."""


# ---------------------------------------------------------------------------------------------------- variants
def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``NAME=--a.b=1,--c.d=2`` -> ``("NAME", ["--a.b=1", "--c.d=2"])``: an ad-hoc variant of the config.

    Overrides are separated by the commas that start a new ``--`` option, so a value may hold commas
    (``--model.x=[1,2]``). The name names the result files: letters, digits, ``_``, ``.`` and ``-``.
    """
    name, equals, rest = spec.partition("=")
    if not equals or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise argparse.ArgumentTypeError(
            f"--variant {spec!r}: expected NAME=--option=value[,--option=value...] with a NAME of letters, digits, "
            "'_', '.' or '-'"
        )
    if name in ABLATIONS or name in BASELINES:
        raise argparse.ArgumentTypeError(f"--variant {name!r}: the name is taken by a named variant (--variants)")
    overrides = [token for token in re.split(r",(?=--)", rest) if token]
    if not overrides or any(not token.startswith("--") for token in overrides):
        raise argparse.ArgumentTypeError(f"--variant {spec!r}: give one or more --option=value overrides after '='")
    for token in overrides:
        option = token.split("=", 1)[0]
        if option in ("--data.env_id", "--seed_everything", "--data.seed"):
            raise argparse.ArgumentTypeError(
                f"--variant {name!r}: {option} is set by the benchmark (--env-id, --seeds), not by a variant"
            )
    return name, overrides


def overrides_of(args: argparse.Namespace, variant: str) -> list[str]:
    """The command-line overrides of the config that make ``variant`` (empty for the baselines)."""
    adhoc = getattr(args, "adhoc", {})
    if variant in adhoc:
        return list(adhoc[variant])
    return list(ABLATIONS.get(variant, []))


# ---------------------------------------------------------------------------------------------------- emotion agent
def run_emotion(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """One emotion-agent run of ``args.config`` with the variant's overrides, in this process."""
    import torch

    from emotion_rl.cli import main
    from emotion_rl.decision import PAIRED_DECISION
    from emotion_rl.evaluation import EvalCallback

    torch.set_num_threads(1)
    name = f"{variant}_s{seed}" + ("_cost" if args.cost_only else "")
    overrides = [
        "--config", args.config, "--data.env_id", args.env_id, *overrides_of(args, variant),
        "--seed_everything", str(seed), "--data.val_episodes", str(args.eval_episodes), "--trainer.max_steps", "-1",
        "--trainer.logger.init_args.save_dir", str(Path(args.out) / "logs"), "--trainer.logger.init_args.name", name,
        "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    cli = main(overrides, run=False)
    data = cli.datamodule
    record = EvalCallback(
        args.eval_every, args.budget, max_minutes=args.max_minutes, paired_decision=args.paired_decision
    )
    cli.trainer.callbacks.append(record)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        train_wall = time.perf_counter() - record.start - record.evaluating_s
        env_steps = int(data.env_steps)
        if args.cost_only:
            return cost_of(variant, seed, env_steps, train_wall, args)
        final = data.evaluate(cli.model.make_policy(greedy=True), args.final_episodes, seed + 20_000)
        final_paired = None
        if args.paired_decision:  # the same start states: a fresh env with the same seed
            paired = cli.model.make_policy(greedy=True, greedy_decision=PAIRED_DECISION)
            final_paired = data.evaluate(paired, args.final_episodes, seed + 20_000)["episode_return"].tolist()
        model_path = Path(args.out) / "models" / f"{name}.ckpt"  # the final weights, to look inside (not committed)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        cli.trainer.save_checkpoint(model_path, weights_only=True)
        gain = search_gain_of(cli.model, data, seed, args) if args.search_gain else None
    finally:
        data.shutdown()
    result = summarize(variant, seed, record.curve, env_steps, train_wall, final["episode_return"].tolist(), args)
    if gain is not None:
        result["search_gain"] = gain
    if final_paired is not None:
        other = PAIRED_DECISION
        result[f"final_return_mean_by_{other}"] = sum(final_paired) / len(final_paired)
        result[f"score_by_{other}"] = last_third_mean(record.curve, args.budget, f"return_mean_by_{other}")
    return result


def search_gain_of(agent, data, seed: int, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """The search-gain measurement (:func:`emotion_rl.evaluation.measure_gain`) of the trained agent: ``--search-gain``
    greedy episodes per row on start states of their own (env seed + 30,000). Per-episode lists are dropped; the
    means, the search's changes and the gains are kept."""
    from emotion_rl.evaluation import datamodule_settings, measure_gain

    settings = {**datamodule_settings(data), "env_id": args.env_id}
    report = measure_gain(agent, settings, args.search_gain, seed + 30_000, log=lambda *_: None)
    for row in report["rows"].values():
        row.pop("returns", None)
        row.pop("lengths", None)
    return report


# ---------------------------------------------------------------------------------------------------- PPO baseline
def ppo_hyperparameters(env_id: str) -> dict:
    """The RL Zoo's PPO settings for ``env_id`` (``PPO_ZOO``), or its default entry for an env it does not tune."""
    return dict(PPO_ZOO.get(env_id, PPO_DEFAULT))


def ppo_kwargs(hyperparameters: dict) -> dict:
    """``PPO(...)`` keyword arguments of Zoo settings: ``lin_<x>`` strings become linear schedules from ``x``."""

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    kwargs = {}
    for key, value in hyperparameters.items():
        if key in ("n_envs", "n_timesteps", "normalize"):
            continue
        if isinstance(value, str) and value.startswith("lin_"):
            value = linear(float(value[len("lin_") :]))
        kwargs[key] = value
    return kwargs


def run_ppo(args: argparse.Namespace, seed: int) -> dict:
    """stable-baselines3 PPO with the RL Zoo's hyperparameters for the env, under the same protocol."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)

    env_id = args.env_id
    hyperparameters = ppo_hyperparameters(env_id)
    n_envs = hyperparameters["n_envs"]
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if hyperparameters["normalize"]:
        gamma = hyperparameters.get("gamma", 0.99)
        env = VecNormalize(env, gamma=gamma)
        # EvalCallback copies the training statistics into it before each evaluation
        eval_env = VecNormalize(eval_env, gamma=gamma, training=False, norm_reward=False)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **ppo_kwargs(hyperparameters))
    curve: list[dict] = []
    start = time.perf_counter()

    class Evaluate(EvalCallback):
        """EvalCallback that records the curve and the wall time its evaluations take."""

        evaluating_s = 0.0

        def _on_step(self) -> bool:
            due = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
            begin = time.perf_counter()
            keep_going = super()._on_step() and self.num_timesteps < args.budget
            if time.perf_counter() - start - self.evaluating_s >= 60 * args.max_minutes:
                keep_going = False
            if due:
                now = time.perf_counter()
                self.evaluating_s += now - begin
                point = {"env_steps": int(self.num_timesteps), "wall_s": now - start - self.evaluating_s}
                curve.append({**point, "wall_with_evals_s": now - start, "return_mean": float(self.last_mean_reward)})
            return keep_going

    evaluation = Evaluate(
        eval_env,
        eval_freq=max(1, args.eval_every // n_envs),  # calls of the callback: one per step of the n_envs envs
        n_eval_episodes=args.eval_episodes,
        deterministic=True,
        verbose=0,
    )
    # The Zoo's linear schedules run over its n_timesteps; the budget stops the run (same protocol as the agent).
    model.learn(total_timesteps=max(args.budget, int(hyperparameters["n_timesteps"])), callback=evaluation)
    train_wall = time.perf_counter() - start - evaluation.evaluating_s
    if args.cost_only:
        return cost_of("ppo", seed, int(model.num_timesteps), train_wall, args)

    returns = []
    final_env = gym.make(env_id)
    for episode in range(args.final_episodes):
        obs, _ = final_env.reset(seed=seed + 20_000 + episode)
        total, done = 0.0, False
        while not done:
            seen = env.normalize_obs(obs) if hyperparameters["normalize"] else obs
            action, _ = model.predict(seen, deterministic=True)
            obs, reward, terminated, truncated, _ = final_env.step(int(np.asarray(action)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    final_env.close()
    result = summarize("ppo", seed, curve, int(model.num_timesteps), train_wall, returns, args)
    result["ppo_hyperparameters"] = hyperparameters
    return result


# ---------------------------------------------------------------------------------------------------- results
def env_id_of(config: str) -> str:
    """The config's ``data.env_id`` (the datamodule's default, CartPole-v1, when it names none)."""
    from omegaconf import OmegaConf

    from emotion_rl.cli import load_config

    return str(OmegaConf.select(load_config(config), "data.env_id", default="CartPole-v1"))


def env_defaults(env_id: str) -> dict:
    """Threshold, env-step budget and evaluation interval of the protocol for ``env_id`` (``ENVS``)."""
    if env_id in ENVS:
        return dict(ENVS[env_id])
    import gymnasium

    try:
        threshold = gymnasium.spec(env_id).reward_threshold
    except gymnasium.error.Error:
        threshold = None
    return {"threshold": threshold, **OTHER_ENV}


def summarize(
    variant: str, seed: int, curve: list[dict], env_steps: int, wall: float, final: list[float], args
) -> dict:  # noqa: ANN001
    """One run's result: the curve, when (env steps, wall time) it first reached the threshold, the final evaluation,
    and the protocol's score (:mod:`emotion_rl.evaluation`)."""
    reached = next((point for point in curve if point["return_mean"] >= args.threshold), None)
    final_mean = sum(final) / len(final)
    return {
        "variant": variant,
        "overrides": overrides_of(args, variant) if variant not in BASELINES else [],
        "seed": seed,
        "config": args.config,
        "env_id": args.env_id,
        "threshold": args.threshold,
        "budget": args.budget,
        "eval_episodes": args.eval_episodes,
        "curve": curve,
        "env_steps": env_steps,
        "train_wall_s": wall,
        "train_s_per_env_step": wall / env_steps if env_steps else None,
        "reached_env_steps": reached["env_steps"] if reached else None,
        "reached_wall_s": reached["wall_s"] if reached else None,
        "final_episodes": len(final),
        "final_return_mean": final_mean,
        "final_return_min": min(final),
        "solved": final_mean >= args.threshold,
        "protocol": "hold",
        "score": last_third_mean(curve, args.budget),
        "held": held(curve, args.threshold, args.hold_floor),
        "hold_floor": args.hold_floor,
    }


def cost_of(variant: str, seed: int, env_steps: int, wall: float, args: argparse.Namespace) -> dict:
    """One cost run's result: training wall seconds (collection and updates) per env step."""
    return {
        "variant": variant,
        "overrides": overrides_of(args, variant) if variant not in BASELINES else [],
        "seed": seed,
        "env_steps": env_steps,
        "train_wall_s": wall,
        "s_per_env_step": wall / env_steps if env_steps else None,
    }


def print_table(results: list[dict]) -> None:
    print(
        f"{'variant':<12} {'seed':>4} {'steps to thr':>12} {'wall to thr':>11} {'trained':>8} {'ms/step':>7} "
        f"{'final mean':>10} {'gain':>7}"
    )
    for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
        steps = r["reached_env_steps"]
        wall = r["reached_wall_s"]
        per_step = r["train_wall_s"] / r["env_steps"] * 1000 if r["env_steps"] else float("nan")
        print(
            f"{r['variant']:<12} {r['seed']:>4} {steps if steps is not None else '-':>12} "
            f"{f'{wall:.0f} s' if wall is not None else '-':>11} {r['env_steps']:>8} {per_step:>7.2f} "
            f"{r['final_return_mean']:>10.1f} {r['search_gain']['gain'] if 'search_gain' in r else math.nan:>7.1f}"
        )


# ---------------------------------------------------------------------------------------------------- driver
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the flags and fill the environment's defaults (``ENVS``) for those not given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("--env-id", help="Gymnasium env of every run (default: the config's data.env_id)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 3 4 (0 with --cost-only)")
    parser.add_argument(
        "--variants",
        nargs="+",
        help=f"variants to run, in order: {', '.join([*ABLATIONS, *BASELINES])} or a --variant's name (default: "
        "emotion ppo; emotion and the --variant ones when --variant is given)",
    )
    parser.add_argument(
        "--variant",
        dest="adhoc_specs",
        type=parse_variant,
        action="append",
        default=[],
        metavar="NAME=--OPTION=VALUE[,...]",
        help="an ad-hoc variant: the config with these overrides (repeatable)",
    )
    parser.add_argument(
        "--hold-floor", type=float, default=400.0, help="a run held its first threshold evaluation if none after it "
        "fell below this (CartPole: 400)",
    )  # fmt: skip
    parser.add_argument(
        "--paired-decision",
        action="store_true",
        help="at every evaluation and at the final one, also play the other greedy decision (emotion_rl.decision) "
        "on the same network and start states",
    )
    parser.add_argument("--budget", type=int, help="env steps at most per run (default: per env)")
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="training wall time at most per run")
    parser.add_argument("--threshold", type=float, help="mean return that solves the task (default: per env)")
    parser.add_argument("--eval-every", type=int, help="env steps between evaluations (default: per env)")
    parser.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation during training")
    parser.add_argument("--final-episodes", type=int, default=100, help="episodes of the final evaluation")
    parser.add_argument(
        "--search-gain",
        type=int,
        default=20,
        metavar="EPISODES",
        help="after each emotion run, greedy episodes per row of the search-gain measurement (0: skip)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU core each)")
    parser.add_argument("--out", help="result folder (default: benchmarks/results/hold/<env id>)")
    parser.add_argument("--force", action="store_true", help="rerun runs whose result file exists")
    parser.add_argument("--cost-only", action="store_true", help="seconds per env step of two variants side by side")
    parser.add_argument("--cost-steps", type=int, default=3_000, help="env steps of each --cost-only run")
    parser.add_argument(
        "--cost-against", metavar="REV", help="with --cost-only: the other run is REV's config and code"
    )
    parser.add_argument("--run-one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    args.adhoc = {}
    for name, overrides in args.adhoc_specs:
        if name in args.adhoc:
            parser.error(f"--variant {name!r} given twice")
        args.adhoc[name] = overrides
    if args.variants is None:
        args.variants = ["emotion"] if args.adhoc else ["emotion", "ppo"]
    unknown = [v for v in args.variants if v not in (*ABLATIONS, *BASELINES, *args.adhoc)]
    if unknown:
        parser.error(
            f"unknown variant(s) {unknown}: name one of {[*ABLATIONS, *BASELINES]} or define it with --variant"
        )
    args.variants = [*args.variants, *(v for v in args.adhoc if v not in args.variants)]
    if args.seeds is None:
        args.seeds = [0] if args.cost_only else [0, 1, 2, 3, 4]
    args.env_id = args.env_id or env_id_of(args.config)
    for key, value in env_defaults(args.env_id).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threshold is None:
        parser.error(f"{args.env_id} has no registered reward threshold: pass --threshold")
    if args.cost_against:
        if not args.cost_only or len(args.variants) != 1:
            parser.error("--cost-against needs --cost-only and one variant (the other is the revision's config)")
        args.variants = [*args.variants, f"emotion@{args.cost_against}"]
    if args.cost_only:
        if len(args.variants) != 2:
            parser.error(f"--cost-only compares two variants, got {args.variants}")
        args.budget, args.eval_every, args.threshold = args.cost_steps, NO_EVALUATION, math.inf
    if args.out is None:
        args.out = str(RESULTS / args.env_id)
    args.config, args.out = in_checkout(args.config), in_checkout(args.out)
    return args


def in_checkout(path: str) -> str:
    """``path`` relative to the checkout when it lies inside it (runs execute there): results name no machine path."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def result_path(args: argparse.Namespace, variant: str, seed: int) -> Path | None:
    """The run's result file in ``--out``, if it exists (a rerun skips it)."""
    path = Path(args.out) / f"{variant}_s{seed}.json"
    return path if path.exists() else None


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.chdir(ROOT)  # the paths in args are relative to the checkout
    out = Path(args.out)
    cost_out = out / "cost"
    (cost_out if args.cost_only else out).mkdir(parents=True, exist_ok=True)
    if args.run_one:  # one run, in this process (the driver starts one process per run)
        variant, seed = args.run_one[0], int(args.run_one[1])
        result = run_ppo(args, seed) if variant in BASELINES else run_emotion(args, variant, seed)
        target = cost_out / f"{variant}_s{seed}.part.json" if args.cost_only else out / f"{variant}_s{seed}.json"
        target.write_text(json.dumps(result, indent=1))
        return

    passthrough = sys.argv[1:] if argv is None else argv

    def launch(run: tuple[str, int]) -> int:
        variant, seed = run
        if args.cost_against and variant == args.variants[1]:
            return launch_at_revision(args, seed)
        log = (cost_out / f"{variant}_s{seed}.log") if args.cost_only else (out / f"{variant}_s{seed}.log")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, __file__, *passthrough, "--run-one", variant, str(seed)]
        with open(log, "w") as handle:
            code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        scrub_paths(log)
        status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"{variant} seed {seed}: {status}", flush=True)
        return code

    if args.cost_only:
        raise SystemExit(1 if measure_cost(args, launch) else 0)

    runs = [(v, s) for v in args.variants for s in args.seeds]
    todo = [(v, s) for v, s in runs if args.force or result_path(args, v, s) is None]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(launch, todo))
    paths = [result_path(args, v, s) for v, s in runs]
    print_table([json.loads(path.read_text()) for path in paths if path is not None])
    if any(codes):
        raise SystemExit(1)


def launch_at_revision(args: argparse.Namespace, seed: int) -> int:
    """``--cost-against``: one cost run of revision ``args.cost_against``'s shipped config with that revision's code
    (its own ``learning.py``), its result written where this script's ``measure_cost`` reads it."""
    variant, cost_out = args.variants[1], Path(args.out).resolve() / "cost"
    log = cost_out / f"{variant}_s{seed}.log"
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder)
        archive = subprocess.run(["git", "archive", args.cost_against], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
        command = [
            sys.executable, str(tree / "benchmarks" / "learning.py"), "--cost-only", "--variants", "emotion", "literal",
            "--cost-steps", str(args.cost_steps), "--seeds", str(seed), "--out", str(tree / "out"),
            "--run-one", "emotion", str(seed),
        ]  # fmt: skip
        with open(log, "w") as handle:
            code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tree)
        if code == 0:
            result = json.loads((tree / "out" / "cost" / f"emotion_s{seed}.part.json").read_text())
            result.update(variant=variant, revision=args.cost_against)
            (cost_out / f"{variant}_s{seed}.part.json").write_text(json.dumps(result, indent=1))
        scrub_paths(log, {str(tree): f"<{args.cost_against}>"})
    print(f"{variant} seed {seed}: {'done' if code == 0 else f'FAILED (exit {code}, see {log})'}", flush=True)
    return code


def scrub_paths(log: Path, names: dict[str, str] | None = None) -> None:
    """Drop this machine's paths from a run's log (warnings name installed files): committed results name none.
    ``names`` maps further paths (a revision's temporary tree) to the placeholder that replaces them."""
    site = str(Path(sysconfig.get_paths()["purelib"]))
    text = Path(log).read_text(errors="replace").replace(site, "<site-packages>").replace(f"{ROOT}/", "")
    for path, name in (names or {}).items():
        text = text.replace(path, name)
    Path(log).write_text(text)


def measure_cost(args: argparse.Namespace, launch) -> bool:  # noqa: ANN001
    """``--cost-only``: per seed, the two variants side by side; writes and prints seconds per env step.
    True when a run failed."""
    first, second = args.variants
    cost_out = Path(args.out) / "cost"
    failed = False
    for seed in args.seeds:
        with ThreadPoolExecutor(max_workers=2) as pool:
            codes = list(pool.map(launch, [(first, seed), (second, seed)]))
        if any(codes):
            failed = True
            continue
        parts = [cost_out / f"{variant}_s{seed}.part.json" for variant in (first, second)]
        runs = [json.loads(part.read_text()) for part in parts]
        report = {
            "env_id": args.env_id,
            "config": args.config,
            "seed": seed,
            "cost_steps": args.cost_steps,
            "max_minutes": args.max_minutes,
            "runs": runs,
            "ratio": runs[1]["s_per_env_step"] / runs[0]["s_per_env_step"]
            if runs[0]["s_per_env_step"] and runs[1]["s_per_env_step"]
            else None,
        }
        target = cost_out / f"{first}_vs_{second}_s{seed}.json"
        target.write_text(json.dumps(report, indent=1))
        for part in parts:
            part.unlink()
        for run in runs:
            print(
                f"{run['variant']:<12} seed {seed}: {run['env_steps']:>7} env steps, "
                f"{1000 * (run['s_per_env_step'] or math.nan):.2f} ms per env step"
            )
        ratio = f"{report['ratio']:.2f}x" if report["ratio"] is not None else "-"
        print(f"{second} / {first}: {ratio}  ({target})")
    return failed


if __name__ == "__main__":
    main()
