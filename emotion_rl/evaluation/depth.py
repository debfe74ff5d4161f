"""How far the search sees: what the tree believes along the path the agent really took, against what happened
(docs/benchmarks.md, "How far the search sees"; ``benchmarks/search_depth.py`` is its command).

Greedy play with the agent's own planner (:func:`emotion_rl.evaluation.play.play_greedy`), every search's tree kept
(:class:`~emotion_rl.evaluation.recording.RecordingPlanner`); after the episodes, at every real state ``s_t`` of each
env's first episode, the tree is read along the emotions the agent really took next, ``e_t, e_{t+1}, ...``:
``node_0`` is the root and ``node_{k+1} = children[node_k, e_{t+k}]`` as far as the tree expanded it.

- **Dynamics by depth** (``k = 1 .. max_depth``): the imagined state ``child_state[node_{k-1}, e_{t+k-1}]``
  against the real ``s_{t+k}`` (Euclidean norm of the difference), where ``node_{k-1}`` exists; whether the action
  the model imagined there (its action head's argmax for ``e_{t+k-1}`` at ``node_{k-1}``) is the action taken at
  ``s_{t+k-1}``; and two yardsticks: the error of guessing ``s_t`` itself, and the error of the same prediction
  made from the real ``s_{t+k-1}`` (``k >= 2``: what the depth would give without the errors above it).
- **Values by depth** (``k = 0 .. max_depth - 1``), each against ``y_{t+k} = return_scale * G_{t+k}``, the real
  discounted return from ``s_{t+k}`` with the agent's ``gamma`` and the episode's own rewards (what ``V^{e_{t+k}}``
  at ``s_{t+k}`` learns, spec 2.2.2): ``value``, the stored ``V^{e_{t+k}}`` at ``node_k`` (``child_value``);
  ``q``, the backed-up ``Q(node_k, e_{t+k})`` where that edge was visited; ``leaf``, the value a simulation backs
  up when it expands ``node_k`` (the model's ``state_value`` of the node's ``V^e``, spec 1.4). A return is *cut*
  when the episode ended at the time limit and the missing tail weighs more than ``--cut-tolerance``
  (``gamma^(steps left) > 0.01``): such samples are reported apart, not mixed with the exact ones.
- **Root Q gaps** (:func:`emotion_rl.mcts.root_gap.root_q_gaps`, what training logs): per decision, the best minus
  the second-best completed ``Q`` among the root's children (``Q`` where visited, else the child's own ``V^e``),
  and the best minus the best child of another action; each divided by the RMSE of the root's ``q`` (depth 0,
  exact returns): below 1, the decision was taken on a difference smaller than the values' own error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl.data.episodes import discounted_returns as episode_returns
from emotion_rl.data.rollout import first_episodes
from emotion_rl.evaluation.play import ENV_OPTIONS, episode_limit, play_greedy
from emotion_rl.evaluation.recording import RecordingPlanner
from emotion_rl.mcts.root_gap import completed_root_q, root_q_gaps

__all__ = ["CUT_TOLERANCE", "QUANTILES", "Episode", "Search", "measure_depth"]

CUT_TOLERANCE = 0.01
"""A return cut by the time limit is counted as cut while the missing tail's weight ``gamma^(steps left)`` exceeds
this."""
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
VALUE_KINDS = ("value", "q", "leaf")


@dataclass
class Episode:
    """One env's first episode: ``observations`` ``[T + 1, obs]`` (``s_0 .. s_T``, ``s_T`` the last next
    observation), ``actions``, ``emotions`` ``[T]`` (taken at ``s_t``), ``rewards`` ``[T]`` (``r_t`` after
    ``a_t``), and whether it ended by termination (else at the time limit: its returns are cut)."""

    observations: np.ndarray
    actions: np.ndarray
    emotions: np.ndarray
    rewards: np.ndarray
    terminated: bool

    @property
    def length(self) -> int:
        return len(self.actions)


@dataclass
class Search:
    """One env's tree of one search (``EmotionMCTS.search``'s ``tree``, one row, numpy): ``children`` ``[M, E]``
    (-1: not expanded), ``child_state`` ``[M, E, obs]``, ``child_value``, ``child_visits``, ``child_value_sum``
    ``[M, E]``; ``node_value`` ``[M]`` (the node's leaf value, the model's ``state_value`` of its ``child_value``);
    ``node_actions`` ``[M, E]``: each emotion's argmax action at the node where known, else -1 (the root's from the
    search; a deeper node's filled in by :func:`evaluate_paths`). ``from_real`` ``[D + 1, E, obs]`` (optional):
    row ``k >= 2`` holds the next states the model imagines from an imagined token of the *real* ``s_{t+k-1}``
    (what depth ``k`` would be without the errors of the depths above it), NaN where not evaluated."""

    children: np.ndarray
    child_state: np.ndarray
    child_value: np.ndarray
    child_visits: np.ndarray
    child_value_sum: np.ndarray
    node_value: np.ndarray
    node_actions: np.ndarray
    from_real: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- bookkeeping
def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = r_t + gamma G_{t+1}`` over one episode ``[T]`` (``G`` after the last step 0), as numpy float64: the
    returns the agent's replay stores (:func:`emotion_rl.data.episodes.discounted_returns`)."""
    return episode_returns(torch.as_tensor(np.asarray(rewards, dtype=np.float32)), gamma).double().numpy()


