"""Search gain: does the agent's search act better than its own prior, or than any single emotion?

One checkpoint, greedy play, the same fixed start states for every row (one env per episode, all episodes of a
row played together, one planner call per step for all of them):

- ``search``: the agent's configured planner (``agent.make_policy(greedy=True)``: spec 1.3's search, the most
  visited emotion, its action head's argmax; spec 5 steps 1-3);
- ``prior``: no search, :class:`emotion_rl.mcts.planners.PriorPlanner`: the policy head's argmax emotion at the root,
  then that emotion's argmax action;
- ``emotion_<e>``: :class:`emotion_rl.mcts.planners.FixedEmotionPlanner`: always emotion ``e``, its argmax action.

For every row: mean, std (population), min and max return; over the states the ``search`` row visited, the share
where the search's action differs from the one the prior's argmax emotion would have taken (``action_changed``),
where its emotion differs from the prior's argmax (``emotion_changed``), and the mean ``KL(visits || prior)`` and
argmax agreement the training logs as ``search/*``. The gain is ``search - max(prior, best single emotion)``: a
search that does not beat the best of its fixed alternatives is not earning its cost, whatever the return.

Over the ``search`` row's states, the emotions' heads (``emotion_heads.py``): their pairwise agreement (the share
of emotion pairs whose argmax actions agree, per state, averaged; the ``E x E`` matrix), each emotion's usage and,
with ``--disagreements K``, at up to ``K`` states per episode where the heads disagree, whether the search's action
returns at least as much as every other head's, each rolled out on a copy of the env (``--horizon`` steps).

    python benchmarks/search_gain.py models/cartpole.ckpt --env-id CartPole-v1 --episodes 100 \\
        --out benchmarks/results/search_gain/cartpole_shipped.json
    python benchmarks/search_gain.py runs/cartpole/version_0/checkpoints/last.ckpt --episodes 20
    python benchmarks/search_gain.py models/cartpole.ckpt --env-id CartPole-v1 --episodes 20 --disagreements 3

The env comes from the checkpoint's datamodule section (``env_id``, its options and ``time_limit``) when it has
one; a weights-only checkpoint such as ``models/cartpole.ckpt`` has none, so ``--env-id`` is then required.
``--time-limit`` caps every episode (default: the checkpoint's ``time_limit``, else the env's registered limit).
Needs the ``viz`` or ``benchmark`` extra (the checkpoint is read with ``emotion_rl.viz.load_agent``).
See docs/benchmarks.md, "Search gain" and "Emotion heads".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from emotion_heads import (
    HeadRecorder,
    RecordingPlanner,
    check_copyable,
    check_disagreements,
    head_agreement,
    heads_table,
)

from emotion_rl.data.envs import make_env, probe_env
from emotion_rl.data.rollout import play
from emotion_rl.data.selfplay import acting_changes, search_improvement
from emotion_rl.mcts.planners import FixedEmotionPlanner, PriorPlanner
from emotion_rl.policy import EmotionPolicy

ROOT = Path(__file__).resolve().parents[1]
ENV_OPTIONS = ("env_kwargs", "env_wrappers", "env_factory")
"""The datamodule settings, besides ``env_id`` and ``time_limit``, that make its env (EmotionDataModule)."""


def display_path(path: str | os.PathLike) -> str:
    """The checkpoint path for the report: as given when relative, else relative to the working directory or the
    checkout when inside one, else its file name (the report names no machine path)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for base in (Path.cwd(), ROOT):
        if path.resolve().is_relative_to(base.resolve()):
            return path.resolve().relative_to(base.resolve()).as_posix()
    return path.name


