"""Search gain: does the agent's search act better than its own prior, its own values, or any single emotion?

One agent, greedy play, the same fixed start states for every row (:func:`emotion_rl.evaluation.play.play_greedy`):

- ``search``: the agent's planner and greedy decision (spec 1.3's search; spec 5 steps 1-3);
- ``search_by_<other>``: the same search, the other greedy decision (``emotion_rl.decision``);
- ``values``: no search, :class:`~emotion_rl.PriorPlanner` with decision ``action``: the action whose emotions' mean
  root value is highest (Q-greedy in the network's own values);
- ``prior``: no search, the policy head's argmax emotion at the root, then that emotion's argmax action;
- ``emotion_<e>``: :class:`~emotion_rl.FixedEmotionPlanner`: always emotion ``e``, its argmax action.

Per row: mean, std (population), min and max return; over the ``search`` row's states the share where its action
(``action_changed``) and emotion (``emotion_changed``) differ from the prior's, the mean ``KL(visits || prior)`` and
argmax agreement (what training logs as ``search/*``), and the emotions' head agreement and usage
(:mod:`emotion_rl.evaluation.heads`). The gain is ``search - max(prior, best single emotion)``: a search that does
not beat the best of its fixed alternatives is not earning its cost (docs/benchmarks.md, "Search gain").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from emotion_rl.data.selfplay import acting_changes, search_improvement
from emotion_rl.decision import PAIRED_DECISION
from emotion_rl.evaluation.heads import HeadRecorder, check_copyable, check_disagreements, head_agreement, heads_table
from emotion_rl.evaluation.play import ENV_OPTIONS, episode_limit, play_greedy
from emotion_rl.evaluation.recording import RecordingPlanner
from emotion_rl.mcts.planners import FixedEmotionPlanner, PriorPlanner

__all__ = ["gain_rows", "gain_table", "measure_gain", "play_row"]

CHANGES = ("action_changed", "emotion_changed", "kl_target_prior", "argmax_agreement")


def gain_rows(agent: Any) -> dict[str, tuple[Any, str]]:  # noqa: ANN401 - an EmotionAgent
    """The rows, each a planner and the greedy decision it acts with: ``search``, ``search_by_<other>``, ``values``,
    ``prior`` and ``emotion_<e>`` for every emotion (the module docstring)."""
    rows: dict[str, tuple[Any, str]] = {
        "search": (agent.planner, "emotion"),
        f"search_by_{PAIRED_DECISION}": (agent.planner, PAIRED_DECISION),
        "values": (PriorPlanner(), PAIRED_DECISION),
        "prior": (PriorPlanner(), "emotion"),
    }
    rows.update({f"emotion_{e}": (FixedEmotionPlanner(e), "emotion") for e in range(agent.model.n_emotions)})
    return rows


def play_row(
    agent: Any,  # noqa: ANN401 - an EmotionAgent
    planner: Any,  # noqa: ANN401
    settings: Mapping[str, Any],
    episodes: int,
    seed: int,
    heads: bool = False,
    disagreements: int = 0,
    horizon: int = 100,
    decision: str = "emotion",
) -> dict:
    """One row: ``episodes`` greedy episodes of ``planner`` over ``agent.model`` (:func:`play_greedy`).

    Returns the per-episode ``returns`` and ``lengths``, the ``start_observations``, the :data:`CHANGES` averaged
    over the visited states, ``states`` and ``seconds``; with ``heads``, the head agreement and usage over those
    states and, with ``disagreements`` ``K > 0``, the disagreement check at up to ``K`` states per episode
    (``horizon`` steps per rollout, played after the row on copies: the row's own episodes are the same without it).
    """

    def recorder(policy: Any, env: Any) -> HeadRecorder:  # noqa: ANN401
        check = torch.Generator().manual_seed(seed + 1)
        return HeadRecorder(policy, env if disagreements else None, disagreements, generator=check)

    acting = RecordingPlanner(planner) if heads else planner
    played = play_greedy(agent.model, acting, settings, episodes, seed, decision, recorder if heads else None)
    steps, first = played.steps, played.first
    changes = (*acting_changes(steps), *search_improvement(steps.get("policy_target"), steps.get("prior")))
    row = {
        "returns": played.returns.tolist(),
        "lengths": played.lengths.tolist(),
        "start_observations": steps.get("observation")[:, 0].tolist(),
        **{key: float(value[first].to(torch.float64).mean()) for key, value in zip(CHANGES, changes, strict=True)},
        "states": int(first.sum()),
        "seconds": played.seconds,
    }
    if heads:
        greedy, emotion = played.acting.states()
        if greedy.shape[0] != row["states"]:
            raise RuntimeError(f"recorded {greedy.shape[0]} states of the heads, the row visited {row['states']}")
        row["heads"] = head_agreement(greedy, emotion)
    if heads and disagreements:
        start, check = time.perf_counter(), torch.Generator().manual_seed(seed + 2)
        points = played.acting.branch_points()
        row["disagreements"] = check_disagreements(agent.model, planner, points, horizon, check)
        row["disagreements"]["seconds"] = time.perf_counter() - start
    return row


def return_stats(returns: Sequence[float]) -> dict:
    """Mean, std (population), min and max of a row's returns."""
    values = torch.tensor(returns, dtype=torch.float64)
    stats = {"mean": values.mean(), "std": values.std(unbiased=False), "min": values.min(), "max": values.max()}
    return {key: float(value) for key, value in stats.items()}


def gains(results: Mapping[str, dict]) -> dict:
    """``best_baseline`` (the best of prior and the single emotions), ``gain`` (search minus it), ``gain_over_prior``
    and ``gain_over_values`` (NaN where a row was not played)."""
    baselines = {name: row["mean"] for name, row in results.items() if name == "prior" or name.startswith("emotion_")}
    best = max(baselines, key=baselines.get) if baselines else None
    search = results["search"]["mean"]
    return {
        "best_baseline": best,
        "gain": search - baselines[best] if best is not None else math.nan,
        "gain_over_prior": search - results["prior"]["mean"] if "prior" in results else math.nan,
        "gain_over_values": search - results["values"]["mean"] if "values" in results else math.nan,
    }


def measure_gain(
    agent: Any,  # noqa: ANN401 - an EmotionAgent
    settings: Mapping[str, Any],
    episodes: int,
    seed: int,
    rows: Sequence[str] | None = None,
    log: Callable[[str], Any] = print,
    disagreements: int = 0,
    horizon: int = 100,
) -> dict:
    """Every row of :func:`gain_rows` (or those named in ``rows``; ``search`` always) on the same start states, and
    the gains. Over the ``search`` row's states, the heads (``heads``) and, with ``disagreements`` ``K > 0``
    (gymnasium's CartPole, Acrobot or MountainCar only), the disagreement check (``disagreements``)."""
    max_steps = episode_limit(settings)
    if disagreements:
        check_copyable(settings)  # before any episode is played
    results: dict[str, dict] = {}
    starts = None
    for name, (planner, decision) in gain_rows(agent).items():
        if rows is not None and name not in rows and name != "search":
            continue
        heads = name == "search"  # the heads' agreement and the check are measured on the search's states
        check = disagreements if heads else 0
        row = play_row(agent, planner, settings, episodes, seed, heads, check, horizon, decision)
        starts = row["start_observations"] if starts is None else starts
        if row.pop("start_observations") != starts:
            raise RuntimeError(f"row {name!r} started from other states than the search row: the env seeding changed")
        results[name] = row = {**return_stats(row["returns"]), **row}
        log(f"{name:<10} mean {row['mean']:8.1f}  ({row['seconds']:.1f} s)")
    search = results["search"]
    heads, check = search.pop("heads"), search.pop("disagreements", None)  # the search's states: the report's own
    return {
        "env_id": settings["env_id"],
        "env_options": {key: settings[key] for key in ENV_OPTIONS if settings.get(key) is not None},
        "time_limit": max_steps,
        "seed": seed,
        "episodes": episodes,
        "planner": repr(agent.planner),
        "rows": results,
        "search_vs_prior": {key: search[key] for key in CHANGES},
        "heads": heads,
        "disagreements": check,
        **gains(results),
    }


def gain_table(report: Mapping[str, Any]) -> str:
    """The printed summary of :func:`measure_gain`: one line per row (with the search's usage of each emotion), the
    search's changes, its gains, the heads' agreement and the disagreement check."""
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