def cut_returns(episode: Episode, gamma: float, tolerance: float = CUT_TOLERANCE) -> np.ndarray:
    """bool ``[T]``: the return from ``s_t`` is cut by the time limit (not terminated, and the missing tail's weight
    ``gamma^(T - t)`` exceeds ``tolerance``)."""
    steps_left = episode.length - np.arange(episode.length)
    return np.full(episode.length, not episode.terminated) & (gamma**steps_left > tolerance)


def tree_path(children: np.ndarray, emotions: Sequence[int]) -> list[int]:
    """``[node_0, node_1, ...]``: the root (0), then ``children[node_k, emotions[k]]`` while it was expanded."""
    nodes = [0]
    for emotion in emotions:
        child = int(children[nodes[-1], int(emotion)])
        if child < 0:
            break
        nodes.append(child)
    return nodes


def root_gaps(search: Search) -> tuple[float, float]:
    """``(gap, action_gap)`` at the root (:func:`emotion_rl.mcts.root_gap.root_q_gaps`, what the policy writes in
    training): the best minus the second-best completed ``Q`` among the root's children, and the best minus the
    best of the children whose action (``node_actions`` at the root) differs from the best one's; unvisited
    children read their own ``V^e``."""
    keys = ("child_visits", "child_value_sum", "child_value")
    tree = TensorDict({key: torch.from_numpy(getattr(search, key)[None]) for key in keys}, batch_size=[1])
    q = completed_root_q(tree).to(torch.float64)
    gap, action_gap = root_q_gaps(q, torch.from_numpy(search.node_actions[:1]))
    return float(gap[0]), float(action_gap[0])


def step_readings(
    search: Search, episode: Episode, t: int, targets: np.ndarray, cut: np.ndarray, max_depth: int
) -> list[dict]:
    """What the tree of the search at ``s_t`` believed along the emotions really taken, against what happened.

    ``targets`` ``[T]``: ``return_scale * G``; ``cut`` ``[T]``: :func:`cut_returns`. Returns one record per reading:
    ``{"kind": "state", "depth": k, "error", "guess_error", "real_parent_error", "action_match", "path_match"}`` for
    ``k = 1 .. max_depth`` where the tree has ``node_{k-1}`` on the path (``error``: ``||child_state - s_{t+k}||``;
    ``guess_error``: ``||s_t - s_{t+k}||``; ``real_parent_error``: the same from ``search.from_real[k]``, NaN where
    absent; ``path_match``: every imagined action from the root to depth ``k`` was the one taken), and
    ``{"kind": "value" | "q" | "leaf", "depth": k, "error", "cut"}`` for ``k = 0 .. max_depth - 1`` where
    ``node_k`` exists and ``s_{t+k}`` is a step of the episode (``error``: prediction minus ``targets[t + k]``)."""
    length = episode.length
    emotions = episode.emotions[t : min(t + max_depth, length)]
    nodes = tree_path(search.children, emotions)
    records: list[dict] = []
    path_match = True
    for k in range(1, len(emotions) + 1):  # s_{t+k} exists for t + k <= T
        parent = nodes[k - 1] if k - 1 < len(nodes) else None
        if parent is None:
            break
        emotion = int(episode.emotions[t + k - 1])
        imagined = search.child_state[parent, emotion].astype(np.float64)
        real = episode.observations[t + k].astype(np.float64)
        action_match = bool(search.node_actions[parent, emotion] == episode.actions[t + k - 1])
        path_match = path_match and action_match
        from_real = math.nan
        if search.from_real is not None and k < len(search.from_real):
            from_real = float(np.linalg.norm(search.from_real[k, emotion].astype(np.float64) - real))
        records.append(
            {
                "kind": "state",
                "depth": k,
                "error": float(np.linalg.norm(imagined - real)),
                "guess_error": float(np.linalg.norm(episode.observations[t].astype(np.float64) - real)),
                "real_parent_error": from_real,
                "action_match": action_match,
                "path_match": path_match,
            }
        )
    for k, node in enumerate(nodes):
        if k >= max_depth or t + k >= length:
            break
        emotion, target = int(episode.emotions[t + k]), float(targets[t + k])
        common = {"depth": k, "cut": bool(cut[t + k])}
        records.append({"kind": "value", "error": float(search.child_value[node, emotion]) - target, **common})
        records.append({"kind": "leaf", "error": float(search.node_value[node]) - target, **common})
        visits = int(search.child_visits[node, emotion])
        if visits > 0:
            q = float(search.child_value_sum[node, emotion]) / visits
            records.append({"kind": "q", "error": q - target, **common})
    return records