def env_settings(ckpt_path: str | os.PathLike, env_id: str | None, time_limit: int | None) -> dict:
    """``{"env_id", "time_limit", "env_kwargs", "env_wrappers", "env_factory"}`` from ``--env-id`` /
    ``--time-limit`` and the checkpoint's ``datamodule_hyper_parameters`` (whose env options apply only to its own
    env). Raises ``ValueError`` when neither names an env."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if env_id is None:
        env_id = data.get("env_id")
        if env_id is None:
            raise ValueError(
                f"{display_path(ckpt_path)} has no datamodule section (a weights-only checkpoint): pass --env-id"
            )
    same_env = env_id == data.get("env_id")
    settings = {"env_id": str(env_id)}
    settings.update({key: data.get(key) if same_env else None for key in ENV_OPTIONS})
    settings["time_limit"] = time_limit if time_limit is not None else (data.get("time_limit") if same_env else None)
    return settings


def planners(agent) -> dict[str, tuple[object, str]]:  # noqa: ANN001 - an EmotionAgent
    """The rows, each a planner and the greedy decision it acts with (``emotion_rl.decision``): ``search`` (the
    agent's planner and decision), ``search_by_<other>`` (the same search, the other decision), ``values`` (no
    search, the action whose emotions' mean root value ``V^e`` is highest: Q-greedy in the network's own values),
    ``prior``, and ``emotion_<e>`` for every emotion."""
    configured = getattr(agent, "hparams", {}).get("greedy_decision", "emotion")
    other = "action" if configured == "emotion" else "emotion"
    rows: dict[str, tuple[object, str]] = {
        "search": (agent.planner, configured),
        f"search_by_{other}": (agent.planner, other),
        "values": (PriorPlanner(), "action"),
        "prior": (PriorPlanner(), "emotion"),
    }
    rows.update({f"emotion_{e}": (FixedEmotionPlanner(e), "emotion") for e in range(agent.model.n_emotions)})
    return rows


def play_row(
    agent,  # noqa: ANN001 - an EmotionAgent
    planner,  # noqa: ANN001
    settings: dict,
    episodes: int,
    seed: int,
    max_steps: int,
    heads: bool = False,
    disagreements: int = 0,
    horizon: int = 100,
    decision: str = "emotion",
) -> dict:
    """``episodes`` greedy episodes of ``planner`` over ``agent.model``, one env each, envs seeded by ``seed``,
    acting by the greedy ``decision`` (``emotion_rl.decision``).

    Returns the per-episode returns and lengths (each env's first episode, as ``evaluate_policy`` counts them), the
    first observations (the start states), and the per-state means over the visited states of ``action_changed``,
    ``emotion_changed``, ``KL(visits || prior)`` and argmax agreement. ``heads``: also the emotions' head agreement
    and usage over those states (``emotion_heads.head_agreement``) and, with ``disagreements`` ``K > 0``, the
    disagreement check at up to ``K`` states per episode with ``horizon`` steps per rollout (played after the row,
    on copies: the row's own episodes are the same with or without it).
    """
    options = {key: settings[key] for key in ENV_OPTIONS}
    env = make_env(settings["env_id"], episodes, seed=seed, max_episode_steps=settings["time_limit"], **options)
    generator = torch.Generator().manual_seed(seed)  # the search draws only under random options (ties, noise)
    policy = EmotionPolicy(
        agent.model,
        RecordingPlanner(planner) if heads else planner,
        greedy=True,
        generator=generator,
        greedy_decision=decision,
    )
    acting = policy
    if heads:
        acting = HeadRecorder(
            policy, env if disagreements else None, disagreements, generator=torch.Generator().manual_seed(seed + 1)
        )
    start = time.perf_counter()
    try:
        steps = play(env, acting, max_steps, break_when_any_done=False, break_when_all_done=True)
    finally:
        env.close()
    seconds = time.perf_counter() - start
    steps = steps.reshape(-1, steps.batch_size[-1]).to("cpu")
    done = steps.get(("next", "done")).reshape(steps.batch_size).long()
    first = (done.cumsum(-1) - done) == 0  # the steps of each env's first episode
    reward = steps.get(("next", "reward")).reshape(steps.batch_size).to(torch.float64)
    returns = torch.where(first, reward, torch.zeros_like(reward)).sum(-1)
    action_changed, emotion_changed = acting_changes(steps)
    kl, agreement = search_improvement(steps.get("policy_target"), steps.get("prior"))

    def visited_mean(values: torch.Tensor) -> float:
        return float(values[first].to(torch.float64).mean())

    row = {
        "returns": returns.tolist(),
        "lengths": first.sum(-1).tolist(),
        "start_observations": steps.get("observation")[:, 0].tolist(),
        "action_changed": visited_mean(action_changed),
        "emotion_changed": visited_mean(emotion_changed),
        "kl_target_prior": visited_mean(kl),
        "argmax_agreement": visited_mean(agreement),
        "states": int(first.sum()),
        "seconds": seconds,
    }
    if heads:
        greedy, emotion = acting.states()
        if greedy.shape[0] != row["states"]:
            raise RuntimeError(f"recorded {greedy.shape[0]} states of the heads, the row visited {row['states']}")
        row["heads"] = head_agreement(greedy, emotion)
    if heads and disagreements:
        start = time.perf_counter()
        check = torch.Generator().manual_seed(seed + 2)
        row["disagreements"] = check_disagreements(agent.model, planner, acting.branch_points(), horizon, check)
        row["disagreements"]["seconds"] = time.perf_counter() - start
    return row


def summarize(row: dict) -> dict:
    """Mean, std (population), min and max of a row's returns, next to the row."""
    returns = torch.tensor(row["returns"], dtype=torch.float64)
    stats = {
        "mean": float(returns.mean()),
        "std": float(returns.std(unbiased=False)),
        "min": float(returns.min()),
        "max": float(returns.max()),
    }
    return {**stats, **row}


def measure(
    agent,  # noqa: ANN001 - an EmotionAgent
    settings: dict,
    episodes: int,
    seed: int,
    rows: Sequence[str] | None = None,
    log=print,  # noqa: ANN001
    disagreements: int = 0,
    horizon: int = 100,
) -> dict:
    """Every row of :func:`planners` (or those named in ``rows``) on the same start states; the report without
    the checkpoint's name (:func:`main` adds it). Over the ``search`` row's states, the emotions' head agreement and
    usage (``heads``) and, with ``disagreements`` ``K > 0`` (gymnasium's CartPole, Acrobot or MountainCar only), the
    disagreement check of ``emotion_heads`` at up to ``K`` states per episode, ``horizon`` steps per rollout."""
    info = probe_env(settings["env_id"], settings["time_limit"], **{key: settings[key] for key in ENV_OPTIONS})
    max_steps = int(info.max_episode_steps)
    if disagreements:
        check_copyable(settings)  # before any episode is played
    results: dict[str, dict] = {}
    starts = None
    for name, (planner, decision) in planners(agent).items():
        if rows is not None and name not in rows and name != "search":
            continue
        heads = name == "search"  # the heads' agreement and the check are measured on the search's states
        check = disagreements if heads else 0
        row = play_row(agent, planner, settings, episodes, seed, max_steps, heads, check, horizon, decision)
        row = summarize(row)
        if starts is None:
            starts = row["start_observations"]
        elif row["start_observations"] != starts:
            raise RuntimeError(f"row {name!r} started from other states than the search row: the env seeding changed")
        del row["start_observations"]
        results[name] = row
        log(f"{name:<10} mean {row['mean']:8.1f}  ({row['seconds']:.1f} s)")
    baselines = {name: row["mean"] for name, row in results.items() if name == "prior" or name.startswith("emotion_")}
    best = max(baselines, key=baselines.get) if baselines else None
    search = results["search"]
    heads, check = search.pop("heads"), search.pop("disagreements", None)  # the search's states: the report's own
    return {
        "env_id": settings["env_id"],
        "env_options": {key: settings[key] for key in ENV_OPTIONS if settings[key] is not None},
        "time_limit": max_steps,
        "seed": seed,
        "episodes": episodes,
        "planner": repr(agent.planner),
        "rows": results,
        "search_vs_prior": {
            key: search[key] for key in ("action_changed", "emotion_changed", "kl_target_prior", "argmax_agreement")
        },
        "heads": heads,
        "disagreements": check,
        "best_baseline": best,
        "gain": search["mean"] - baselines[best] if best is not None else math.nan,
        "gain_over_prior": search["mean"] - results["prior"]["mean"] if "prior" in results else math.nan,
        "gain_over_values": search["mean"] - results["values"]["mean"] if "values" in results else math.nan,
    }


def table(report: dict) -> str:
    """The printed summary: one line per row (with the search's usage of each emotion), then the search's changes,
    its gain, the heads' agreement and the disagreement check."""
    usage = report["heads"]["usage"]
    lines = [f"{'row':<10} {'mean':>8} {'std':>7} {'min':>7} {'max':>7}  action_changed emotion_changed  usage"]
    for name, row in report["rows"].items():
        used = f"{usage[int(name.removeprefix('emotion_'))]:6.3f}" if name.startswith("emotion_") else f"{'':>6}"
        lines.append(
            f"{name:<10} {row['mean']:8.1f} {row['std']:7.1f} {row['min']:7.1f} {row['max']:7.1f}  "
            f"{row['action_changed']:14.3f} {row['emotion_changed']:15.3f}  {used}"
        )
    versus = report["search_vs_prior"]
    lines += [
        "",
        f"{report['env_id']}, {report['episodes']} episodes (env seed {report['seed']}, time limit "
        f"{report['time_limit']}), {report['planner']}",
        f"search vs prior over the search's {report['rows']['search']['states']} states: action changed "
        f"{versus['action_changed']:.3f}, emotion changed {versus['emotion_changed']:.3f}, "
        f"KL(target || prior) {versus['kl_target_prior']:.3f}, argmax agreement {versus['argmax_agreement']:.3f}",
        f"gain = search - max(prior, best single emotion) = {report['gain']:+.1f} (best: {report['best_baseline']}); "
        f"search - prior = {report['gain_over_prior']:+.1f}",
        "",
        heads_table(report["heads"], report["disagreements"]),
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a Lightning checkpoint of EmotionAgent (weights-only ones too)")
    parser.add_argument("--env-id", default=None, help="default: the checkpoint's datamodule env_id")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per row (one env each)")
    parser.add_argument("--seed", type=int, default=0, help="env seed: the same start states for every row")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--time-limit", type=int, default=None, help="steps per episode at most")
    parser.add_argument(
        "--disagreements",
        type=int,
        default=0,
        metavar="K",
        help="the disagreement check at up to K states per search episode where the heads disagree (0: off; "
        "CartPole, Acrobot, MountainCar)",
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=100,
        help="steps per rollout of the disagreement check (its first action included)",
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.time_limit is not None and args.time_limit < 1:
        parser.error(f"--time-limit must be >= 1, got {args.time_limit}")
    if args.disagreements < 0:
        parser.error(f"--disagreements must be >= 0, got {args.disagreements}")
    if args.horizon < 1:
        parser.error(f"--horizon must be >= 1, got {args.horizon}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark of ``argv`` (the command line when None); print the table, write ``--out``, return the
    report."""
    from emotion_rl.viz import load_agent

    args = parse(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    settings = env_settings(args.ckpt, args.env_id, args.time_limit)
    agent = load_agent(args.ckpt)
    check = {"disagreements": args.disagreements, "horizon": args.horizon}
    report = {"checkpoint": display_path(args.ckpt), **measure(agent, settings, args.episodes, args.seed, **check)}
    print(table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