# ---------------------------------------------------------------------------------------------- statistics
def stats(errors: Sequence[float]) -> dict:
    """``n``, ``mean``, ``median`` and ``rmse`` of ``errors`` (NaN when empty)."""
    values = np.asarray(errors, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "rmse": math.nan}
    mean, median = float(values.mean()), float(np.median(values))
    return {"n": int(values.size), "mean": mean, "median": median, "rmse": float(np.sqrt((values**2).mean()))}


def gap_summary(gaps: Sequence[float], rmse: float) -> dict:
    """Quantiles of the finite ``gaps`` and of ``gaps / rmse``, and the share of them below ``rmse``."""
    finite = np.asarray([g for g in gaps if math.isfinite(g)], dtype=np.float64)
    ratio = finite / rmse if finite.size and rmse > 0 else np.asarray([], dtype=np.float64)
    return {
        "n": int(finite.size),
        "share_below_rmse": float((ratio < 1).mean()) if ratio.size else math.nan,
        "gap_quantiles": {str(q): float(np.quantile(finite, q)) for q in QUANTILES} if finite.size else {},
        "ratio_quantiles": {str(q): float(np.quantile(ratio, q)) for q in QUANTILES} if ratio.size else {},
    }


def summarize(
    records: Sequence[dict], possible: dict[int, int], gaps: Sequence[tuple[float, float]], max_depth: int
) -> dict:
    """The report's numbers from :func:`step_readings`' records, ``possible[k]`` (decisions whose ``s_{t+k}`` is in
    the episode) and :func:`root_gaps` of every decision."""
    dynamics = {}
    for k in range(1, max_depth + 1):
        rows = [r for r in records if r["kind"] == "state" and r["depth"] == k]
        dynamics[str(k)] = {
            **stats([r["error"] for r in rows]),
            "reached": len(rows) / possible[k] if possible.get(k) else math.nan,
            "action_match": float(np.mean([r["action_match"] for r in rows])) if rows else math.nan,
            "path_matched": stats([r["error"] for r in rows if r["path_match"]]),
            "guess_s_t": stats([r["guess_error"] for r in rows]),
            "from_real_state": stats([r["real_parent_error"] for r in rows if math.isfinite(r["real_parent_error"])]),
        }
    values: dict[str, dict] = {}
    for kind in VALUE_KINDS:
        values[kind] = {}
        for k in range(max_depth):
            rows = [r for r in records if r["kind"] == kind and r["depth"] == k]
            values[kind][str(k)] = {
                "exact": stats([r["error"] for r in rows if not r["cut"]]),
                "cut": stats([r["error"] for r in rows if r["cut"]]),
            }
    rmse = values["q"]["0"]["exact"]["rmse"]
    gap = {
        "value_rmse": rmse,
        "best_second": gap_summary([g for g, _ in gaps], rmse),
        "best_other_action": gap_summary([g for _, g in gaps], rmse),
    }
    return {"dynamics": dynamics, "values": values, "root_gap": gap}


# ---------------------------------------------------------------------------------------------- playing
def tree_arrays(model: Any, result: TensorDictBase) -> dict[str, np.ndarray]:  # noqa: ANN401 - an EmotionModel
    """One search's ``tree`` as numpy ``[B, ...]`` (the :class:`Search` fields), ``node_value`` (the model's
    ``state_value`` of each node's ``child_value``) and ``node_actions`` (-1 but the root's: each emotion's argmax
    action as the search returned it). Raises ``ValueError`` for a planner that returns no tree."""
    if "tree" not in result.keys():
        raise ValueError("the planner returns no tree: the depth reading reads EmotionMCTS's tree")
    tree = result["tree"]
    arrays = {key: tree[key].cpu().numpy() for key in Search.__dataclass_fields__ if key in tree.keys()}
    arrays["node_value"] = model.state_value(tree["child_value"]).cpu().numpy()
    root_actions = result["action_logits"].argmax(-1).cpu().numpy()  # [B, E]
    arrays["node_actions"] = np.full(arrays["children"].shape, -1, dtype=np.int64)
    arrays["node_actions"][:, 0] = root_actions
    return arrays


def episodes_of(steps: TensorDictBase) -> list[Episode]:
    """Each env's first episode of a rollout (``env.rollout``'s TensorDict ``[n_envs, T]``), its last next state
    included (:func:`emotion_rl.data.rollout.first_episodes` cuts them)."""
    steps, first = first_episodes(steps)
    terminated = steps.get(("next", "terminated")).reshape(steps.batch_size)
    rewards = steps.get(("next", "reward")).reshape(steps.batch_size).to(torch.float64)
    action = steps.get("action")
    if action.ndim > steps.batch_dims:  # one-hot
        action = action.argmax(-1)
    episodes = []
    for b, length in enumerate(first.sum(-1).tolist()):
        observations = torch.cat(
            [steps.get("observation")[b, :length], steps.get(("next", "observation"))[b, length - 1 : length]]
        )
        episodes.append(
            Episode(
                observations=observations.to(torch.float64).numpy(),
                actions=action[b, :length].long().numpy(),
                emotions=steps.get("emotion")[b, :length].long().numpy(),
                rewards=rewards[b, :length].numpy(),
                terminated=bool(terminated[b, length - 1]),
            )
        )
    return episodes


def searches_of(arrays: dict[str, np.ndarray], max_depth: int) -> list[Search]:
    """The trees of one search (:func:`tree_arrays`), one :class:`Search` per env (``from_real`` all NaN, to be
    filled)."""
    n_emotions, obs_dim = arrays["child_state"].shape[-2:]
    return [
        Search(
            **{key: arrays[key][b] for key in Search.__dataclass_fields__ if key != "from_real"},
            from_real=np.full((max_depth + 1, n_emotions, obs_dim), np.nan),
        )
        for b in range(len(arrays["children"]))
    ]


@torch.no_grad()
def evaluate_paths(
    model,  # noqa: ANN001 - an EmotionModel
    history,  # noqa: ANN001 - the History [B, T] the search at step t read
    searches: list[Search],
    episodes: list[Episode],
    t: int,
    max_depth: int,
) -> float:
    """Evaluate the model at "real history at ``t`` + one imagined token" (decision 5: what an expansion
    evaluates), in one call: at the path's nodes below the root (their imagined states), writing each emotion's
    argmax action into ``node_actions``; and at the real ``s_{t+k-1}`` for ``k = 2 .. max_depth``, writing the
    imagined next states into ``from_real[k]``. Returns the largest difference between the next states recomputed
    at the path's nodes and the tree's own (a check that history and tree belong together: float rounding)."""
    rows, states, targets = [], [], []
    for b, (search, episode) in enumerate(zip(searches, episodes, strict=True)):
        if t >= episode.length:
            continue
        path = tree_path(search.children, episode.emotions[t : t + max_depth - 1])
        for k in range(1, len(path)):
            rows.append(b)
            states.append(search.child_state[path[k - 1], int(episode.emotions[t + k - 1])])
            targets.append(("node", path[k]))
        for k in range(2, min(max_depth, episode.length - t) + 1):
            rows.append(b)
            states.append(episode.observations[t + k - 1])
            targets.append(("real", k))
    if not rows:
        return 0.0
    dtype = next(p.dtype for p in model.parameters())
    observation = torch.from_numpy(np.stack(states)).to(dtype)
    out = model.evaluate(history[torch.tensor(rows)], observation)
    actions = out["action_logits"].argmax(-1).numpy()
    dynamics = out["dynamics"].to(torch.float64).numpy()
    worst = 0.0
    for i, (b, (what, where)) in enumerate(zip(rows, targets, strict=True)):
        if what == "node":
            searches[b].node_actions[where] = actions[i]
            worst = max(worst, float(np.abs(dynamics[i] - searches[b].child_state[where]).max()))
        else:
            searches[b].from_real[where] = dynamics[i]
    return worst


def read_trees(model: Any, recorder: RecordingPlanner, played: list[Episode], max_depth: int) -> tuple:  # noqa: ANN401
    """Every kept search read along the path taken: ``(searches, worst)``, per step ``t`` one :class:`Search` per env
    (paths evaluated), and the largest recomputed-state difference (:func:`evaluate_paths`). Raises ``RuntimeError``
    when a search's history does not end at the state it acted on."""
    by_step, worst = [], 0.0
    for t, (history, result) in enumerate(recorder.searches):
        searches = searches_of(tree_arrays(model, result), max_depth)
        last = history.lengths() - 1
        for b, episode in enumerate(played):  # the search saw the step it acted on
            if t < episode.length:
                seen = history.observation[b, int(last[b])].to(torch.float64).numpy()
                if not np.allclose(seen, episode.observations[t], rtol=0, atol=1e-5):
                    raise RuntimeError(f"env {b}, step {t}: the search's history does not end at the step's state")
        worst = max(worst, evaluate_paths(model, history, searches, played, t, max_depth))
        by_step.append(searches)
    return by_step, worst


def measure_depth(
    agent: Any,  # noqa: ANN401 - an EmotionAgent (model, planner, losses.value)
    settings: Mapping[str, Any],
    episodes: int,
    seed: int,
    cut_tolerance: float = CUT_TOLERANCE,
) -> dict:
    """Play ``episodes`` greedy episodes of ``agent``'s planner and read every tree along the path taken (the
    module docstring); the report without the checkpoint's name."""
    recorder = RecordingPlanner(agent.planner, keep_all=True)
    steps = play_greedy(agent.model, recorder, settings, episodes, seed).steps
    played = episodes_of(steps)
    if len(recorder.searches) != steps.batch_size[1]:
        raise RuntimeError(f"{len(recorder.searches)} searches for {steps.batch_size[1]} steps: one search per step")
    gamma, scale = float(agent.losses.value.gamma), float(agent.losses.value.return_scale)
    max_depth = int(agent.planner.max_depth)
    targets = [scale * discounted_returns(e.rewards, gamma) for e in played]
    cut = [cut_returns(e, gamma, cut_tolerance) for e in played]
    records: list[dict] = []
    gaps: list[tuple[float, float]] = []
    possible = {k: sum(max(e.length - k + 1, 0) for e in played) for k in range(1, max_depth + 1)}
    by_step, worst = read_trees(agent.model, recorder, played, max_depth)
    for t, searches in enumerate(by_step):
        for b, (search, episode) in enumerate(zip(searches, played, strict=True)):
            if t < episode.length:
                records += step_readings(search, episode, t, targets[b], cut[b], max_depth)
                gaps.append(root_gaps(search))
    return {
        "env_id": settings["env_id"],
        "env_options": {key: settings[key] for key in ENV_OPTIONS if settings.get(key) is not None},
        "time_limit": episode_limit(settings),
        "seed": seed,
        "episodes": episodes,
        "planner": repr(agent.planner),
        "gamma": gamma,
        "return_scale": scale,
        "cut_tolerance": cut_tolerance,
        "returns": [float(e.rewards.sum()) for e in played],
        "lengths": [e.length for e in played],
        "terminated": sum(e.terminated for e in played),
        "decisions": sum(e.length for e in played),
        "recomputed_state_max_error": worst,
        **summarize(records, possible, gaps, max_depth),
    }
